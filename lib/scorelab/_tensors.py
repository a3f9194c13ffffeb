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


def _draw_device(generator: torch.Generator | None, device) -> torch.device:
    """Where a draw happens: on the generator's device when one is given, else on ``device``."""
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
