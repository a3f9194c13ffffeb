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
