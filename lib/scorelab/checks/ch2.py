"""Checks for the exercises of chapter 2: one Langevin step and the step-size bias.

2.1 (implement) one Langevin step, and (derive) the density a step that mixes the course's and
the authors' conventions samples; 2.2 (derive) the
stationary variance of the chain on N(0, tau^2); 2.3 (investigate) whether its rule carries
over: the step size at which the chain's variance on a logistic is 10 % too large; 2.4 (debug)
a sampler whose noise is scaled by alpha; 2.5 (implement) MALA's acceptance probability, the correction that removes the bias.
"""

from __future__ import annotations

import functools
import math

import torch

from scorelab.checks._core import (Mismatch, answer_number, bisect, call_student, cases,
                                   diagnose, exercise,
                                   expect_derived, expect_finite, expect_same_draws, expect_tensor,
                                   expect_untouched, global_rng_untouched, is_close,
                                   package_refused, register_hints, to_float)
from scorelab.checks._formulas import by_regime, check_formula, random_values

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
    if math.isclose(b, -math.sqrt(alpha), rel_tol=1e-3, abs_tol=1e-6):
        return ("the noise enters with a minus sign: z and -z have the same law, but the check "
                "compares draw for draw, so use + sqrt(alpha) * z.")
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
        # with the check's score -(x - m) / 0.5, a score taken at x + sqrt(alpha) z adds
        # -alpha sqrt(alpha) z to the increment
        math.sqrt(alpha) * (1 - alpha): "the score is evaluated after the noise was added: "
        "take score_fn at the current x, then add both terms.",
    }
    for value, message in named.items():
        if math.isclose(abs(b), value, rel_tol=1e-3, abs_tol=1e-6):
            return message
    return f"the noise is {b:.4g} * z; it should be sqrt(alpha) * z = {math.sqrt(alpha):.4g} * z."


@exercise(
    "2.1",
    "your langevin_step is x + (alpha/2) * score + sqrt(alpha) * z, with the generator's noise, "
    "and the mixed-up step, twice the noise variance for the same drift, samples p^(1/2): p at "
    "temperature 2.",
)
def exercise_2_1(langevin_step, mixed_power) -> None:
    """Check ``langevin_step(x (N, D), score_fn, step_size, generator) -> (N, D)`` and
    ``mixed_power``, the beta of the density p^beta that x + (alpha/2) s + sqrt(2 alpha) z
    samples as alpha -> 0."""
    _expect_step_size_used(langevin_step)
    for step_size in cases([STEP_SIZE, 0.37], [1.7]):
        _check_step(langevin_step, step_size)
    _expect_mixed_power(mixed_power)


#: 2.1: the mixed step x + (alpha/2) s + sqrt(2 alpha) z discretises dx = s du + 2 dw with
#: du = alpha/2; in the time 2u it is dx = (s/2) du' + sqrt(2) dw', the Langevin diffusion of
#: p^(1/2).
MIXED_POWER = 0.5


def _expect_mixed_power(mixed_power) -> None:
    value = answer_number(mixed_power, what="mixed_power")
    if 0.40 <= value <= 0.53 and abs(value - MIXED_POWER) > 1e-6:
        why = ("a finite step widens the samples a little more, as in the chapter's stationary "
               "variance 1 / (1 - alpha / 4), so a measured power comes out low"
               if value < MIXED_POWER else "a measured power carries the finite step's bias and "
               "the sampling noise")
        raise Mismatch(f"mixed_power = {value:g} looks like a measurement; derive the exact power "
                       f"for small steps ({why}).")
    if value < 0:
        raise Mismatch(f"mixed_power = {value:g}: a negative power puts the mass where p is small; "
                       "the drift still climbs p.")
    if value == 0:
        raise Mismatch("mixed_power = 0: p^0 is flat, which would need a step without drift; "
                       "the mixed step still climbs p.")
    expect_derived(
        value, MIXED_POWER, call="mixed_power", wrong="is not the power the mixed step samples",
        slips={
            1.0: "that is the density of the course's step; the mixed step adds twice its noise "
            "variance (2 alpha, not alpha) for the same drift, so it cannot settle at p. Run both "
            "and compare the spread.",
            2.0: "p^2 is narrower than p, but more noise for the same drift spreads the samples "
            "out: the power is below 1.",
            1 / math.sqrt(2): "that compares the standard deviations of the two noises "
            "(sqrt(2 alpha) and sqrt(alpha)); the balance between drift and noise is set by the "
            "noise's variance.",
            math.sqrt(2): "the noise is larger than the course's, which spreads the samples, so "
            "the power is below 1; and the balance is set by the noise's variance, not its "
            "standard deviation.",
            0.25: "the noise's variance is twice the course's, not four times: sqrt(2 alpha) "
            "z has variance 2 alpha.",
            50.0: "that looks like a percentage; the power is a plain number.",
        },
        otherwise="derive it for small steps: of which diffusion is the mixed step an Euler "
        "step, and which density does that diffusion leave unchanged? checks.hint(\"2.1\") "
        "helps.",
        tolerance=1e-6)


def _run_step(langevin_step, x: torch.Tensor, step_size: float):
    """The student's step from a copy of x, with the package's samplers refused and the global
    random state watched."""
    from scorelab.langevin import langevin_dynamics

    with package_refused(langevin_dynamics, what="langevin_step"), \
            global_rng_untouched("langevin_step"):
        return call_student(langevin_step, x, _gaussian_score, step_size,
                            generator=torch.Generator().manual_seed(SEED), what="langevin_step")


def _expect_step_size_used(langevin_step) -> None:
    """Mismatch if two step sizes give the same step from the same seed."""
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(7))
    small, large = (_run_step(langevin_step, x.clone(), a) for a in (STEP_SIZE, 0.37))
    if isinstance(small, torch.Tensor) and isinstance(large, torch.Tensor) and torch.equal(
            small, large):
        raise Mismatch(
            "langevin_step gives the same step for step_size 0.1 and 0.37 from the same seed: "
            "it ignores step_size (a number written into the function?). Both terms depend "
            "on it: (step_size / 2) * score and sqrt(step_size) * z."
        )


def _check_step(langevin_step, step_size: float) -> None:
    x = torch.randn(500, 2, generator=torch.Generator().manual_seed(7))

    def run(points):
        return _run_step(langevin_step, points, step_size)

    given = x.clone()
    got = run(given)
    got = expect_tensor(got, what="langevin_step(x, ...)", shape=tuple(x.shape))
    expect_untouched(given, x, call="langevin_step(x, ...)")
    expect_finite(got, what="langevin_step(x, ...)")
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(SEED))
    reference = x + step_size / 2 * _gaussian_score(x) + math.sqrt(step_size) * noise
    if is_close(got, reference):
        return
    expect_same_draws(lambda: run(x.clone()), got, outputs="steps")
    a, b, residual = _fit(got - x, _gaussian_score(x), noise)
    if residual > 1e-3:
        raise Mismatch(
            "the step is not of the form x + a * score + b * z with z = torch.randn(x.shape, "
            "generator=generator): draw the noise exactly that way (once per step), and call "
            "score_fn on the current x."
        )
    problems = [m for m in (_name_drift(a, step_size), _name_noise(b, step_size)) if m]
    raise Mismatch(
        " Also, ".join(problems)
        if problems
        else "the step is almost right but not within tolerance."
    )


def _stationary_variance(alpha: float, target_variance: float = 1.0) -> float:
    """Stationary variance of the Langevin chain on N(0, tau^2):
    x' = (1 - alpha / (2 tau^2)) x + sqrt(alpha) z settles at tau^2 / (1 - alpha / (4 tau^2))."""
    return target_variance / (1.0 - alpha / (4.0 * target_variance))


# ---------------------------------------------------------------- 2.3 (investigate) the bias beyond Gaussians

#: 2.3's target, the logistic distribution: density e^-x / (1 + e^-x)^2, score -tanh(x / 2),
#: variance pi^2 / 3 and kurtosis 4.2, so that a variance measured on n of its numbers has a
#: relative standard error of about sqrt(3.2 / n).
LOGISTIC_VARIANCE = math.pi**2 / 3


def _logistic_score(x: torch.Tensor) -> torch.Tensor:
    return -torch.tanh(x / 2)


@functools.lru_cache(maxsize=None)
def logistic_chain_variance(step_size: float) -> float:
    """Stationary variance of the Langevin chain on the logistic, computed without sampling.

    The chain's transition density N(x'; x - (alpha / 2) tanh(x / 2), alpha), tabulated on 601
    points over [-40, 40], is applied 200 times to the logistic density; a grid twice as fine,
    or 600 applications, change the result by less than 3e-5 (relative) for 0.2 <= alpha <= 3.
    """
    x = torch.linspace(-40.0, 40.0, 601, dtype=torch.float64)
    mean = x + step_size / 2 * _logistic_score(x)
    kernel = torch.softmax(-((x[None, :] - mean[:, None]) ** 2) / (2 * step_size), dim=1)
    density = torch.softmax(-x.abs() - 2 * torch.nn.functional.softplus(-x.abs()), dim=0)
    for _ in range(200):
        density = density @ kernel
    return float((density * x**2).sum())


def logistic_alpha_for_bias(bias: float, *, chain_variance=logistic_chain_variance) -> float:
    """The step size at which ``chain_variance`` reaches (1 + bias) pi^2 / 3, by bisection."""
    target = (1 + bias) * LOGISTIC_VARIANCE
    return bisect(lambda step: chain_variance(step) < target, 0.2, 3.0, 30)


@exercise(
    "2.3",
    "your measured variances follow the logistic chain's, and its variance is 10 % too large "
    "near alpha = 0.91, well before a Gaussian of the same variance (1.20): the bias depends on "
    "the shape of the score, not on the variance alone.",
)
def exercise_2_3(langevin_variance, alpha_10) -> None:
    """Check ``langevin_variance(step_size, n_particles, generator) -> float`` on the logistic,
    and ``alpha_10``, the step size the student measured at which its variance is 10 % too
    large."""
    _check_variances(langevin_variance)
    _check_alpha_10(alpha_10)


#: 2.3's tolerance on a measured variance: 2 x 10^5 particles give a relative standard error
#: of sqrt(3.2 / 2e5) = 0.4 %; 2 % is five of them, and rejects a run of a few thousand.
VARIANCE_RTOL = 0.02
#: the number of particles the check asks for when it compares variances
CHECK_PARTICLES = 200_000


def _measure(langevin_variance, step_size: float, n_particles: int, seed: int) -> float:
    value = call_student(langevin_variance, step_size, n_particles,
                         generator=torch.Generator().manual_seed(seed), what="langevin_variance")
    return to_float(value, what=f"langevin_variance({step_size}, {n_particles})")


def _check_measured(langevin_variance) -> None:
    """The variances must come from a simulation of n_particles driven by the generator: the same
    seed gives the same number, another seed or another number of particles another."""
    first, again, other = (_measure(langevin_variance, 0.5, 20_000, seed) for seed in (11, 11, 12))
    if not math.isfinite(first):
        return  # said below, with the step size
    if first == 0:
        raise Mismatch(
            "langevin_variance(0.5, 20000) is 0: the particles never moved. Take the variance "
            "of the tensor langevin_dynamics returns (it works on a copy of x0)."
        )
    if first != again:
        raise Mismatch(
            f"langevin_variance(0.5, 20000) gave {first:.10g}, then {again:.10g} with the same "
            "seed: draw every random number from the generator you are given."
        )
    if first == other:
        raise Mismatch(
            f"langevin_variance(0.5, 20000) gives {first:.6g} whatever the generator's seed: "
            "either the variance is computed from a formula, or the function draws from a seed "
            "of its own (torch.manual_seed, or a generator made inside it). Measure it on "
            "samples of a Langevin run driven by the generator you are given; give every step "
            "size the same seed from outside, when you call it."
        )
    if _measure(langevin_variance, 0.5, 20_001, 11) == first:
        raise Mismatch(
            "langevin_variance gives the same number for 20000 and 20001 particles from the same "
            "seed: it ignores n_particles. Run that many particles; the number you choose for "
            "the scan sets how precisely you can place alpha_10."
        )


def _check_variances(langevin_variance) -> None:
    _check_measured(langevin_variance)
    measured = {}
    for step_size in cases([0.3, 0.9, 1.5], [0.6, 1.2]):
        measured[step_size] = _measure(langevin_variance, step_size, CHECK_PARTICLES, 11)
        if not math.isfinite(measured[step_size]):
            raise Mismatch(
                f"langevin_variance({step_size}, {CHECK_PARTICLES}) returned "
                f"{measured[step_size]}: the chain diverged. Look at the score it follows: "
                "-tanh(x / 2) pulls every point back towards 0."
            )
    theory = {s: logistic_chain_variance(s) for s in measured}
    listing = ", ".join(
        f"alpha={s}: {measured[s]:.3f} (expected {theory[s]:.3f})" for s in measured
    )

    def off(law, s):
        return abs(measured[s] / law(s) - 1)

    def follows(law):  # closer to that law than to the truth, at every step size
        return all(off(law, s) < min(0.04, off(theory.get, s)) for s in measured)

    if all(off(theory.get, s) < VARIANCE_RTOL for s in measured):
        return
    if any(measured[s] > 3 * theory[s] for s in measured):
        raise Mismatch(
            f"the chain runs away ({listing}): look at the score it follows. The logistic's, "
            "-tanh(x / 2), pulls every point back towards 0."
        )
    named = [
        (lambda s: theory[s] ** 0.5, "these look like standard deviations, not variances: "
         "square them."),
        (lambda s: theory[s] / LOGISTIC_VARIANCE, "these are the variances divided by "
         "pi^2 / 3: return the variance itself."),
        (lambda s: logistic_chain_variance(2 * s), "these are the variances of the authors' "
         "step convention, alpha * score + sqrt(2 alpha) z; use langevin_dynamics, whose step "
         "is (alpha / 2) * score + sqrt(alpha) * z."),
        (lambda s: _stationary_variance(s), "these are the chain's variances on N(0, 1) "
         "(score -x), not on the logistic, whose score is -tanh(x / 2)."),
        (lambda s: _stationary_variance(s, LOGISTIC_VARIANCE), "these are the chain's "
         "variances on a Gaussian of the logistic's variance (score -x / (pi^2 / 3)); the "
         "logistic's score is -tanh(x / 2)."),
        (lambda s: LOGISTIC_VARIANCE, "the variance stays at pi^2 / 3 for every step size: run "
         "Langevin with the given step size rather than sampling the target directly."),
    ]
    for law, message in named:
        if follows(law):
            raise Mismatch(f"{message} ({listing})")
    raise Mismatch(
        f"the variances do not match the logistic chain's to within {VARIANCE_RTOL:.0%} "
        f"({listing}). Check your score against the derivative of log p; start every particle "
        "at 0, run the 200 steps, use the n_particles you are given, and return the variance "
        "of all the final samples."
    )


#: 2.3's tolerance on the step size of 10 % bias. Near alpha = 0.91 the variance grows by 1.2 %
#: of pi^2 / 3 per 0.1 of alpha, so a variance measured on 10^6 particles (relative standard
#: error 0.18 %) places the crossing to about 0.015 in alpha: 0.05 is over three of them.
ALPHA_10_TOLERANCE = 0.05


def _check_alpha_10(alpha_10) -> None:
    alpha = to_float(alpha_10, what="alpha_10")
    if not math.isfinite(alpha):
        raise Mismatch(f"alpha_10 = {alpha} is not a finite number: enter the step size you "
                       "measured.")
    truth = logistic_alpha_for_bias(0.1)
    if abs(alpha - truth) <= ALPHA_10_TOLERANCE:
        return
    gaussian = 4 * LOGISTIC_VARIANCE * (1 - 1 / 1.1)  # v(alpha, pi^2 / 3) = 1.1 pi^2 / 3
    named = {
        gaussian: "that is where the variance of a Gaussian of the logistic's variance is 10 % "
        "too large (exercise 2.2's formula with tau^2 = pi^2 / 3). Whether that rule carries over is the "
        "question: measure the logistic's chain.",
        4 * (1 - 1 / 1.1): "that is the step for N(0, 1), from exercise 2.2; the target here is "
        "the logistic, of variance pi^2 / 3.",
        logistic_alpha_for_bias(0.21): "that is where the standard deviation is 10 % too "
        "large; the question asks for the variance.",
        logistic_alpha_for_bias(0.1, chain_variance=lambda s: logistic_chain_variance(2 * s)):
        "that is where the authors' convention (alpha * score + sqrt(2 alpha) z) reaches 10 %; "
        "the course's step is (alpha / 2) * score + sqrt(alpha) * z.",
    }
    for value, message in named.items():
        if abs(alpha - value) <= ALPHA_10_TOLERANCE:
            raise Mismatch(f"alpha_10 = {alpha:.3g}: {message}")
    raise Mismatch(
        f"alpha_10 = {alpha:.3g} is too {'large' if alpha > truth else 'small'}: at that step "
        "the variance is not 1.1 pi^2 / 3. Measure at a few step sizes between 0.5 and 1.5 "
        "with the same seed, on enough particles that the noise of each variance is well "
        "below the change between neighbouring step sizes, and find where they cross."
    )


# ---------------------------------------------------------------- 2.2 (derive) the stationary variance


def _expect_largest_stable_step(largest_stable_step) -> None:
    """The largest step at which the chain on N(0, tau^2) settles: 4 tau^2 (to 1e-6)."""
    for tau2 in cases([1.0, 0.3, 2.5], [0.07, 11.0]):
        call = f"largest_stable_step({tau2})"
        got = to_float(call_student(largest_stable_step, tau2, what="largest_stable_step"),
                       what=call)
        expect_derived(
            got, 4.0 * tau2, call=call, wrong="is not the largest stable step",
            slips={
                2.0 * tau2: "at 2 tau^2 the factor 1 - alpha / (2 tau^2) that multiplies x "
                "reaches 0, and beyond it the chain overshoots and flips the sign of x, but it "
                "still settles (2 tau^2 is also the limit in the authors' convention, whose "
                "drift is alpha s). The variance grows without bound only when the factor "
                "leaves (-1, 1).",
                4.0: "that is the limit for tau^2 = 1 only: the score of N(0, tau^2) is "
                "-x / tau^2.",
                4.0 * math.sqrt(tau2): "target_variance is tau^2 already, the variance, not "
                "the standard deviation.",
                1.0 * tau2: "tau^2 itself? Your stationary_variance diverges where its "
                "denominator reaches 0.",
            },
            measured=(0.03, "close, but not exact: did you scan? Derive it from the factor "
                            "by which one step multiplies x."),
            otherwise="the chain settles only if one step shrinks the old variance: for which "
                      "alpha does the factor that multiplies x keep its size below 1?")


@exercise(
    "2.2",
    "your stationary_variance is tau^2 / (1 - alpha / (4 tau^2)): right for small steps and up "
    "to the largest stable step, 4 tau^2.",
)
def exercise_2_2(stationary_variance, largest_stable_step) -> None:
    """Check ``stationary_variance(alpha, target_variance) -> float`` at random (alpha, tau^2),
    alpha / tau^2 in three regimes, then ``largest_stable_step(target_variance) -> float``."""
    ranges = {  # alpha / tau^2
        "for small steps (alpha below 0.003 tau^2)": (1e-4, 3e-3),
        "for steps of order tau^2": (0.3, 1.5),
        "for steps near the largest stable one, 4 tau^2": (2.5, 3.95),
    }
    named = {}
    for i, (name, (low, high)) in enumerate(ranges.items()):
        ratios = cases(random_values(low, high, 3, seed=20 + i),
                       random_values(low, high, 3, seed=200 + i))
        variances = cases([1.0] + random_values(0.2, 5.0, 2, seed=40 + i, log=True),
                          random_values(0.2, 5.0, 3, seed=400 + i, log=True))
        named[name] = [{"alpha": u * t, "target_variance": t} for u, t in zip(ratios, variances)]
    points, regimes = by_regime(named)
    check_formula(
        stationary_variance,
        _stationary_variance,
        points,
        what="stationary_variance",
        regimes=[regimes],
        rtol=1e-5,
        atol=1e-8,
        mutants=[
            ("your variance is tau^2 for every step size: the unadjusted chain is biased, solve "
             "v = (1 - alpha / (2 tau^2))^2 v + alpha for v.",
             lambda alpha, target_variance: target_variance),
            ("this is the answer for tau^2 = 1 only: the score of N(0, tau^2) is -x / tau^2, so "
             "one step contracts x by 1 - alpha / (2 tau^2).",
             lambda alpha, target_variance: 1 / (1 - alpha / 4)),
            ("this is tau^2 times the chapter's answer for tau^2 = 1, 1 / (1 - alpha / 4): the "
             "contraction of one step depends on tau^2 as well, 1 - alpha / (2 tau^2).",
             lambda alpha, target_variance: target_variance / (1 - alpha / 4)),
            ("you found tau^2 / (1 - alpha / (2 tau^2)), the authors' convention (drift alpha * s, "
             "noise sqrt(2 alpha) z); the course's step is (alpha/2) * s + sqrt(alpha) z.",
             lambda alpha, target_variance: target_variance / (1 - alpha / (2 * target_variance))),
            ("this is the standard deviation, the square root of the variance the question asks "
             "for.", lambda alpha, target_variance: math.sqrt(
                 _stationary_variance(alpha, target_variance))),
            ("you found the reciprocal of the answer.",
             lambda alpha, target_variance: 1 / _stationary_variance(alpha, target_variance)),
            ("you multiplied by tau^2 where the score divides by it: the contraction of one step "
             "is 1 - alpha / (2 tau^2).",
             lambda alpha, target_variance: 1 / (target_variance
                                                 * (1 - alpha * target_variance / 4))),
            ("you dropped the square of the contraction: the variance of c x is c^2 v, not c v.",
             lambda alpha, target_variance: 2.0 * target_variance),
            ("you squared target_variance: it already is tau^2, the target's variance (not its "
             "standard deviation).",
             lambda alpha, target_variance: _stationary_variance(alpha, target_variance**2)),
            ("you returned v / tau^2, the variance relative to the target's; the question asks "
             "for the variance v itself.",
             lambda alpha, target_variance: _stationary_variance(alpha, target_variance)
             / target_variance),
            ("your step has the drift alpha * s with the noise sqrt(alpha) z, the two "
             "conventions mixed: the course's step is x + (alpha/2) s + sqrt(alpha) z.",
             lambda alpha, target_variance: target_variance
             / (2 - alpha / target_variance)),
        ],
    )
    _expect_largest_stable_step(largest_stable_step)


# ---------------------------------------------------------------- 2.4 (debug) noise scaled by alpha


def _sampler_reference(x0, step_size, n_steps, seed, *, drift=0.5, noise=None):
    """Langevin on N(0, 1) (score -x) with drift * alpha * s and noise(alpha) * z per step."""
    noise = noise or math.sqrt
    generator = torch.Generator().manual_seed(seed)
    x = x0.clone()
    for _ in range(n_steps):
        z = torch.randn(x.shape, generator=generator)
        x = x + drift * step_size * -x + noise(step_size) * z
    return x


@exercise(
    "2.4",
    "your fixed langevin_sampler adds noise sqrt(alpha) * z, and its samples of N(0, 1) now "
    "have the variance 1 / (1 - alpha/4) instead of collapsing.",
)
def exercise_2_4(langevin_sampler) -> None:
    """Check ``langevin_sampler(score_fn, x0 (N, D), step_size, n_steps, generator) -> (N, D)``."""
    from scorelab.langevin import langevin_dynamics

    n, n_steps, seed = 20000, 200, 17
    x0 = torch.zeros(n, 1)
    for step_size in cases([0.1, 0.5], [0.05, 1.2]):
        call = f"langevin_sampler(..., step_size={step_size})"

        def run(points, step_size=step_size):
            with package_refused(langevin_dynamics, what="langevin_sampler"), \
                    global_rng_untouched("langevin_sampler"):
                return call_student(
                    langevin_sampler, lambda x: -x, points, step_size, n_steps,
                    generator=torch.Generator().manual_seed(seed), what="langevin_sampler",
                )

        given = x0.clone()
        got = run(given)
        expect_untouched(given, x0, call=call)
        got = expect_tensor(got, what=call, shape=(n, 1))
        expect_finite(got, what=call)
        variance, target = got.var().item(), _stationary_variance(step_size)
        if is_close(got, _sampler_reference(x0, step_size, n_steps, seed), rtol=1e-4, atol=1e-4):
            # the symptom is gone: 4 standard errors of a variance estimate from n numbers
            if abs(variance / target - 1) > 4 * math.sqrt(2 / n):
                raise Mismatch(f"{call}: variance {variance:.3f}, expected {target:.3f}.")
            continue
        expect_same_draws(lambda: run(x0.clone()), got, outputs="samples")
        mutants = {
            "still the bug: your sampler draws what the colleague's does, variance "
            f"{variance:.3g} where N(0, 1) sampled with this step has {target:.3g}. Compare "
            "each term of the step with exercise 2.1's update, and ask how much variance each "
            "step adds; checks.hint(\"2.4\") helps.": dict(
                noise=lambda a: a
            ),
            "the noise is now sqrt(2 alpha) * z, the authors' convention, but the drift is still "
            "(alpha / 2) * score: the two conventions must not be mixed.": dict(
                noise=lambda a: math.sqrt(2 * a)
            ),
            "you changed the drift instead of the noise: the drift (alpha / 2) * score was "
            "right, the noise term is the bug.": dict(drift=1.0, noise=lambda a: a),
            "you switched to the authors' convention, x + alpha * score + sqrt(2 alpha) * z: "
            "consistent, but it is the course's step with 2 alpha, so its samples are not the "
            "course's. Keep the drift (alpha / 2) * score and change only the noise line, to "
            "sqrt(alpha) * z.": dict(drift=1.0, noise=lambda a: math.sqrt(2 * a)),
            "the sampler adds no noise at all now: it is gradient ascent and collapses onto the "
            "mode.": dict(noise=lambda a: 0.0),
        }
        for message, change in mutants.items():
            if is_close(got, _sampler_reference(x0, step_size, n_steps, seed, **change),
                        rtol=1e-4, atol=1e-4):
                raise Mismatch(message)
        for steps in (n_steps - 1, n_steps + 1):
            if is_close(got, _sampler_reference(x0, step_size, steps, seed), rtol=1e-4,
                        atol=1e-4):
                raise Mismatch(f"{call} runs {steps} steps where n_steps = {n_steps} was asked: "
                               "run exactly n_steps steps (range(n_steps)).")
        raise Mismatch(
            f"{call} does not reproduce x + (alpha/2) * score + sqrt(alpha) * z step by step "
            f"(sample variance {variance:.3g}, expected about {target:.3g}); change only the "
            "buggy line, and keep drawing z = torch.randn(x.shape, generator=generator) once "
            "a step."
        )


# ---------------------------------------------------------------- hints (checks.hint("2.k"))

register_hints(
    "2.1",
    "One step moves every particle a little along the score and adds fresh Gaussian "
    "noise. For the mixed step: compared with the course's step, which term is larger, and "
    "does that make the samples wider or narrower than p?",
    "Read the update term by term: at which points is the score evaluated, what multiplies "
    "it, and what must the noise's variance be? Where does the noise come from, so that two "
    "runs seeded alike agree? For the mixed step: with a time step du of half the step size it "
    "is an Euler step of a diffusion with drift s du and noise b dw; what is b, next to the "
    "chapter's square root of 2?",
    "Checks to run: call it twice on the same points with two generators seeded alike; the "
    "answers must be equal and the points unchanged. On a standard normal, whose score is "
    "minus x, a few hundred steps of size 0.1 from the origin should leave a variance a little "
    "above 1, the chapter's stationary variance for that step. For the mixed step: in a new "
    "time u' = c u, Brownian motion's increments scale by sqrt(c); pick c so that the noise is "
    "sqrt(2) dw' again, and note that k times the score of p is the score of p^k. Test your "
    "power on N(0, 1), for which p^beta is N(0, 1 / beta): run the mixed step with a small step "
    "and measure the variance.",
)
register_hints(
    "2.2",
    "Write one step for the score of N(0, tau^2). At stationarity the variance before a step "
    "equals the variance after it: write the variance of both sides.",
    "The two terms of a step are independent, so their variances add: the contracted "
    "old point contributes the square of the contraction factor times v, the noise "
    "contributes the step size. The chain settles only if the contraction factor lies "
    "strictly between -1 and 1.",
    "That is a linear equation in v: v equals v times a number below one, plus the "
    "step size. Expand the square, collect the v terms on one side and divide; at tau^2 = 1 "
    "your answer must be the chapter's.",
)
register_hints(
    "2.3",
    "Run the sampler long enough to forget the start, on many particles, and take the "
    "variance of all the numbers; then look for the step size at which it crosses "
    "1.1 pi^2 / 3.",
    "Size the run before you scan: measure at two step sizes, say 0.5 and 1.5, to see how fast "
    "the variance changes per unit of alpha. The relative standard error sqrt(3.2 / n) of a "
    "measurement must be a few times smaller than the change over the tolerance of 0.05.",
    "Give every step size the same seed (common random numbers): the runs then differ only "
    "through alpha, and the measured curve is smooth. Then bisect, or scan coarsely and "
    "interpolate linearly between the two step sizes that bracket 1.1 pi^2 / 3.",
)
register_hints(
    "2.4",
    "Samples that come out far too narrow mean the chain gets too little noise per step. Which"
    " term sets how much variance a step adds?",
    "Set the score to zero and work out, on paper, the variance that one step of the "
    "colleague's loop adds, and the variance that one step of exercise 2.1's update adds. By "
    "what factor do they differ at step 0.1?",
    "Check a fix before you trust it: with the score set to zero, n steps from x0 = 0 must "
    "give samples of variance n * step_size (only the noise acts); with the score -x they must"
    " settle at 1 / (1 - step_size / 4).",
)


# ---------------------------------------------------------------- 2.5 (implement): MALA

register_hints(
    "2.5",
    "Metropolis-Hastings accepts a proposal y from x with probability min(1, r), where r "
    "compares the target at y with the target at x, each weighted by how likely the proposal "
    "is to make the move that leads away from it.",
    "r = p(y) q(x | y) / (p(x) q(y | x)), with q(y | x) the density of the Langevin proposal: "
    "a Gaussian centred at x + (alpha/2) s(x) with variance alpha in every coordinate. Work "
    "with logarithms; the Gaussians' normalising constants cancel.",
    "Checks to run: with a score of zero the two q's are equal and only p(y)/p(x) remains, but "
    "a constant non-zero score already makes them differ (it favours moves along it); for "
    "y = x the answer is 0; with your function inside a MALA loop, N(0, 1) sampled with step "
    "1.0 must keep variance 1 (Langevin alone gives 1/(1 - 1/4)).",
)


def _proposal_log_density(mean_from, to, score_at, step_size, scale=1.0, variance=None):
    """log q(to | mean_from) up to a constant: -|to - from - (alpha/2) s(from)|^2 / (2 var)."""
    variance = step_size if variance is None else variance
    mean = mean_from + scale * 0.5 * step_size * score_at
    return -((to - mean) ** 2).sum(1) / (2 * variance)


def _mala_reference_and_mutants(log_prob_fn, score_fn, x, y, step_size):
    """2.5's log acceptance probability log min(1, r) (N,) and its known mistakes."""
    log_px, log_py, sx, sy = log_prob_fn(x), log_prob_fn(y), score_fn(x), score_fn(y)

    def log_accept(log_ratio):
        return torch.clamp(log_ratio, max=0.0)

    def ratio(**kwargs):
        forward = _proposal_log_density(x, y, sx, step_size, **kwargs)
        backward = _proposal_log_density(y, x, sy, step_size, **kwargs)
        return log_py - log_px + backward - forward

    right = ratio()
    mutants = {
        "you left out the proposal's densities: with a Langevin proposal q(y | x) is not "
        "q(x | y), so r = p(y) q(x | y) / (p(x) q(y | x)).": log_accept(log_py - log_px),
        "the proposal densities are the wrong way round: r has q(x | y), the density of the "
        "move back from y, in the numerator.": log_accept(log_py - log_px - (right
                                                                            - log_py + log_px)),
        "your ratio is upside down (p(x) q(y | x) over p(y) q(x | y)).": log_accept(-right),
        "your proposal's variance is alpha / 2 (or alpha^2, the same at this step): the step "
        "adds sqrt(alpha) z, whose variance is alpha.":
            log_accept(ratio(variance=step_size / 2)),
        "your proposal's log-density has twice the variance alpha, or averages the squared "
        "distance over the D = 2 coordinates instead of summing it: log q(y | x) = "
        "-|y - x - (alpha/2) s(x)|^2 / (2 alpha) + const, a sum over coordinates.":
            log_accept(ratio(variance=2 * step_size)),
        "your proposal's mean lacks the 1/2: the Langevin step moves by (alpha/2) s(x).":
            log_accept(ratio(scale=2.0)),
        "your proposal's mean has the wrong sign: the Langevin proposal from x is centred at "
        "x + (alpha/2) s(x), a step up the score.": log_accept(ratio(scale=-1.0)),
        "the move back uses the score at x; q(x | y) is centred at y + (alpha/2) s(y).":
            log_accept(log_py - log_px + _proposal_log_density(y, x, sx, step_size)
                       - _proposal_log_density(x, y, sx, step_size)),
        "you return log r itself: a probability is at most 1, so take min(0, log r).": right,
        "you return the acceptance probability min(1, r), not its logarithm.":
            torch.exp(log_accept(right)),
    }
    return log_accept(right), mutants


def _mala_cases(generator: torch.Generator):
    """(where, log_prob_fn, score_fn, x, y, step) for a Gaussian, a mixture and, hidden, an
    anisotropic Gaussian in 5 dimensions; y is a Langevin proposal from x."""
    from scorelab.densities import GaussianMixture

    mixture = GaussianMixture(torch.tensor([0.7, 0.3]), torch.tensor([[-2.0, 0.0], [2.0, 1.0]]),
                              torch.tensor([0.5, 0.8]))
    scales = torch.tensor([1.0, 0.3, 2.0, 0.7, 1.5])

    def gaussian(x):
        return -0.5 * (x**2).sum(1)

    def anisotropic(x):
        return -0.5 * ((x / scales) ** 2).sum(1)

    targets = [("N(0, I) in D = 2", gaussian, lambda x: -x, 2, 0.5),
               ("a two-component mixture", mixture.log_prob, mixture.score, 2, 0.3)]
    hidden = [("an anisotropic Gaussian in D = 5", anisotropic, lambda x: -x / scales**2, 5,
               0.2)]
    for where, log_prob_fn, score_fn, dim, step in cases(targets, hidden):
        x = 2.0 * torch.randn(64, dim, generator=generator)
        y = (x + 0.5 * step * score_fn(x)
             + math.sqrt(step) * torch.randn(64, dim, generator=generator))
        yield where, log_prob_fn, score_fn, x, y, step


@exercise("2.5", "log min(1, r) with r = p(y) q(x | y) / (p(x) q(y | x)): the Metropolis "
                 "correction keeps p exactly stationary at any step size.")
def exercise_2_5(mala_log_accept) -> None:
    """Check ``mala_log_accept(log_prob_fn, score_fn, x, y, step_size) -> (N,)``, then use it
    in a MALA chain on N(0, 1) at step 1.0, where Langevin alone overestimates the variance by a
    third."""
    generator = torch.Generator().manual_seed(25)
    for where, log_prob_fn, score_fn, x, y, step in _mala_cases(generator):
        given_x, given_y = x.clone(), y.clone()
        got = expect_tensor(call_student(mala_log_accept, log_prob_fn, score_fn, given_x,
                                         given_y, step, what="mala_log_accept"),
                            what="mala_log_accept(...)", shape=(len(x),))
        expect_untouched(given_x, x, call="mala_log_accept(log_prob_fn, score_fn, x, y, "
                                          "step_size)")
        expect_untouched(given_y, y, call="mala_log_accept(log_prob_fn, score_fn, x, y, "
                                          "step_size)")
        expect_finite(got, what="mala_log_accept(...)", where=f" on {where}")
        want, mutants = _mala_reference_and_mutants(log_prob_fn, score_fn, x, y, step)
        diagnose(got, want, what=f"mala_log_accept on {where} (step {step})", mutants=mutants,
                 rtol=1e-4, atol=1e-4)
    _check_mala_variance(mala_log_accept)


def _check_mala_variance(mala_log_accept) -> None:
    """The student's acceptance in a MALA chain on N(0, 1) with step 1.0 keeps variance 1."""
    generator = torch.Generator().manual_seed(52)
    x = torch.randn(20_000, 1, generator=generator)  # start at the target: only the bias shows

    def log_prob_fn(points):
        return -0.5 * (points**2).sum(1)

    for _ in range(200):
        y = 0.5 * x + torch.randn(x.shape, generator=generator)  # x + (1/2) * 1.0 * (-x) + z
        log_u = torch.log(torch.rand(len(x), generator=generator))
        accept = log_u < call_student(mala_log_accept, log_prob_fn, lambda p: -p, x, y, 1.0,
                                      what="mala_log_accept")
        x = torch.where(accept[:, None], y, x)
    variance = x.var().item()
    if abs(variance - 1.0) > 0.05:  # 20,000 draws: the variance's error is about 0.01
        raise Mismatch(f"your acceptance matches on single inputs, but a MALA chain on N(0, 1) "
                       f"with step 1.0 ends with variance {variance:.3f} instead of 1.")
