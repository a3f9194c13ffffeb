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
        The seed, an integer in [0, 2**32) (NumPy's range).

    Returns
    -------
    torch.Generator
        A CPU generator seeded with ``seed``; pass it to every sampler and
        training loop so that a re-run notebook prints the same numbers.
    """
    seed = check_seed(seed)
    random.seed(int(seed))
    np.random.seed(int(seed))
    torch.manual_seed(int(seed))
    return torch.Generator().manual_seed(int(seed))


def check_seed(seed) -> int:
    """Return ``seed`` as an int, or raise unless it is an integer in [0, 2**32) (NumPy's
    legacy seed takes 32 bits; torch would refuse a float with an obscure message)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    return int(seed)
