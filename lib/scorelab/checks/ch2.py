"""Checks for the exercises of chapter 2: one Langevin step, and the step-size bias."""

from __future__ import annotations

import math

import torch

from scorelab.checks._core import (
    Mismatch,
    call_student,
    exercise,
    expect_finite,
    expect_tensor,
    is_close,
    to_float,
)

STEP_SIZE = 0.1
SEED = 123


def _gaussian_score(x: torch.Tensor) -> torch.Tensor:
    """Score of N((1, -1), 0.5 I): a target whose score is not proportional to x."""
    return -(x - torch.tensor([1.0, -1.0])) / 0.5


def _fit(
    increment: torch.Tensor, score: torch.Tensor, noise: torch.Tensor
) -> tuple[float, float, float]:
    """Least-squares (a, b) with increment ~ a * score + b * noise, and the relative residual."""
    design = torch.stack([score.flatten(), noise.flatten()], dim=1).double()  # (N*D, 2)
    target = increment.flatten().double()
    solution = torch.linalg.lstsq(design, target[:, None]).solution.flatten()
    residual = (design @ solution - target).norm() / target.norm().clamp_min(1e-12)
    return solution[0].item(), solution[1].item(), residual.item()


def _name_drift(a: float, alpha: float) -> str | None:
    named = {
        alpha / 2: None,
        alpha: "the drift is alpha * score, the authors' code convention; the course (and the paper) "
        "uses (alpha / 2) * score with noise sqrt(alpha) * z.",
        -alpha
        / 2: "the drift has the wrong sign: a Langevin step moves along the score, x + (alpha/2) * score.",
        0.0: "the step does not use the score at all: add (alpha / 2) * score_fn(x).",
        alpha**2 / 2: "the drift is scaled by alpha^2 / 2; it should be alpha / 2.",
    }
    for value, message in named.items():
        if math.isclose(a, value, rel_tol=1e-3, abs_tol=1e-6):
            return message
    return (
        f"the drift is {a:.4g} * score; it should be (alpha / 2) * score = {alpha / 2:.4g} * score."
    )


def _name_noise(b: float, alpha: float) -> str | None:
    named = {
        math.sqrt(alpha): None,
        math.sqrt(
            2 * alpha
        ): "the noise is sqrt(2 alpha) * z, the authors' code convention; the course "
        "uses sqrt(alpha) * z with drift (alpha / 2) * score.",
        alpha: "the noise is alpha * z; its standard deviation should be sqrt(alpha).",
        0.0: "the step adds no noise: without sqrt(alpha) * z it is gradient ascent, which collapses "
        "onto the modes instead of sampling.",
        alpha / 2: "the noise is (alpha / 2) * z; its standard deviation should be sqrt(alpha).",
    }
    for value, message in named.items():
        if math.isclose(abs(b), value, rel_tol=1e-3, abs_tol=1e-6):
            return message
    return f"the noise is {b:.4g} * z; it should be sqrt(alpha) * z = {math.sqrt(alpha):.4g} * z."


@exercise(
    "2.1",
    "your langevin_step is x + (alpha/2) * score + sqrt(alpha) * z, with the generator's noise.",
)
def exercise_2_1(langevin_step) -> None:
    """Check ``langevin_step(x (N, D), score_fn, step_size, generator) -> (N, D)``."""
    x = torch.randn(500, 2, generator=torch.Generator().manual_seed(7))
    given = x.clone()
    got = call_student(
        langevin_step,
        given,
        _gaussian_score,
        STEP_SIZE,
        generator=torch.Generator().manual_seed(SEED),
        what="langevin_step",
    )
    got = expect_tensor(got, what="langevin_step(x, ...)", shape=tuple(x.shape))
    if not torch.equal(given, x):
        raise Mismatch(
            "your step changed x in place (e.g. with x += ...); return a new tensor "
            "(x = x + ...) so that the caller's samples are left alone."
        )
    expect_finite(got, what="langevin_step(x, ...)")
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(SEED))
    reference = x + STEP_SIZE / 2 * _gaussian_score(x) + math.sqrt(STEP_SIZE) * noise
    if is_close(got, reference):
        return
    again = call_student(
        langevin_step,
        x.clone(),
        _gaussian_score,
        STEP_SIZE,
        generator=torch.Generator().manual_seed(SEED),
        what="langevin_step",
    )
    if not torch.equal(again, got):
        raise Mismatch(
            "two calls with identically seeded generators gave different steps: draw the noise "
            "from the generator, torch.randn(x.shape, generator=generator)."
        )
    a, b, residual = _fit(got - x, _gaussian_score(x), noise)
    if residual > 1e-3:
        raise Mismatch(
            "the step is not of the form x + a * score + b * z with z = torch.randn(x.shape, "
            "generator=generator): draw the noise exactly that way (once per step), and call "
            "score_fn on the current x."
        )
    problems = [m for m in (_name_drift(a, STEP_SIZE), _name_noise(b, STEP_SIZE)) if m]
    raise Mismatch(
        " Also, ".join(problems)
        if problems
        else "the step is almost right but not within tolerance."
    )


def _stationary_variance(step_size: float) -> float:
    """Stationary variance of the Langevin chain on N(0, 1): x' = (1 - alpha/2) x + sqrt(alpha) z."""
    return 1.0 / (1.0 - step_size / 4.0)


@exercise(
    "2.2", "your measured variances follow 1 / (1 - alpha/4): the bias grows with the step size."
)
def exercise_2_2(langevin_variance) -> None:
    """Check ``langevin_variance(step_size, generator) -> float`` on the N(0, I) target."""
    measured = {}
    for step_size in (0.05, 0.5, 1.5):
        value = call_student(
            langevin_variance,
            step_size,
            generator=torch.Generator().manual_seed(11),
            what="langevin_variance",
        )
        measured[step_size] = to_float(value, what=f"langevin_variance({step_size})")
        if not math.isfinite(measured[step_size]):
            raise Mismatch(f"langevin_variance({step_size}) returned {measured[step_size]}.")
    theory = {s: _stationary_variance(s) for s in measured}
    if all(abs(measured[s] / theory[s] - 1) < 0.04 for s in measured):
        return
    listing = ", ".join(
        f"alpha={s}: {measured[s]:.3f} (expected {theory[s]:.3f})" for s in measured
    )
    if all(abs(measured[s] ** 2 / theory[s] - 1) < 0.04 for s in measured):
        raise Mismatch(
            f"these look like standard deviations, not variances ({listing}): square them."
        )
    if all(abs(measured[s] - 1) < 0.04 for s in measured):
        raise Mismatch(
            f"the variance stays near 1 for every step size ({listing}): run Langevin with the "
            "given step size rather than sampling the target directly."
        )
    if all(abs(measured[s] * (1 - s / 2) - 1) < 0.04 for s in measured):
        raise Mismatch(
            f"the variances follow 1/(1 - alpha/2) ({listing}): that is the authors' step "
            "convention; use langevin_dynamics, whose step is (alpha/2) * score + sqrt(alpha) * z."
        )
    raise Mismatch(
        f"the variances do not follow 1 / (1 - alpha/4) ({listing}). Start every particle "
        "from the same place, run enough steps to forget it (a few hundred), use a few "
        "thousand particles, and return the variance of all coordinates of the final samples."
    )
