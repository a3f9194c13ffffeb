r"""Inpainting with a trained NCSN: annealed Langevin dynamics that keeps the known pixels.

Song & Ermon (2019), Section 5 (Fig. 6) and Appendix B.3, Algorithm 2: the same annealed
Langevin dynamics as for sampling, except that after every step the known pixels are
overwritten by the observed image *plus that level's noise*,
:math:`y = x_{\text{obs}} + \sigma_i \tilde z` with :math:`\tilde z \sim N(0, I)` drawn once a level.
The unknown pixels then follow the score of the perturbed density *given* perturbed versions
of the known ones, and the levels anneal both towards the data.

- :func:`inpaint` is that algorithm for any model with ``score(x, sigma)``, ``sigmas``,
  ``step_size`` and ``n_steps_each`` (an :class:`~scorelab.ncsn.NCSN`);
- :func:`keep_rows` and :func:`keep_columns` build the masks of chapter 7;
- :func:`mean_fill` is the baseline (the unknown pixels set to the mean training image);
- :func:`completion_shares` measures completions of digits with the digits classifier.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch

from scorelab._tensors import rand, randn
from scorelab._validation import (check_flag, check_floating, check_generator,
                                  check_image_batch, check_positive, check_positive_int,
                                  check_score_shape, check_unit_interval, check_values,
                                  clamp_to_unit_interval)
from scorelab.noise import check_sigmas

__all__ = ["inpaint", "keep_rows", "keep_columns", "mean_fill", "completion_shares"]


def _check_images(model, images) -> torch.Tensor:
    """``images`` as a finite floating tensor (N, C, H, W) on [0, 1] of the model's shape (an
    NCSN's dtype and device too), else ValueError."""
    check_image_batch("images", images)
    if hasattr(model, "check_images"):  # an NCSN names its own (C, H, W)
        model.check_images("images", images)
    return check_unit_interval("images", check_values("images", images))


def _check_mask(mask, images: torch.Tensor) -> torch.Tensor:
    """``mask`` (0/1, broadcastable to ``images``) as a float tensor of ``images``' shape."""
    if not isinstance(mask, torch.Tensor):
        raise ValueError(
            f"mask must be a tensor of 0s and 1s shaped like images {tuple(images.shape)}, "
            f"got {type(mask).__name__}"
        )
    try:
        fits = mask.ndim <= 4 and torch.broadcast_shapes(mask.shape, images.shape) == images.shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(
            f"mask must have the shape of images {tuple(images.shape)} (or one that broadcasts "
            f"to it, such as (C, H, W) for every image), got {tuple(mask.shape)}"
        )
    values = mask.detach().to(torch.float64)
    if not bool(((values == 0) | (values == 1)).all()):
        seen = values.unique()[:5].tolist()
        raise ValueError(f"mask must hold only 0 (unknown) and 1 (known), got values such as {seen}")
    return mask.to(device=images.device, dtype=images.dtype).expand(images.shape)


def _draw(kind: str, shape, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Normal or uniform draws of ``shape`` from ``generator`` (on its own device), moved to ``like``'s."""
    draw = randn if kind == "normal" else rand
    return draw(shape, generator=generator, device=like.device, dtype=like.dtype)


def _check_arguments(model, images, mask, generator, step_size, n_steps_each):
    """The checked ``images``, the known pixels (bool, images' shape), epsilon and T."""
    if not callable(getattr(model, "score", None)) or not hasattr(model, "sigmas"):
        raise ValueError(
            f"model must have score(x, sigma) and sigmas (an NCSN), got {type(model).__name__}"
        )
    check_sigmas(model.sigmas, "model.sigmas")
    images = _check_images(model, images)
    mask = _check_mask(mask, images)
    check_generator(generator, images.device)
    step_size = check_positive("step_size", model.step_size if step_size is None else step_size)
    n_steps_each = check_positive_int(
        "n_steps_each", model.n_steps_each if n_steps_each is None else n_steps_each
    )
    return images, mask.bool(), step_size, n_steps_each


@contextmanager
def _eval_mode(model):
    """Run the block with ``model`` in evaluation mode, then restore its training flag."""
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        yield
    finally:
        if hasattr(model, "train"):
            model.train(was_training)


def _langevin_keeping_known(model, x, sigma: float, alpha: float, n_steps: int, known, observed,
                            generator) -> torch.Tensor:
    """``n_steps`` steps x <- x + alpha/2 s(x, sigma) + sqrt(alpha) z, x <- (1 - m) x + m y, with
    m the ``known`` pixels and y the ``observed`` image at this level."""
    for _ in range(n_steps):
        score = check_score_shape("model.score", model.score(x, sigma), x)
        x = x + 0.5 * alpha * score + math.sqrt(alpha) * _draw(
            "normal", observed.shape, generator, observed
        )
        x = torch.where(known, observed, x)
    return x


def _annealed_langevin(model, images, known, sigmas: list[float], step_size: float,
                       n_steps_each: int, generator, recorder: list | None = None) -> torch.Tensor:
    """Algorithm 2 over every level (largest first) from uniform noise; x (N, C, H, W) at the end.

    ``recorder``, if given, receives the start and the state after every level (L + 1 tensors).
    Raises a ValueError naming the level when the chain becomes NaN or infinite.
    """
    x = _draw("uniform", images.shape, generator, images)  # (N, C, H, W), the paper's start
    if recorder is not None:
        recorder.append(x)
    for index, sigma in enumerate(sigmas):
        alpha = step_size * (sigma / sigmas[-1]) ** 2
        observed = images + sigma * _draw("normal", images.shape, generator, images)  # y
        x = _langevin_keeping_known(model, x, sigma, alpha, n_steps_each, known, observed,
                                    generator)
        if not bool(torch.isfinite(x).all()):
            raise ValueError(
                f"inpainting diverged at level {index + 1} (sigma={sigma:.3g}, step "
                f"{alpha:.3g}): the images became NaN or infinite; try a smaller step_size"
            )
        if recorder is not None:
            recorder.append(x)
    return x


@torch.no_grad()
def inpaint(
    model, images: torch.Tensor, mask: torch.Tensor, *, generator: torch.Generator | None = None,
    step_size: float | None = None, n_steps_each: int | None = None, denoise: bool = True,
    clamp: bool = True, snapshots: bool = False,
):
    r"""Fill in the unknown pixels of ``images`` with a trained NCSN (Song & Ermon 2019, Algorithm 2).

    Starting from uniform noise on [0, 1], for each level :math:`\sigma_i` (largest first):
    draw :math:`y = x_{\text{obs}} + \sigma_i \tilde z` once, then run ``n_steps_each`` steps

    .. math::
        x \leftarrow x + \tfrac{\alpha_i}{2} s_\theta(x, \sigma_i) + \sqrt{\alpha_i}\, z,
        \qquad x \leftarrow (1 - m) \odot x + m \odot y,

    with :math:`\alpha_i = \epsilon\,\sigma_i^2/\sigma_L^2` (this package's step convention,
    as :meth:`NCSN.sample`). The known pixels carry the noise of the current level, so the
    network always sees an image perturbed at the level it is asked about. After the last
    level, ``denoise`` takes the step :math:`x + \sigma_L^2 s_\theta(x, \sigma_L)` (as the
    model's sampler does), ``clamp`` clips to the data's [0, 1], and the known pixels are set
    to ``images`` exactly (Algorithm 2 would leave them with :math:`\sigma_L` noise).

    Parameters
    ----------
    model : NCSN
        Anything with ``score(x, sigma)`` (sigma a float of its ladder; returns a tensor
        shaped like x), ``sigmas`` (L,), a valid ladder (positive, strictly decreasing) and,
        for the defaults, ``step_size`` and ``n_steps_each``.
    images : Tensor, shape (N, C, H, W)
        The observed images on the data's [0, 1] scale (an NCSN's dtype and device); only
        their known pixels are read.
    mask : Tensor of 0s and 1s, shape (N, C, H, W) or broadcastable to it
        1 where a pixel is known, 0 where it is to be filled in.
    generator : torch.Generator, optional
        Source of every random draw (the start, the noise of the known pixels, the Langevin
        noise), on the CPU or on the images' device.
    step_size, n_steps_each : float, int, optional
        Epsilon and T; default: the model's own sampling settings.
    denoise, clamp : bool
        Finish with the denoising step; clip the completed pixels to [0, 1].
    snapshots : bool
        Also return the chain's path: the uniform start, the state after every level (the
        known pixels carrying that level's noise, as the network saw them) and the completed
        images, each clipped to [0, 1] for display.

    Returns
    -------
    Tensor, shape (N, C, H, W)
        The completed images: ``images`` where ``mask`` is 1, the sampler's pixels elsewhere;
        with ``snapshots`` a pair (images, path of shape (L + 2, N, C, H, W)).

    Raises
    ------
    ValueError
        For images or a mask of the wrong shape, images off [0, 1], a mask that is not 0/1,
        bad settings, a model whose ladder is not valid or whose score has another shape than
        its input, and when the chain diverges (naming the level; try a smaller step size).
    """
    images, known, step_size, n_steps_each = _check_arguments(
        model, images, mask, generator, step_size, n_steps_each)
    snapshots, denoise = check_flag("snapshots", snapshots), check_flag("denoise", denoise)
    clamp = check_flag("clamp", clamp)
    sigmas = [float(s) for s in torch.as_tensor(model.sigmas).flatten().tolist()]
    recorder = [] if snapshots else None
    with _eval_mode(model):
        x = _annealed_langevin(model, images, known, sigmas, step_size, n_steps_each, generator,
                               recorder)
        if denoise:
            score = check_score_shape("model.score", model.score(x, sigmas[-1]), x)
            x = x + sigmas[-1] ** 2 * score  # the denoising step
    if clamp:
        x = clamp_to_unit_interval(x, "inpaint", among=~known)
    completed = torch.where(known, images, x)
    if snapshots:
        return completed, torch.stack([*recorder, completed]).clamp(0.0, 1.0)
    return completed


def keep_rows(n_rows: int, *, size: int = 8, from_top: bool = True) -> torch.Tensor:
    """A mask (1, 1, size, size) that knows the first (``from_top``) or last ``n_rows`` rows."""
    size = check_positive_int("size", size)
    if isinstance(n_rows, bool) or not isinstance(n_rows, int) or not 0 <= n_rows <= size:
        raise ValueError(f"n_rows must be an integer from 0 to {size}, got {n_rows!r}")
    mask = torch.zeros(1, 1, size, size)
    if n_rows:
        rows = slice(0, n_rows) if from_top else slice(size - n_rows, size)
        mask[..., rows, :] = 1.0
    return mask


def keep_columns(n_columns: int, *, size: int = 8, from_left: bool = True) -> torch.Tensor:
    """A mask (1, 1, size, size) that knows the first (``from_left``) or last ``n_columns`` columns."""
    size = check_positive_int("size", size)
    if isinstance(n_columns, bool) or not isinstance(n_columns, int) or not 0 <= n_columns <= size:
        raise ValueError(f"n_columns must be an integer from 0 to {size}, got {n_columns!r}")
    return keep_rows(n_columns, size=size, from_top=from_left).transpose(-1, -2).contiguous()


def mean_fill(images: torch.Tensor, mask: torch.Tensor, mean_image: torch.Tensor) -> torch.Tensor:
    """The baseline completion: ``images`` where ``mask`` is 1, ``mean_image`` (C, H, W) elsewhere."""
    check_values("images", check_image_batch("images", images))
    if not isinstance(mean_image, torch.Tensor) or tuple(mean_image.shape) != tuple(images.shape[1:]):
        got = tuple(mean_image.shape) if isinstance(mean_image, torch.Tensor) else type(mean_image).__name__
        raise ValueError(f"mean_image must have shape {tuple(images.shape[1:])}, got {got}")
    check_values("mean_image", check_floating("mean_image", mean_image))
    known = _check_mask(mask, images).bool()
    return torch.where(known, images, mean_image.to(images).expand(images.shape))


def completion_shares(
    completions: torch.Tensor, labels: torch.Tensor, *, threshold: float = 0.9, classifier=None
) -> dict[str, float]:
    """How the digits classifier judges completed 8x8 digits.

    Parameters
    ----------
    completions : Tensor, shape (N, 1, 8, 8)
        Completed images on [0, 1].
    labels : Tensor, shape (N,)
        The true digit of each (the digit the image was before it was masked).
    threshold : float
        Probability above which a prediction counts as confident.
    classifier : fitted classifier, optional
        Default: :func:`scorelab.metrics.digits_classifier` (logistic regression on the
        training digits, 97 % test accuracy).

    Returns
    -------
    dict
        ``"confident"``: share whose largest class probability exceeds ``threshold`` (a
        completion that looks like *some* digit); ``"true digit"``: share whose most probable
        class is the true digit.
    """
    from scorelab.metrics import digits_classifier

    check_unit_interval("completions", check_image_batch("completions", completions, (1, 8, 8)))
    labels = torch.as_tensor(labels)
    if labels.shape != (completions.shape[0],):
        raise ValueError(f"labels must hold one digit per completion, shape "
                         f"({completions.shape[0]},), got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.dtype == torch.bool or len(labels) and not bool(
            ((labels >= 0) & (labels <= 9)).all()):
        raise ValueError(f"labels must be integers from 0 to 9, got {labels.tolist()[:10]}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
            or not 0 < threshold < 1:
        raise ValueError(f"threshold must lie in (0, 1), got {threshold!r}")
    classifier = digits_classifier() if classifier is None else classifier
    probabilities = torch.as_tensor(
        classifier.predict_proba(completions.detach().cpu().reshape(len(completions), -1).numpy())
    )  # (N, 10)
    confident = (probabilities.max(dim=1).values > threshold).double().mean().item()
    correct = (probabilities.argmax(dim=1) == labels.cpu()).double().mean().item()
    return {"confident": confident, "true digit": correct}
