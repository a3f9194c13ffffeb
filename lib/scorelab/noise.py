"""The noise ladder: one place that builds and validates the noise levels sigma_1 > ... > sigma_L.

Song & Ermon (2019, Sec. 4.1) perturb the data with L Gaussian noise levels in geometric
progression, sigma_1 / sigma_2 = ... = sigma_{L-1} / sigma_L > 1, largest first. Every sampler,
loss and model of the package takes its ladder through :func:`check_sigmas`, so a ladder is
validated the same way wherever it enters.
"""

from __future__ import annotations

import math

import torch

from scorelab._validation import check_positive, check_positive_int

__all__ = ["geometric_sigmas", "check_sigmas"]


def geometric_sigmas(sigma_max: float, sigma_min: float, n_levels: int) -> torch.Tensor:
    """Noise levels in geometric progression from ``sigma_max`` down to ``sigma_min``, shape (L,).

    sigma_i = sigma_max * (sigma_min / sigma_max) ** ((i - 1) / (L - 1)), i = 1..L
    (Song & Ermon 2019, Sec. 4.1). Computed in float64, returned as float32.
    """
    sigma_max = check_positive("sigma_max", sigma_max)
    sigma_min = check_positive("sigma_min", sigma_min)
    n_levels = check_positive_int("n_levels", n_levels)
    if n_levels == 1:
        return torch.tensor([sigma_max])
    if sigma_min >= sigma_max:
        raise ValueError(
            f"sigma_min must be smaller than sigma_max, got {sigma_min} >= {sigma_max}"
        )
    exponents = (math.log10(sigma_max), math.log10(sigma_min))
    return torch.logspace(*exponents, n_levels, dtype=torch.float64).float()


def check_sigmas(sigmas, name: str = "sigmas") -> torch.Tensor:
    """Return ``sigmas`` as a float32 CPU tensor (L,), or raise a ValueError naming ``name``.

    A valid ladder holds at least one level, every level finite and positive, strictly
    decreasing (largest noise first).
    """
    try:
        tensor = torch.as_tensor(sigmas, dtype=torch.float64, device="cpu")
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be a sequence of positive numbers, got {sigmas!r}") from None
    if tensor.ndim > 1:
        raise ValueError(f"{name} must have shape (L,), got shape {tuple(tensor.shape)}")
    tensor = tensor.reshape(-1)
    values = tensor.tolist()
    if len(values) == 0:
        raise ValueError(f"{name} must hold at least one noise level")
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"{name} must be positive finite numbers, got {values}")
    if any(later >= earlier for earlier, later in zip(values, values[1:])):
        raise ValueError(f"{name} must be strictly decreasing (largest noise first), got {values}")
    return tensor.float()
