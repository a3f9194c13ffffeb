"""Tensor helpers shared by losses and samplers, so that one loss runs on 2-D toys and images."""

from __future__ import annotations

import torch


def broadcast_like(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape per-example ``values`` of shape (N,) to (N, 1, ..., 1) so it broadcasts over ``x``.

    ``x`` has shape (N, *D); the result has ``x.ndim`` dimensions.
    """
    return values.reshape(values.shape[0], *([1] * (x.ndim - 1)))  # (N, 1, ..., 1)


def sum_except_batch(x: torch.Tensor) -> torch.Tensor:
    """Sum over every dimension but the first: (N, *D) -> (N,)."""
    return x.reshape(x.shape[0], -1).sum(dim=1)


def same_device(a, b) -> bool:
    """Whether devices ``a`` and ``b`` are the same (``"cuda"`` meaning the current CUDA device)."""
    a, b = torch.device(a), torch.device(b)
    if a.type != b.type:
        return False
    if a.index is None or b.index is None:  # "cuda" is the current device, "cuda:0" one device
        cuda = a.type == "cuda" and torch.cuda.is_available()
        current = torch.cuda.current_device() if cuda else 0
        index_a = current if a.index is None else a.index
        return index_a == (current if b.index is None else b.index)
    return a.index == b.index


def check_generator_device(generator: torch.Generator | None, device) -> None:
    """Raise ValueError unless ``generator`` is None or lives on the CPU or on ``device``.

    The rule of the package: a generator may live on the CPU (its draws are copied to the
    data) or on the data's device (drawn there); anywhere else is an error, not a silent copy.
    """
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise ValueError("generator must be a torch.Generator or None, "
                         f"got {type(generator).__name__}")
    where = generator.device
    if where.type != "cpu" and not same_device(where, device):
        raise ValueError(f"generator must live on the CPU or on the data's device "
                         f"({torch.device(device)}), got a generator on {where}")


def _draw_device(generator: torch.Generator | None, device) -> torch.device:
    """Where a draw happens: on the generator's device when one is given, else on ``device``.

    Raises ValueError (naming ``generator``) for a generator on a third device.
    """
    check_generator_device(generator, device)
    return generator.device if generator is not None else torch.device(device)


def randn(shape, *, generator: torch.Generator | None = None, device="cpu",
          dtype: torch.dtype | None = None) -> torch.Tensor:
    """N(0, 1) draws of ``shape`` on ``device``, drawn on the generator's device.

    A generator may live on the CPU or on the data's device (a CUDA generator for CUDA
    data): the draw happens where the generator lives and is moved to ``device``, so a
    (device of the generator, seed) pair always gives the same numbers.
    """
    where = _draw_device(generator, device)
    return torch.randn(shape, generator=generator, device=where, dtype=dtype).to(device)


def randn_like(x: torch.Tensor, *, generator: torch.Generator | None = None,
               shape=None) -> torch.Tensor:
    """N(0, 1) draws shaped like ``x`` (or ``shape``), on x's device and dtype (see :func:`randn`)."""
    return randn(x.shape if shape is None else shape, generator=generator, device=x.device,
                 dtype=x.dtype)


def rand(shape, *, generator: torch.Generator | None = None, device="cpu",
         dtype: torch.dtype | None = None) -> torch.Tensor:
    """U(0, 1) draws of ``shape`` on ``device``, drawn on the generator's device (see :func:`randn`)."""
    where = _draw_device(generator, device)
    return torch.rand(shape, generator=generator, device=where, dtype=dtype).to(device)


def randint(high: int, shape, *, generator: torch.Generator | None = None,
            device="cpu") -> torch.Tensor:
    """Integers uniform on 0..high-1 of ``shape`` on ``device``, drawn on the generator's device."""
    where = _draw_device(generator, device)
    return torch.randint(high, shape, generator=generator, device=where).to(device)


def randperm(n: int, *, generator: torch.Generator | None = None, device="cpu") -> torch.Tensor:
    """A random permutation of 0..n-1 on ``device``, drawn on the generator's device."""
    where = _draw_device(generator, device)
    return torch.randperm(n, generator=generator, device=where).to(device)


def multinomial(weights: torch.Tensor, n: int, *,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` indices drawn with replacement with probabilities ``weights`` (K,), on weights' device."""
    where = _draw_device(generator, weights.device)
    return torch.multinomial(weights.to(where), n, replacement=True, generator=generator
                             ).to(weights.device)
