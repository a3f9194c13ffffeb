"""Argument checks shared by the package: each raises a ValueError naming the argument."""

from __future__ import annotations

import math
import numbers
import sys
import warnings
from collections.abc import Callable

import numpy as np
import torch

from scorelab._tensors import check_generator_device


def check_positive(name: str, value) -> float:
    """Return ``value`` as a float, or raise if it is not a finite number > 0 (strings such as
    ``'0.1'`` and booleans are refused: ``float`` would turn them into numbers)."""
    if isinstance(value, (str, bytes, bool)):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {value!r}") from None
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return number


def check_positive_int(name: str, value) -> int:
    """Return ``value`` as an int, or raise if it is not an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) and not (
        isinstance(value, torch.Tensor) and value.ndim == 0 and not value.is_floating_point()
    ):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_points(name: str, x, dim: int | None = None) -> torch.Tensor:
    """Check that ``x`` is a finite floating tensor of shape (N, D) (D == dim if given)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (N, D), got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D), got shape {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} must have shape (N, {dim}), got shape {tuple(x.shape)}")
    return check_floating(name, x)


def check_floating(name: str, x: torch.Tensor) -> torch.Tensor:
    """Check that the tensor ``x`` holds floating-point numbers (not integers or booleans)."""
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def check_image_batch(name: str, x, shape: tuple[int, int, int] | None = None) -> torch.Tensor:
    """Check that ``x`` is a non-empty floating tensor of images (N, C, H, W), whose
    (C, H, W) is ``shape`` if given. The values are not read (see :func:`check_values`)."""
    want = "(N, C, H, W)" if shape is None else f"(N, {', '.join(map(str, shape))})"
    if (not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[0] == 0
            or shape is not None and tuple(x.shape[1:]) != tuple(shape)):
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a non-empty tensor of shape {want}, got {got}")
    return check_floating(name, x)


def check_values(name: str, x: torch.Tensor) -> torch.Tensor:
    """Check that the floating tensor ``x`` holds values (not 'meta') and that all are finite.

    A 'meta' tensor has no values (the finiteness check would fail on it obscurely). A finite
    sum proves every entry finite at the cost of one reduction; only a non-finite sum, which
    may be an overflow, needs the element-wise check.
    """
    if x.device.type == "meta":
        raise ValueError(f"{name} must hold values on a real device (cpu, cuda, ...), got a 'meta' tensor")
    if x.numel() and not math.isfinite(x.sum().item()) and not torch.isfinite(x).all():
        raise ValueError(f"{name} must contain only finite values (no NaN or infinity)")
    return x


def check_batch(name: str, x) -> torch.Tensor:
    """Check that ``x`` is a non-empty floating tensor of shape (N, *D) with finite values."""
    return check_values(name, check_batch_shape(name, x))


def check_generator(generator, device=None) -> None:
    """Check that ``generator`` is a ``torch.Generator`` or None (on the CPU or on ``device``).

    With ``device`` (the data's device), a generator elsewhere is a ValueError: a generator
    may live on the CPU or on the data's device (see :mod:`scorelab._tensors`).
    """
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )
    if device is not None:
        check_generator_device(generator, device)


def check_score_shape(name: str, score: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Check that a score function returned a tensor shaped like its input."""
    if not isinstance(score, torch.Tensor) or score.shape != x.shape:
        got = tuple(score.shape) if isinstance(score, torch.Tensor) else type(score).__name__
        raise ValueError(
            f"{name} must return a tensor of the input's shape {tuple(x.shape)}, got {got}"
        )
    return score


def check_positive_values(name: str, values: torch.Tensor) -> torch.Tensor:
    """Raise unless every value of the real tensor ``values`` is positive and finite (noise
    levels); reading them waits for a GPU, so loops on a device check them on the CPU only."""
    if values.numel() and not bool(((values > 0) & values.isfinite()).all()):
        raise ValueError(f"{name} must hold positive finite noise levels, got values from "
                         f"{values.min().item():.6g} to {values.max().item():.6g}")
    return values


def check_callable(name: str, fn, signature: str) -> None:
    """Raise if ``fn`` is not callable; ``signature`` shows how it is called, e.g. "score_fn(x)"."""
    if not callable(fn):
        raise ValueError(f"{name} must be a callable {signature}, got {type(fn).__name__}")


def check_real(name: str, value) -> float:
    """Return ``value`` as a float, or raise if it is not a real number.

    Accepts Python and NumPy reals and 0-d real tensors; refuses strings, booleans, complex
    numbers and sequences. The value may be anything (the caller checks its range).
    """
    tensor = isinstance(value, torch.Tensor) and value.ndim == 0
    real_tensor = tensor and not value.is_complex() and value.dtype != torch.bool
    if isinstance(value, bool) or not (real_tensor or isinstance(value, numbers.Real)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    return float(value)


def check_positive_real(name: str, value) -> float:
    """:func:`check_positive` for a real number: strings such as ``'1'`` are refused."""
    return check_positive(name, check_real(name, value))


def check_batch_shape(name: str, x) -> torch.Tensor:
    """:func:`check_batch` without reading the values: no synchronisation with a GPU."""
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or x.shape[0] == 0:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a non-empty tensor of shape (N, *D), at least 2-D "
                         f"(one-dimensional points as (N, 1)), got {got}")
    return check_floating(name, x)


def check_int_at_least(name: str, value, least: int, reason: str = "") -> int:
    """Return ``value`` as an int, or raise if it is not an integer >= ``least``.

    ``reason`` (e.g. " (why)") is added to the message after the bound.
    """
    integral = isinstance(value, int) or (
        isinstance(value, torch.Tensor) and value.ndim == 0 and not value.is_floating_point()
        and not value.is_complex() and value.dtype != torch.bool
    )
    if isinstance(value, bool) or not integral or int(value) < least:
        raise ValueError(f"{name} must be an integer >= {least}{reason}, got {value!r}")
    return int(value)


def check_labels(labels, n: int, n_levels: int, device: torch.device | None = None
                 ) -> torch.Tensor:
    """``labels`` as a LongTensor (n,) of noise-level indices in ``0..n_levels-1``.

    Raises a ValueError naming ``labels`` for anything else: not an integer tensor of shape
    (n,), on another ``device`` than the data's (when given), or values out of range. The
    values are read on the CPU only: on an accelerator reading them would make every call
    wait for the device (the trainer and the sampler call a network thousands of times), so
    an index out of range is left to the device's own check there; inside ``torch.compile``
    graphs they are not read either.
    """
    expected = f"an integer tensor of shape ({n},), one noise-level index per example"
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"labels must be {expected}, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be {expected}, got dtype {labels.dtype}")
    if tuple(labels.shape) != (n,):
        raise ValueError(f"labels must be {expected}, got shape {tuple(labels.shape)}")
    if device is not None and labels.device != device:
        raise ValueError(f"labels must be on the data's device {device}, got {labels.device}")
    if labels.device.type == "cpu" and not torch.compiler.is_compiling() and n:
        low, high = torch.aminmax(labels)
        if low < 0 or high >= n_levels:
            raise ValueError(f"labels must lie in 0..{n_levels - 1} (noise-level indices), got "
                             f"values from {int(low)} to {int(high)}")
    return labels.long()


def call_on_samples(fn: Callable, x: torch.Tensor, *args, diverged: Callable[[], Exception]):
    """``fn(x, *args)``. A sampler's particles ``x`` are checked for finiteness only now and
    then; a function that refuses non-finite points (the package's densities do) would report
    its own input error in between. Then the error ``diverged()`` (which names the step and
    the cure) is raised instead, chained to that input error; an error on finite points is
    the function's own and passes unchanged."""
    try:
        return fn(x, *args)
    except Exception as error:
        if bool(torch.isfinite(x).all()):
            raise
        raise diverged() from error


def model_levels(model) -> int | None:
    """The number of noise levels a noise-conditional model has, where it says so: the first
    ``n_levels`` or ``num_classes`` int of its modules (the model first); None otherwise (also
    for a plain function)."""
    if not isinstance(model, torch.nn.Module):
        return None
    for module in model.modules():
        for attribute in ("n_levels", "num_classes"):
            value = getattr(module, attribute, None)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return None


def check_ladder_fits(model, n_levels: int, name: str = "sigmas") -> None:
    """Raise if ``model`` says how many noise levels it has and the ladder ``name`` holds
    another number: level i of the ladder would then be scored as another level."""
    levels = model_levels(model)
    if levels is not None and levels != n_levels:
        raise ValueError(f"{name} must hold as many levels as the model has ({levels}), "
                         f"got {n_levels}")


def check_unit_interval(name: str, images: torch.Tensor) -> torch.Tensor:
    """Raise unless every value of the floating tensor ``images`` lies on the data's scale
    [0, 1] (the noise ladders are set for it): images of 0..255, or rescaled to [-1, 1],
    would train and sample without a word, on the wrong scale."""
    low, high = torch.aminmax(images.detach())
    if low < 0 or high > 1:
        raise ValueError(
            f"{name} must lie on the data's scale [0, 1], got values from {float(low):.4g} to "
            f"{float(high):.4g} (divide images of 0..255 by 255; map [-1, 1] to (x + 1) / 2)"
        )
    return images


def check_flag(name: str, value) -> bool:
    """Return ``value`` if it is True or False (a NumPy bool too), else raise: a string such as
    ``"no"`` is truthy, and would switch the option on."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ValueError(f"{name} must be True or False, got {value!r}")


def clamp_to_unit_interval(images: torch.Tensor, what: str,
                           among: torch.Tensor | None = None) -> torch.Tensor:
    """``images`` clamped to the data's [0, 1], with a warning when the sampler's last state
    blew up: when over 90 % of its pixels (of those where ``among`` is True, if given) lie
    outside [-0.5, 1.5], the clamp would return images almost all exactly 0 or 1 without a
    word (a chain at too large a step). A model still far from trained strays less."""
    pixels = images.detach() if among is None else images.detach()[among.expand(images.shape)]
    astray = ((pixels < -0.5) | (pixels > 1.5)).float().mean() if pixels.numel() else 0.0
    if astray > 0.9:
        low, high = torch.aminmax(pixels)
        warnings.warn(
            f"{what}: before clamping to [0, 1], {float(astray):.0%} of the "
            f"{'pixels' if among is None else 'pixels filled in'} lay outside "
            f"[-0.5, 1.5] (from {float(low):.3g} to {float(high):.3g}): the chain blew up, and "
            "the clamped images are almost all 0 or 1. Try a smaller step_size.",
            RuntimeWarning, stacklevel=_caller_level())
    return images.clamp(0.0, 1.0)


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside this package and torch: a warning names
    the caller's line, not a wrapper's (such as torch.no_grad's)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and any(part in frame.f_code.co_filename.replace("\\", "/")
                                    for part in ("/scorelab/", "/torch/")):
        frame, level = frame.f_back, level + 1
    return level
