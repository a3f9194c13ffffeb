"""Checks for the exercises of chapter 3: a geometric sigma ladder, the annealed step rule, the sampler."""

from __future__ import annotations

import math

import torch

from scorelab.checks._core import (
    Mismatch,
    call_student,
    diagnose,
    exercise,
    expect_finite,
    expect_tensor,
    to_float,
)

LADDERS = ((20.0, 1.0, 10), (1.0, 0.01, 5), (3.0, 0.5, 2))


@exercise(
    "3.1", "your geometric_sigmas is the decreasing geometric ladder from sigma_max to sigma_min."
)
def exercise_3_1(geometric_sigmas) -> None:
    """Check ``geometric_sigmas(sigma_max, sigma_min, n_levels) -> Tensor (L,)``."""
    from scorelab.langevin import geometric_sigmas as reference

    for sigma_max, sigma_min, n_levels in LADDERS:
        call = f"geometric_sigmas({sigma_max}, {sigma_min}, {n_levels})"
        got = call_student(
            geometric_sigmas, sigma_max, sigma_min, n_levels, what="geometric_sigmas"
        )
        if isinstance(got, (list, tuple)) or type(got).__module__ == "numpy":
            raise Mismatch(
                f"{call} returned a {type(got).__name__}; return a torch.Tensor "
                "(e.g. torch.exp(torch.linspace(...)))."
            )
        got = expect_tensor(got, what=call, shape=(n_levels,))
        expect_finite(got, what=call)
        expected = reference(sigma_max, sigma_min, n_levels)
        mutants = {
            f"{call} is increasing; Algorithm 1 anneals from the largest sigma down to the smallest, "
            "so sigmas[0] = sigma_max.": expected.flip(0),
            f"{call} is evenly spaced (linspace); a geometric ladder has a constant ratio "
            "sigma_i / sigma_(i+1): space the logarithms evenly.": torch.linspace(
                sigma_max, sigma_min, n_levels
            ),
            f"{call} is evenly spaced and increasing; it should be geometric and decreasing.": torch.linspace(
                sigma_min, sigma_max, n_levels
            ),
        }
        diagnose(got, expected, what=call, mutants=mutants)


@exercise("3.2", "your annealed_step_size is step_size * sigma_i^2 / sigma_L^2 (Algorithm 1).")
def exercise_3_2(annealed_step_size) -> None:
    """Check ``annealed_step_size(step_size, sigma, sigma_min) -> float``."""
    step_size, sigma_min = 0.01, 0.5
    cases = (0.5, 1.0, 4.0, 20.0)
    got = {}
    for sigma in cases:
        value = call_student(
            annealed_step_size, step_size, sigma, sigma_min, what="annealed_step_size"
        )
        got[sigma] = to_float(value, what=f"annealed_step_size({step_size}, {sigma}, {sigma_min})")
    expected = {s: step_size * s**2 / sigma_min**2 for s in cases}
    if all(math.isclose(got[s], expected[s], rel_tol=1e-5) for s in cases):
        return
    listing = ", ".join(f"sigma={s}: {got[s]:.4g} (expected {expected[s]:.4g})" for s in cases)
    if all(math.isclose(got[s], step_size * s**2, rel_tol=1e-5) for s in cases):
        raise Mismatch(
            f"the step is step_size * sigma^2, not divided by sigma_L^2 ({listing}); Algorithm 1 "
            "normalises so that the last level takes exactly step_size."
        )
    if not math.isclose(got[sigma_min], step_size, rel_tol=1e-5):
        raise Mismatch(f"at the smallest level the step should be step_size itself ({listing}).")
    if all(v > 0 for v in got.values()):
        exponent = math.log(got[20.0] / got[sigma_min]) / math.log(20.0 / sigma_min)
        if math.isclose(exponent, round(exponent), abs_tol=1e-3) and round(exponent) != 2:
            raise Mismatch(
                f"your step scales like (sigma_i / sigma_L)^{round(exponent)} ({listing}); "
                "Algorithm 1 scales it by (sigma_i / sigma_L)^2, so that the signal-to-noise "
                "ratio of a step is the same at every level."
            )
    raise Mismatch(f"the steps are not step_size * sigma_i^2 / sigma_L^2: {listing}.")


def _toy_problem():
    """The NCSN paper's 0.8/0.2 mixture, its perturbed score and a short annealed run's settings."""
    from scorelab.densities import ncsn_toy_mixture
    from scorelab.langevin import geometric_sigmas

    mixture = ncsn_toy_mixture()
    sigmas = geometric_sigmas(20.0, 1.0, 10)
    perturbed = {float(s): mixture.perturbed(float(s)) for s in sigmas}

    def score_fn(x: torch.Tensor, sigma: float) -> torch.Tensor:
        return perturbed[float(sigma)].score(x)

    return mixture, sigmas, score_fn


def _weight_of_first_mode(x: torch.Tensor) -> float:
    """Fraction of samples nearer (5, 5) than (-5, -5)."""
    return (x.sum(dim=1) > 0).float().mean().item()


@exercise(
    "3.3", "your annealed sampler recovers the 0.8 / 0.2 weights that plain Langevin gets wrong."
)
def exercise_3_3(annealed_langevin) -> None:
    """Check ``annealed_langevin(score_fn, x0 (N, D), sigmas (L,), step_size, n_steps_each, generator)``."""
    from scorelab.langevin import annealed_langevin_dynamics

    _, sigmas, score_fn = _toy_problem()
    n, step_size, n_steps = 2000, 0.1, 50
    x0 = (
        8.0 * torch.rand(n, 2, generator=torch.Generator().manual_seed(3)) - 4.0
    )  # (N, 2), uniform on [-4, 4]^2
    got = call_student(
        annealed_langevin,
        score_fn,
        x0.clone(),
        sigmas,
        step_size,
        n_steps,
        generator=torch.Generator().manual_seed(4),
        what="annealed_langevin",
    )
    got = expect_tensor(got, what="annealed_langevin(...)", shape=(n, 2))
    if not torch.isfinite(got).all():
        raise Mismatch(
            "the samples contain NaN or inf: the chain diverged. Is the step at level i "
            "step_size * sigma_i^2 / sigma_L^2 with sigma_L the smallest sigma?"
        )
    expected = annealed_langevin_dynamics(
        score_fn,
        x0.clone(),
        sigmas,
        step_size,
        n_steps,
        generator=torch.Generator().manual_seed(4),
        progress=False,
    )
    if torch.allclose(got, expected, atol=1e-3, rtol=1e-3):
        return
    spread, reference_spread = _mode_variance(got), _mode_variance(expected)
    if not spread > 0.2 * reference_spread:
        raise Mismatch(
            f"the samples have collapsed (variance {spread:.3g} around the (5, 5) mode, where "
            f"the reference sampler gives {reference_spread:.3f}): add the noise sqrt(alpha_i) * z "
            "at every step, drawn with torch.randn(x.shape, generator=generator)."
        )
    weight, reference_weight = _weight_of_first_mode(got), _weight_of_first_mode(expected)
    # Two independent runs of 2,000 particles differ by about 0.013 in weight (binomial s.d. * sqrt 2).
    tolerance = 4 * math.sqrt(2 * 0.8 * 0.2 / n)
    if abs(weight - reference_weight) > tolerance:
        raise Mismatch(
            f"the weight of the (5, 5) mode is {weight:.3f}, the reference sampler finds "
            f"{reference_weight:.3f} (true value 0.8). Run the levels from the largest sigma to "
            "the smallest, with step step_size * sigma_i^2 / sigma_L^2 at level i: large early "
            "steps at large sigma are what let particles cross between the modes."
        )
    if not abs(spread / reference_spread - 1) < 0.25:
        raise Mismatch(
            f"the weights are right but the (5, 5) mode has variance {spread:.3f} where the "
            f"reference sampler gives {reference_spread:.3f}: do you finish at the smallest "
            "sigma, with noise sqrt(alpha_i) * z at every step?"
        )


def _mode_variance(x: torch.Tensor) -> float:
    """Mean per-coordinate variance of the samples in the (5, 5) half-plane."""
    near = x[x.sum(dim=1) > 0]
    return near.var(dim=0).mean().item() if len(near) > 1 else float("nan")
