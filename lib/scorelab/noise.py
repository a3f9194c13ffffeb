"""The noise ladder: one place that builds and validates the noise levels sigma_1 > ... > sigma_L.

Song & Ermon (2019, Sec. 4.1) perturb the data with L Gaussian noise levels in geometric
progression, sigma_1 / sigma_2 = ... = sigma_{L-1} / sigma_L > 1, largest first. Every sampler,
loss and model of the package takes its ladder through :func:`check_sigmas`, so a ladder is
validated the same way wherever it enters.
"""

from __future__ import annotations

import math
import sys

import torch

from scorelab._validation import check_positive_int, check_positive_real, check_real

__all__ = ["geometric_sigmas", "check_sigmas"]


def geometric_sigmas(sigma_max: float, sigma_min: float, n_levels: int) -> torch.Tensor:
    """Noise levels in geometric progression from ``sigma_max`` down to ``sigma_min``, shape (L,).

    sigma_i = sigma_max * (sigma_min / sigma_max) ** ((i - 1) / (L - 1)), i = 1..L
    (Song & Ermon 2019, Sec. 4.1). Computed in float64, returned as float32; a ladder that
    float32 cannot hold (levels that overflow, underflow to 0 or round to equal values) is
    a ValueError.
    """
    sigma_max = check_positive_real("sigma_max", sigma_max)
    sigma_min = check_positive_real("sigma_min", sigma_min)
    n_levels = check_positive_int("n_levels", n_levels)
    _check_float32_range("sigma_max", sigma_max)
    if n_levels == 1 and sigma_min <= sigma_max:  # a one-level ladder holds sigma_max alone
        return torch.tensor([sigma_max], dtype=torch.float32)
    _check_float32_range("sigma_min", sigma_min)
    if sigma_min >= sigma_max:
        raise ValueError(
            f"sigma_min must be smaller than sigma_max, got {sigma_min} >= {sigma_max}"
        )
    exponents = (math.log10(sigma_max), math.log10(sigma_min))
    ladder = torch.logspace(*exponents, n_levels, dtype=torch.float64)
    what = (f"the {n_levels} levels from sigma_max = {sigma_max!r} to sigma_min = "
            f"{sigma_min!r} (use fewer levels or a wider range)")
    return _as_float32(ladder, what)


def check_sigmas(sigmas, name: str = "sigmas") -> torch.Tensor:
    """Return ``sigmas`` as a float32 CPU tensor (L,), or raise a ValueError naming ``name``.

    A valid ladder holds at least one level, every level finite and positive, strictly
    decreasing (largest noise first), and stays so in float32: levels that overflow,
    underflow to 0 or round to equal values there are refused.
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
    return _as_float32(tensor, name)


_FLOAT32 = torch.finfo(torch.float32)


def _float32_problem(rounded: float) -> str | None:
    """What went wrong when a positive value became ``rounded`` in float32 (None: nothing)."""
    if not math.isfinite(rounded):
        return f"overflows float32, the dtype of the ladder (largest {_FLOAT32.max:.4g})"
    if rounded == 0.0:
        return (f"underflows to 0 in float32, the dtype of the ladder (smallest normal "
                f"{_FLOAT32.tiny:.4g})")
    return None


def _check_float32_range(name: str, value: float) -> None:
    """Raise if the positive ``value`` overflows float32 or underflows to 0 there."""
    problem = _float32_problem(float(torch.tensor(value, dtype=torch.float32)))
    if problem:
        raise ValueError(f"{name} {problem}, got {value!r}")


def _as_float32(ladder: torch.Tensor, what: str) -> torch.Tensor:
    """The valid float64 ladder (L,) as float32, or a ValueError saying where ``what`` broke."""
    values = ladder.float()
    for index, (wide, narrow) in enumerate(zip(ladder.tolist(), values.tolist())):
        problem = _float32_problem(narrow)
        if problem:
            raise ValueError(f"{what}: level {index} ({wide!r}) {problem}")
    same = (values[1:] >= values[:-1]).nonzero().flatten().tolist()
    if same:
        i = same[0]
        raise ValueError(f"{what}: levels {i} and {i + 1} ({ladder[i].item()!r} and "
                         f"{ladder[i + 1].item()!r}) are not distinct in float32, the dtype of "
                         "the ladder (they round to the same value)")
    return values


# --- NCSNv2's rules for the ladder and the step size (Song & Ermon 2020) -----------------------
#
# Song & Ermon (2020), *Improved Techniques for Training Score-Based Generative Models*, turn the
# choice of sigma_1, L and epsilon into rules: Technique 1 (sigma_1 = the largest distance between
# two training points), Technique 2 (a geometric ratio gamma for which neighbouring perturbed
# Gaussians overlap) and Technique 4 (epsilon from T and gamma, by their Eq. 4). Techniques 2 and
# 4 follow from one model, a data set of a single point, so that p_sigma = N(0, sigma^2 I) in D
# dimensions; Technique 1 from the empirical distribution of the N training points (their
# Proposition 1).

__all__ += [
    "largest_pairwise_distance", "level_overlap", "n_levels_for_overlap",
    "langevin_variance_ratio", "step_size_for_ladder",
]


def largest_pairwise_distance(data: torch.Tensor, *, chunk_size: int = 1024) -> float:
    """The largest Euclidean distance between two examples of ``data`` (N, *D): NCSNv2's sigma_1.

    Technique 1 of Song & Ermon (2020): perturbed with noise of this size, any training point
    can reach any other (sigma_1 is then about the data's own diameter), so the first level
    of annealed Langevin dynamics can move a sample between all the modes. Computed exactly,
    in float64, over all N (N - 1) / 2 pairs, ``chunk_size`` rows at a time.
    """
    if not isinstance(data, torch.Tensor) or data.ndim < 2 or data.shape[0] < 2:
        got = tuple(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__
        raise ValueError(f"data must be a tensor of shape (N, *D) with N >= 2, got {got}")
    chunk_size = check_positive_int("chunk_size", chunk_size)
    flat = data.detach().reshape(data.shape[0], -1).to(torch.float64)  # (N, D)
    if not bool(torch.isfinite(flat).all()):
        raise ValueError("data must contain only finite values (no NaN or infinity)")
    largest = 0.0
    for start in range(0, flat.shape[0], chunk_size):
        block = torch.cdist(flat[start : start + chunk_size], flat)  # (chunk, N)
        largest = max(largest, block.max().item())
    return largest


def _normal_cdf(t: float) -> float:
    return 0.5 * (1.0 + math.erf(t / math.sqrt(2.0)))


def level_overlap(gamma: float, dim: int) -> float:
    r"""NCSNv2's overlap criterion for neighbouring levels of ratio ``gamma`` in ``dim`` dimensions.

    .. math::
        C(\gamma, D) = \Phi\big(\sqrt{2D}(\gamma - 1) + 3\gamma\big)
                     - \Phi\big(\sqrt{2D}(\gamma - 1) - 3\gamma\big)

    (Song & Ermon 2020, Technique 2, with :math:`\Phi` the standard normal CDF). For a data
    set of one point, a sample of :math:`N(0, \sigma_i^2 I)` has norm close to
    :math:`\sigma_i\sqrt{D}` with spread about :math:`\sigma_i/\sqrt 2`; C is (approximately)
    the probability that a sample of level i falls within three spreads,
    :math:`3\sigma_{i-1}/\sqrt 2`, of the shell of level i - 1 (radius
    :math:`\sigma_{i-1}\sqrt D`, :math:`\sigma_{i-1} = \gamma \sigma_i`). Technique 2 asks for C
    of about 0.5: shells that overlap enough for Langevin at level i to start where level i - 1
    left it. C falls as gamma grows and as D grows; gamma -> 1 gives C -> Phi(3) - Phi(-3) = 0.9973.
    """
    gamma = _check_ratio(gamma)
    dim = check_positive_int("dim", dim)
    shift = math.sqrt(2.0 * dim) * (gamma - 1.0)
    return _normal_cdf(shift + 3.0 * gamma) - _normal_cdf(shift - 3.0 * gamma)


def n_levels_for_overlap(
    sigma_max: float, sigma_min: float, dim: int, *, target: float = 0.5
) -> int:
    """The smallest number of geometric levels L whose ratio meets NCSNv2's overlap criterion.

    With sigma_i geometric from ``sigma_max`` to ``sigma_min``, the ratio is
    gamma_L = (sigma_max / sigma_min) ** (1 / (L - 1)); the result is the smallest L >= 2 with
    :func:`level_overlap` (gamma_L, ``dim``) >= ``target`` (Song & Ermon 2020, Technique 2:
    "approximately 0.5"). The paper's own ladders sit at C = 0.566-0.567 (CIFAR-10: sigma
    50 -> 0.01, L = 232 in D = 3072), which ``target=0.566`` gives back (for FFHQ, 2,310 of
    the released 2,311 levels).

    Parameters
    ----------
    sigma_max, sigma_min : float
        sigma_1 > sigma_L > 0.
    dim : int
        The data dimension D (pixels times channels for images).
    target : float
        In (0, Phi(3) - Phi(-3)) = (0, 0.9973).
    """
    sigma_max = check_positive_real("sigma_max", sigma_max)
    sigma_min = check_positive_real("sigma_min", sigma_min)
    if sigma_min >= sigma_max:
        raise ValueError(
            f"sigma_min must be smaller than sigma_max, got {sigma_min} >= {sigma_max}"
        )
    dim = check_positive_int("dim", dim)
    ceiling = _normal_cdf(3.0) - _normal_cdf(-3.0)
    if not 0.0 < check_real("target", target) < ceiling:
        raise ValueError(f"target must lie in (0, {ceiling:.4f}), got {target!r}")
    log_span = math.log(sigma_max / sigma_min)
    for n_levels in range(2, 10_000_001):
        if level_overlap(math.exp(log_span / (n_levels - 1)), dim) >= target:
            return n_levels
    raise ValueError(f"no ladder of up to 10,000,000 levels reaches target {target}")


def langevin_variance_ratio(
    step_size: float, gamma: float, n_steps_each: int, sigma_min: float
) -> float:
    r"""Song & Ermon (2020), Eq. 4: the variance T Langevin steps at level i leave, over sigma_i^2.

    For a data set of one point, level i's density is :math:`N(0, \sigma_i^2 I)`; start from
    level i - 1's, :math:`N(0, \gamma^2\sigma_i^2 I)`, and run T steps of this package's
    update :math:`x \leftarrow x + \tfrac{\alpha}{2}s(x, \sigma_i) + \sqrt{\alpha}\,z` with
    :math:`\alpha = \epsilon\,\sigma_i^2/\sigma_L^2`. Each step maps the variance v to
    :math:`\rho^2 v + \alpha`, :math:`\rho = 1 - \epsilon / (2\sigma_L^2)`, so the variance
    :math:`v_T` after T steps (the paper's :math:`s_T^2`) is

    .. math::
        v_T / \sigma_i^2 = \rho^{2T}\big(\gamma^2 - 2/(1+\rho)\big) + 2/(1+\rho) .

    The ratio does not depend on i: that is why one epsilon serves every level. It is the
    paper's Eq. 4 written for this package's step (the authors' ``step_lr`` is half our
    ``step_size``: their update is :math:`x + \epsilon' s + \sqrt{2\epsilon'} z`).
    Needs gamma > 1 (as :func:`level_overlap`) and 0 < rho < 1, that is
    ``step_size < 2 * sigma_min**2``.
    """
    step_size = check_positive_real("step_size", step_size)
    gamma = _check_ratio(gamma)
    n_steps_each = check_positive_int("n_steps_each", n_steps_each)
    scale = _step_scale(check_positive_real("sigma_min", sigma_min))
    u = step_size / scale  # 1 - rho
    if u >= 1.0:
        raise ValueError(
            f"step_size must be below 2 sigma_min^2 = {scale:.4g}, got {step_size!r}"
        )
    if u == 0.0:
        raise ValueError(f"step_size ({step_size!r}) is too small beside 2 sigma_min^2 = "
                         f"{scale:.4g}: their ratio underflows to 0")
    stationary = 2.0 / (2.0 - u)  # the chain's own stationary variance over sigma_i^2
    return (1.0 - u) ** (2 * n_steps_each) * (gamma * gamma - stationary) + stationary


def _check_ratio(gamma) -> float:
    """gamma = sigma_(i-1) / sigma_i as a float: a real number > 1 whose square is finite."""
    gamma = check_positive_real("gamma", gamma)
    if gamma <= 1.0:
        raise ValueError(f"gamma must be larger than 1 (sigma_(i-1) / sigma_i), got {gamma!r}")
    if not math.isfinite(gamma * gamma):
        raise ValueError(f"gamma must be small enough that gamma^2 is finite, got {gamma!r}")
    return gamma


def _step_scale(sigma_min: float) -> float:
    """2 sigma_min^2, the scale of the step size; raise (naming sigma_min) if it leaves float64.

    The step-size rule searches u = step_size / (2 sigma_min^2) down to 1e-12, so 1e-12 times
    the scale must still be a normal float64 number.
    """
    scale = 2.0 * sigma_min * sigma_min
    if not math.isfinite(scale) or scale * 1e-12 < sys.float_info.min:
        raise ValueError("sigma_min must lie between about 1.1e-148 and 9e153, where the step "
                         "sizes 2 sigma_min^2 u (u down to 1e-12) are finite, normal float64 "
                         f"numbers, got {sigma_min!r}")
    return scale


def step_size_for_ladder(gamma: float, n_steps_each: int, sigma_min: float) -> float:
    """NCSNv2's epsilon (Technique 4): the step size that brings Eq. 4 closest to 1.

    "Choose T as large as allowed by a computing budget and then select an epsilon that makes
    Eq. 4 maximally close to 1" (Song & Ermon 2020): after T steps at level i, samples that
    started at level i - 1 should have level i's variance. Small epsilon leaves them where they
    started (ratio -> gamma^2); large epsilon overshoots to the chain's own, too wide,
    stationary variance 2 / (1 + rho). The ratio stays above 1 for every epsilon, so the rule
    takes its minimum, found on a log grid of epsilon / (2 sigma_min^2) in (1e-12, 1)
    and refined by golden-section search.

    Returns epsilon in this package's convention (x + eps/2 s + sqrt(eps) z at the last level),
    twice the authors' ``step_lr``: for CIFAR-10 (gamma = 5000^(1/231), T = 5, sigma_L = 0.01)
    it gives 1.24e-5, their 6.2e-6.
    """
    gamma = _check_ratio(gamma)
    n_steps_each = check_positive_int("n_steps_each", n_steps_each)
    sigma_min = check_positive_real("sigma_min", sigma_min)
    scale = _step_scale(sigma_min)

    def distance(log_u: float) -> float:  # |Eq. 4 - 1| against log(epsilon / (2 sigma_min^2))
        step = scale * math.exp(log_u)
        return abs(langevin_variance_ratio(step, gamma, n_steps_each, sigma_min) - 1.0)

    grid = torch.linspace(math.log(1e-12), math.log(1.0 - 1e-9), 4001, dtype=torch.float64)
    values = [distance(float(t)) for t in grid]
    best = min(range(len(values)), key=values.__getitem__)
    low, high = float(grid[max(best - 1, 0)]), float(grid[min(best + 1, len(grid) - 1)])
    inverse_golden = (math.sqrt(5.0) - 1.0) / 2.0
    for _ in range(100):  # golden-section search on [low, high]
        a = high - inverse_golden * (high - low)
        b = low + inverse_golden * (high - low)
        if distance(a) < distance(b):
            high = b
        else:
            low = a
    return scale * math.exp(0.5 * (low + high))
