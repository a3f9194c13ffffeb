"""Reproducibility: one call seeds every random number generator a chapter uses."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python, NumPy and PyTorch, and return a fresh ``torch.Generator``.

    Parameters
    ----------
    seed : int
        The seed, a non-negative integer.

    Returns
    -------
    torch.Generator
        A CPU generator seeded with ``seed``; pass it to every sampler and
        training loop so that a re-run notebook prints the same numbers.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    random.seed(int(seed))
    np.random.seed(int(seed))
    torch.manual_seed(int(seed))
    return torch.Generator().manual_seed(int(seed))
