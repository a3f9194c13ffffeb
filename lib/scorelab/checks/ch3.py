"""Checks for the exercises of chapter 3: the noise ladder, the annealed step, the sampler.

3.1 (derive) the common ratio of a geometric ladder; 3.2 (implement) the ladder itself;
3.3 (derive) the step rule alpha_i = eps sigma_i^2 / sigma_L^2 from a constant signal-to-noise
ratio; 3.4 (investigate) where plain Langevin puts the 0.8 / 0.2 mixture's mass, and why;
3.5 (implement) annealed Langevin dynamics.
"""

from __future__ import annotations

import functools
import math

import torch

from scorelab.checks._core import (Mismatch, call_student, cases, check_choice, diagnose,
                                   exercise, expect_finite, expect_tensor, register_hints,
                                   to_float)
from scorelab.checks._formulas import by_regime, check_formula, random_values


def _ladders() -> list[tuple[float, float, int]]:
    """(sigma_max, sigma_min, L) triples: the public ones, and hidden ones while grading."""
    return cases(
        [(20.0, 1.0, 10), (1.0, 0.01, 5), (3.0, 0.5, 2)], [(50.0, 0.02, 232), (7.0, 6.0, 3)]
    )


@exercise(
    "3.2", "your geometric_sigmas is the decreasing geometric ladder from sigma_max to sigma_min."
)
def exercise_3_2(geometric_sigmas) -> None:
    """Check ``geometric_sigmas(sigma_max, sigma_min, n_levels) -> Tensor (L,)``."""
    from scorelab.noise import geometric_sigmas as reference

    for sigma_max, sigma_min, n_levels in _ladders():
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


@exercise(
    "3.3",
    "your annealed_step is eps * sigma_i^2 / sigma_L^2 (Algorithm 1): the same signal-to-noise "
    "ratio at every level, and eps itself at the last.",
)
def exercise_3_3(annealed_step) -> None:
    """Check ``annealed_step(eps, sigma_i, sigma_L) -> float`` at random values in three regimes."""

    def draw(eps_seed: int, last_seed: int, ratios: tuple | None, shift: int) -> list[dict]:
        """Points whose sigma_i / sigma_L is drawn from ``ratios`` (low, high, seed, log), or 1."""
        eps = random_values(1e-4, 0.5, 3, seed=eps_seed + shift, log=True)
        last = random_values(0.01, 2.0, 3, seed=last_seed + shift, log=True)
        times = [1.0] * 3
        if ratios is not None:
            low, high, seed, log = ratios
            times = random_values(low, high, 3, seed=seed + shift, log=log)
        return [{"eps": e, "sigma_i": r * s, "sigma_L": s} for e, r, s in zip(eps, times, last)]

    regimes = {
        "for the last level (sigma_i = sigma_L)": (30, 40, None),
        "for sigma_i a few times sigma_L": (31, 51, (1.5, 5.0, 41, False)),
        "for sigma_i much larger than sigma_L": (32, 52, (20.0, 500.0, 42, True)),
    }
    points, group = by_regime(
        {name: cases(draw(*spec, 0), draw(*spec, 100)) for name, spec in regimes.items()}
    )
    check_formula(
        annealed_step,
        lambda eps, sigma_i, sigma_L: eps * sigma_i**2 / sigma_L**2,
        points,
        what="annealed_step",
        regimes=[group],
        rtol=1e-5,
        atol=1e-8,
        mutants=[
            ("it returns eps * sigma_i / sigma_L: the drift (alpha/2) s is about "
             "alpha / (2 sigma) and the noise sqrt(alpha); their ratio stays fixed only if "
             "alpha grows like sigma_i^2.", lambda eps, sigma_i, sigma_L: eps * sigma_i / sigma_L),
            ("it returns eps * sigma_i^2, not divided by sigma_L^2: then the last level does "
             "not take the step eps itself.", lambda eps, sigma_i, sigma_L: eps * sigma_i**2),
            ("it returns eps * sigma_L^2 / sigma_i^2, upside down: it gives the largest noise "
             "level the smallest step, where it should take the largest.",
             lambda eps, sigma_i, sigma_L: eps * sigma_L**2 / sigma_i**2),
            ("it returns eps at every level: plain Langevin steps barely move at large sigma, "
             "where the density is wide.", lambda eps, sigma_i, sigma_L: eps),
        ],
    )


def _toy_problem():
    """The NCSN paper's 0.8/0.2 mixture, its perturbed score and a short annealed run's settings."""
    from scorelab.densities import ncsn_toy_mixture
    from scorelab.noise import geometric_sigmas

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
    "3.5", "your annealed sampler recovers the 0.8 / 0.2 weights that plain Langevin gets wrong."
)
def exercise_3_5(annealed_langevin) -> None:
    """Check ``annealed_langevin(score_fn, x0 (N, D), sigmas (L,), step_size, n_steps_each, generator)``."""
    for step_size, start_seed, noise_seed in cases([(0.1, 3, 4)], [(0.05, 13, 14)]):
        _check_annealed(annealed_langevin, step_size, start_seed, noise_seed)


def _check_annealed(annealed_langevin, step_size: float, start_seed: int, noise_seed: int) -> None:
    from scorelab.langevin import annealed_langevin_dynamics

    _, sigmas, score_fn = _toy_problem()
    n, n_steps = 2000, 50
    x0 = (
        8.0 * torch.rand(n, 2, generator=torch.Generator().manual_seed(start_seed)) - 4.0
    )  # (N, 2), uniform on [-4, 4]^2

    def sample(sampler, **options):  # the student's sampler and the reference, same inputs
        return sampler(score_fn, x0.clone(), sigmas, step_size, n_steps,
                       generator=torch.Generator().manual_seed(noise_seed), **options)

    got = sample(functools.partial(call_student, annealed_langevin), what="annealed_langevin")
    got = expect_tensor(got, what="annealed_langevin(...)", shape=(n, 2))
    if not torch.isfinite(got).all():
        raise Mismatch(
            "the samples contain NaN or inf: the chain diverged. Is the step at level i "
            "step_size * sigma_i^2 / sigma_L^2 with sigma_L the smallest sigma?"
        )
    expected = sample(annealed_langevin_dynamics, progress=False)
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


# ---------------------------------------------------------------- 3.1 (derive) the common ratio


@exercise(
    "3.1",
    "your common_ratio is (sigma_max / sigma_min)^(1 / (L - 1)): L levels leave L - 1 gaps.",
)
def exercise_3_1(common_ratio) -> None:
    """Check ``common_ratio(sigma_max, sigma_min, n_levels) -> float`` at random ladders."""

    def draw(seed: int, n_low: int, n_high: int, span: tuple[float, float]) -> list[dict]:
        sigma_min = random_values(0.01, 1.0, 3, seed=seed, log=True)
        spans = random_values(*span, 3, seed=seed + 1, log=True)
        levels = torch.randint(n_low, n_high + 1, (3,), generator=torch.Generator().manual_seed(seed))
        return [{"sigma_max": m * r, "sigma_min": m, "n_levels": int(n)}
                for m, r, n in zip(sigma_min, spans, levels.tolist())]

    ladders = {
        "for long ladders (50 to 1000 levels)": (60, 50, 1000, (10.0, 5000.0)),
        "for short ladders (2 to 4 levels)": (61, 2, 4, (1.5, 50.0)),
        "for narrow ladders (sigma_max < 2 sigma_min)": (62, 3, 20, (1.05, 2.0)),
    }
    points, group = by_regime({
        name: cases(draw(seed, *rest), draw(seed + 100, *rest))
        for name, (seed, *rest) in ladders.items()
    })
    check_formula(
        common_ratio,
        lambda sigma_max, sigma_min, n_levels: (sigma_max / sigma_min) ** (1.0 / (n_levels - 1)),
        points,
        what="common_ratio",
        regimes=[group],
        mutants=[
            ("it takes the L-th root; L levels have L - 1 gaps between them, so "
             "sigma_max / sigma_min = ratio^(L - 1).",
             lambda sigma_max, sigma_min, n_levels: (sigma_max / sigma_min) ** (1.0 / n_levels)),
            ("it is below 1: sigma_i / sigma_(i+1) is above 1 because the ladder decreases.",
             lambda sigma_max, sigma_min, n_levels:
             (sigma_min / sigma_max) ** (1.0 / (n_levels - 1))),
            ("it is the gap of an evenly spaced ladder, (sigma_max - sigma_min) / (L - 1); a "
             "geometric ladder has a constant ratio, not a constant difference.",
             lambda sigma_max, sigma_min, n_levels: (sigma_max - sigma_min) / (n_levels - 1)),
            ("it divides sigma_max / sigma_min by L - 1; the ratio is multiplied L - 1 times, "
             "so take the (L - 1)-th root.",
             lambda sigma_max, sigma_min, n_levels: sigma_max / sigma_min / (n_levels - 1)),
        ],
    )


# ---------------------------------------------------------------- 3.4 (investigate) plain Langevin's share

#: 3.4: the share is set by the start; two runs of 2,000 particles differ only through the few
#: that start near the dividing line, by far less than this.
SHARE_TOLERANCE = 0.03

WHY_OPTIONS = {
    "a": "more steps do not help: to change sides a particle must cross the low-density gap "
    "between the modes, and the time that takes grows exponentially with the barrier.",
    "b": "right: near each mode the score is that mode's own score, whatever the weights, so "
    "particles fall into the mode on their side of the gap and stay there.",
    "c": "a smaller step only makes the chain slower; the share stays that of the start.",
    "d": "the score of the mixture is exact here; the sampler, not the score, is the problem.",
}


def _share_starts():
    """Starting clouds of 2,000 particles: uniform on [-8, 8]^2; hidden, lopsided boxes."""

    def box(x_low, x_high, seed):
        u = torch.rand(2000, 2, generator=torch.Generator().manual_seed(seed))
        return torch.stack([x_low + (x_high - x_low) * u[:, 0], 16 * u[:, 1] - 8], dim=1)

    return cases(
        [("a uniform start on [-8, 8]^2", box(-8.0, 8.0, 5))],
        [("a hidden start on [-8, 2] x [-8, 8]", box(-8.0, 2.0, 6)),
         ("a hidden start on [-3, 8] x [-8, 8]", box(-3.0, 8.0, 7))],
    )


@exercise(
    "3.4",
    "plain Langevin keeps the share of the start in each mode (about 0.5 from a symmetric "
    "box), whatever the true weights, because the score near a mode ignores them.",
)
def exercise_3_4(plain_langevin_share, why) -> None:
    """Check ``plain_langevin_share(x0 (N, 2), generator) -> float`` and the letter ``why``."""
    from scorelab.densities import ncsn_toy_mixture
    from scorelab.langevin import langevin_dynamics

    mixture = ncsn_toy_mixture()
    for name, x0 in _share_starts():
        got = to_float(
            call_student(plain_langevin_share, x0.clone(),
                         generator=torch.Generator().manual_seed(8), what="plain_langevin_share"),
            what=f"plain_langevin_share on {name}",
        )
        samples = langevin_dynamics(mixture.score, x0, 0.1, 500, progress=False,
                                    generator=torch.Generator().manual_seed(9))
        expected = _weight_of_first_mode(samples)
        if abs(got - expected) <= SHARE_TOLERANCE:
            continue
        if abs(got - (1 - expected)) <= SHARE_TOLERANCE:
            raise Mismatch(
                f"on {name} you report {got:.3f}, the share of the (-5, -5) mode; count the "
                "samples on the (5, 5) side (x + y > 0)."
            )
        if abs(got - 0.8) <= SHARE_TOLERANCE:
            raise Mismatch(
                f"on {name} you report {got:.3f}, the true weight: did you sample the mixture "
                "itself? Run plain Langevin (langevin_dynamics with mixture.score) from x0."
            )
        raise Mismatch(
            f"on {name} you report {got:.3f}; plain Langevin from that start puts {expected:.3f} "
            "of the samples on the (5, 5) side. Run a few hundred steps of step 0.1 from x0 and "
            "count the samples with x + y > 0."
        )
    check_choice(why, WHY_OPTIONS, "b", what="why")


# ---------------------------------------------------------------- hints (checks.hint("3.k"))

register_hints(
    "3.1",
    "Walking down the ladder multiplies sigma by the same factor at every step. How "
    "many such steps take you from sigma_max to sigma_min?",
    "The ratio of the first to the last level is a product of equal factors, one for "
    "each gap between neighbouring levels. Count the gaps of a ladder of n_levels "
    "levels.",
    "The factor raised to the number of gaps gives sigma_max over sigma_min: undo the "
    "power with a fractional exponent.",
)
register_hints(
    "3.2",
    "A geometric ladder is evenly spaced on a logarithmic axis.",
    "log sigma_i runs linearly from log sigma_max to log sigma_min in L points; "
    "exponentiate back.",
    "logs = <L evenly spaced numbers between the two logarithms>;  return <their "
    "exponential, a float32 tensor of shape (L,)>.",
)
register_hints(
    "3.3",
    "Write the size of the drift term and of the noise term of one step at level i, "
    "using that the score there is about one over sigma_i in size.",
    "Their ratio is proportional to the square root of alpha_i divided by sigma_i. "
    "Keeping it the same at every level fixes how alpha_i grows with sigma_i; the "
    "last level fixes the constant.",
    "alpha_i is proportional to sigma_i to the power ____, normalised so that the "
    "level sigma_L gets exactly eps.",
)
register_hints(
    "3.4",
    "Run plain Langevin from the given start, then count. Before you run it, predict "
    "the share from the start alone.",
    "The (5, 5) mode is the half-plane x + y > 0; the score there is almost exactly "
    "that component's own -(x - mu), whatever its weight.",
    "Run langevin_dynamics from x0 with the mixture's score, then take the mean of a "
    "mask: the samples whose two coordinates add up to more than zero. why is a "
    "one-letter string.",
)
register_hints(
    "3.5",
    "Two nested loops: over the noise levels from the largest to the smallest, and over the "
    "Langevin steps within a level, each with that level's own step size and score.",
    "At level i: alpha_i = eps * sigma_i^2 / sigma_L^2 and "
    "x <- x + (alpha_i / 2) * s(x, sigma_i) + sqrt(alpha_i) * z.",
    "for sigma in <the levels as floats>:  alpha = <your step rule>;  "
    "repeat n_steps_each times: <one Langevin step with score_fn(x, sigma)>;  return x",
)
