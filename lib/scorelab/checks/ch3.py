"""Checks for the exercises of chapter 3: the noise ladder, the annealed step, the sampler.

3.1 (derive) the common ratio of a geometric ladder; 3.2 (implement) the ladder itself;
3.3 (derive) the step of each level that keeps exercise 2.2's stationary bias the same on
Gaussian data, against Algorithm 1's alpha_i = eps sigma_i^2 / sigma_L^2; 3.4 (investigate) where plain Langevin puts the 0.8 / 0.2 mixture's mass, and why (the basins' edge, and the share it predicts);
3.5 (implement) annealed Langevin dynamics; 3.6 (debug) a colleague's seeded sampler whose step
grows like sigma and whose noise restarts at every level.
"""

from __future__ import annotations

import math

import torch

from scorelab.checks._core import (Mismatch, answer_number, call_student, cases,
                                   diagnose, exercise, expect_derived, expect_finite,
                                   expect_same_draws, expect_tensor, expect_untouched,
                                   global_rng_untouched, package_refused, register_hints,
                                   to_float, without_package)
from scorelab.checks._formulas import by_regime, check_formula, random_values


def _ladders() -> list[tuple[float, float, int]]:
    """(sigma_max, sigma_min, L) triples: the public ones, and hidden ones while grading."""
    return cases(
        [(20.0, 1.0, 10), (1.0, 0.01, 5), (3.0, 0.5, 2)], [(50.0, 0.02, 232), (7.0, 6.0, 3)]
    )


@exercise(
    "3.2", "your geometric_sigmas is the decreasing geometric ladder from sigma_max to sigma_min, "
    "and an evenly spaced ladder no harder to hand over needs 1 + (sigma_max - sigma_min) / "
    "(sigma_min (gamma - 1)) levels, rounded up: its hardest hand-over is at the bottom.",
)
def exercise_3_2(geometric_sigmas, evenly_spaced_levels) -> None:
    """Check ``geometric_sigmas(sigma_max, sigma_min, n_levels) -> Tensor (L,)`` and
    ``evenly_spaced_levels(sigma_max, sigma_min, n_levels) -> int``."""
    _check_geometric_sigmas(geometric_sigmas)
    for ladder in cases([(20.0, 1.0, 10), (5.0, 0.01, 22), (1.0, 0.01, 10)],
                        [(2.0, 0.05, 15), (3.0, 1.0, 3), (4.0, 1.0, 3)]):  # 4, 3, 2, 1: a tie
        _expect_evenly_spaced_levels(evenly_spaced_levels, *ladder)


def _even_ladder_bottom_ratio(sigma_max: float, sigma_min: float, n_levels: int) -> float:
    """The largest neighbour ratio of the evenly spaced ladder: (sigma_min + h) / sigma_min."""
    return 1.0 + (sigma_max - sigma_min) / (n_levels - 1) / sigma_min


def _geometric_ratio(sigma_max: float, sigma_min: float, n_levels: int) -> float:
    """gamma = sigma_(i-1) / sigma_i of the geometric ladder of n_levels levels."""
    return (sigma_max / sigma_min) ** (1.0 / (n_levels - 1))


def _fewest_even_levels(sigma_max: float, sigma_min: float, n_levels: int) -> int:
    """3.2: h = (sigma_max - sigma_min) / (n - 1) with (sigma_min + h) / sigma_min <= gamma."""
    gamma = _geometric_ratio(sigma_max, sigma_min, n_levels)
    return 1 + math.ceil((sigma_max - sigma_min) / (sigma_min * (gamma - 1.0)) - 1e-9)


def _expect_evenly_spaced_levels(evenly_spaced_levels, sigma_max, sigma_min, n_levels) -> None:
    call = f"evenly_spaced_levels({sigma_max:g}, {sigma_min:g}, {n_levels})"
    got = to_float(call_student(evenly_spaced_levels, sigma_max, sigma_min, n_levels,
                                what="evenly_spaced_levels"), what=call)
    if got != int(got):
        raise Mismatch(f"{call} = {got:g}: a number of levels is a whole number; which way must "
                       "you round so that no hand-over is harder than the geometric ladder's?")
    got, want = int(got), _fewest_even_levels(sigma_max, sigma_min, n_levels)
    if got == want:
        return
    gamma = _geometric_ratio(sigma_max, sigma_min, n_levels)
    top_gaps = math.ceil((sigma_max - sigma_min) / (sigma_max * (1.0 - 1.0 / gamma)) - 1e-9)
    if got == want + 1 and math.isclose(_even_ladder_bottom_ratio(sigma_max, sigma_min, want),
                                        gamma, rel_tol=1e-9):
        raise Mismatch(f"{call} = {got}: with {want} levels the hardest hand-over has exactly the "
                       "geometric ladder's ratio, so it is no harder: did you ask for a strictly "
                       "smaller ratio?")
    if got == n_levels:
        raise Mismatch(f"{call} = {got}: that is the geometric ladder's own number of levels; "
                       "with as many evenly spaced levels, are all the hand-overs equally hard?")
    if got == 1 + top_gaps:
        raise Mismatch(f"{call} = {got}: that keeps the top hand-over within gamma; in an evenly "
                       "spaced ladder the neighbour ratio is largest where the levels are "
                       "smallest.")
    if got < 2:
        raise Mismatch(f"{call} = {got}: a ladder from sigma_max to sigma_min has at least two "
                       "levels.")
    ratio = _even_ladder_bottom_ratio(sigma_max, sigma_min, got)
    if got == want - 1:
        raise Mismatch(f"{call} = {got}: one level short (gaps counted instead of levels, or "
                       f"rounded down?): with {got} levels the hardest hand-over has the ratio "
                       f"{ratio:.4g}, above the geometric ladder's {gamma:.4g}.")
    if ratio > gamma:
        raise Mismatch(f"{call} = {got}: too few; with {got} evenly spaced levels the hardest "
                       f"hand-over has the ratio {ratio:.4g}, above the geometric ladder's "
                       f"{gamma:.4g}.")
    raise Mismatch(f"{call} = {got}: enough, but not the fewest: fewer evenly spaced levels "
                   f"keep every hand-over within the geometric ladder's ratio {gamma:.4g}.")


def _check_geometric_sigmas(geometric_sigmas) -> None:
    from scorelab.noise import geometric_sigmas as reference

    for sigma_max, sigma_min, n_levels in _ladders():
        call = f"geometric_sigmas({sigma_max}, {sigma_min}, {n_levels})"
        with package_refused(reference, what="geometric_sigmas"):
            got = call_student(
                geometric_sigmas, sigma_max, sigma_min, n_levels, what="geometric_sigmas"
            )
        if isinstance(got, (list, tuple)) or type(got).__module__ == "numpy":
            raise Mismatch(
                f"{call} returned a {type(got).__name__}; return a torch.Tensor "
                "(e.g. torch.exp(torch.linspace(...)))."
            )
        got = expect_tensor(got, what=call, shape=(n_levels,), dtype=None)
        if got.dtype != torch.float32:
            raise Mismatch(
                f"{call} has dtype {got.dtype}: return float32, as the exercise asks (from "
                "Python floats, torch.linspace and torch.exp give float32; convert anything "
                "else with .float())."
            )
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
            f"{call} stops short of sigma_min: a ladder of L levels has L - 1 gaps, so level i "
            "is sigma_max (sigma_min / sigma_max)^(i / (L - 1)).": sigma_max * (
                sigma_min / sigma_max) ** (torch.arange(n_levels, dtype=expected.dtype) / n_levels),
            f"{call} is the ladder shifted one level down: it starts one level below sigma_max "
            "and ends one level below sigma_min. i runs from 0: level i is sigma_max (sigma_min "
            "/ sigma_max)^(i / (L - 1)) for i = 0, ..., L - 1, so that sigmas[0] = sigma_max and "
            "sigmas[-1] = sigma_min.": expected * (expected[1] / expected[0]),
            f"{call} looks like torch.logspace given natural logarithms: logspace counts in "
            "powers of 10 (10^start to 10^end), so pass base=math.e, or give it "
            "math.log10(sigma_max) and math.log10(sigma_min).": torch.logspace(
                math.log(sigma_max), math.log(sigma_min), n_levels),
        }
        diagnose(got, expected, what=call, mutants=mutants)


@exercise(
    "3.3",
    "your equal_bias_step is eps (tau^2 + sigma_i^2) / (tau^2 + sigma_L^2): the same stationary "
    "bias at every level. Now compare it with Algorithm 1's rule, in the question below.",
)
def exercise_3_3(equal_bias_step) -> None:
    """Check ``equal_bias_step(eps, sigma_i, sigma_L, tau2) -> float`` at random values with the
    noise levels far above the data's spread, straddling it, and at the last level."""

    def draw(seed: int, noise_over_spread: tuple, level_over_last: tuple | None) -> list[dict]:
        """Points with sigma_L / tau and sigma_i / sigma_L drawn log-uniformly (or 1)."""
        eps = random_values(1e-4, 0.5, 3, seed=seed, log=True)
        tau2 = random_values(0.01, 4.0, 3, seed=seed + 1, log=True)
        last = random_values(*noise_over_spread, 3, seed=seed + 2, log=True)
        ratio = [1.0] * 3 if level_over_last is None else random_values(
            *level_over_last, 3, seed=seed + 3, log=True)
        return [{"eps": e, "sigma_i": r * k * t**0.5, "sigma_L": k * t**0.5, "tau2": t}
                for e, t, k, r in zip(eps, tau2, last, ratio)]

    regimes = {  # name -> (seed, sigma_L / tau, sigma_i / sigma_L)
        "when every level is far above the data's spread (sigma_L > 10 tau)": (
            30, (10.0, 100.0), (1.5, 50.0)),
        "when the levels straddle the data's spread (sigma_L < tau / 10 < sigma_i)": (
            40, (0.01, 0.1), (200.0, 2000.0)),
        "at the last level (sigma_i = sigma_L)": (50, (0.01, 100.0), None),
    }
    points, group = by_regime({name: cases(draw(seed, *ranges), draw(seed + 100, *ranges))
                               for name, (seed, *ranges) in regimes.items()})
    check_formula(
        equal_bias_step,
        _equal_bias_step,
        points,
        what="equal_bias_step",
        regimes=[group],
        rtol=1e-5,
        atol=1e-12,
        mutants=[
            ("this is Algorithm 1's eps sigma_i^2 / sigma_L^2: level i's density has variance "
             "tau^2 + sigma_i^2, not sigma_i^2.",
             lambda eps, sigma_i, sigma_L, tau2: eps * sigma_i**2 / sigma_L**2),
            ("you added standard deviations, (tau + sigma_i)^2: independent noise adds "
             "variances, so level i's variance is tau^2 + sigma_i^2.",
             lambda eps, sigma_i, sigma_L, tau2: eps * (tau2**0.5 + sigma_i) ** 2
             / (tau2**0.5 + sigma_L) ** 2),
            ("you added sigma_i, a standard deviation, to tau^2, a variance: level i's variance "
             "is tau^2 + sigma_i^2.",
             lambda eps, sigma_i, sigma_L, tau2: eps * (tau2 + sigma_i) / (tau2 + sigma_L)),
            ("your step grows like the standard deviation of level i; by exercise 2.2 the bias "
             "depends on alpha over the variance, so the step must grow like the variance.",
             lambda eps, sigma_i, sigma_L, tau2: eps * ((tau2 + sigma_i**2)
                                                        / (tau2 + sigma_L**2)) ** 0.5),
            ("upside down: your rule gives the noisiest level the smallest step, where its "
             "density is widest.",
             lambda eps, sigma_i, sigma_L, tau2: eps * (tau2 + sigma_L**2) / (tau2 + sigma_i**2)),
            ("your step is proportional to level i's variance but not normalised: the last level "
             "must take eps itself.",
             lambda eps, sigma_i, sigma_L, tau2: eps * (tau2 + sigma_i**2)),
            ("you squared tau2: the argument tau2 is already the data's variance tau^2.",
             lambda eps, sigma_i, sigma_L, tau2: eps * (tau2**2 + sigma_i**2)
             / (tau2**2 + sigma_L**2)),
        ],
    )


def _equal_bias_step(eps: float, sigma_i: float, sigma_L: float, tau2: float) -> float:
    """alpha_i with alpha_i / (tau^2 + sigma_i^2) = eps / (tau^2 + sigma_L^2): exercise 2.2's
    bias, a function of alpha over the target's variance, the same at every level."""
    return eps * (tau2 + sigma_i**2) / (tau2 + sigma_L**2)


def _toy_problem(sigma_max: float = 20.0, sigma_min: float = 1.0, n_levels: int = 10, *,
                 floats_only: bool = False):
    """The NCSN paper's 0.8/0.2 mixture, its perturbed score and a short annealed run's ladder.

    With ``floats_only`` the score refuses a sigma that is not a Python float (a 0-d tensor from
    iterating over the ladder), as the notebook's own score functions, keyed by float, do."""
    from scorelab.densities import ncsn_toy_mixture
    from scorelab.noise import geometric_sigmas

    mixture = ncsn_toy_mixture()
    sigmas = geometric_sigmas(sigma_max, sigma_min, n_levels)
    perturbed = {float(s): mixture.perturbed(float(s)) for s in sigmas}

    def score_fn(x: torch.Tensor, sigma: float) -> torch.Tensor:
        if floats_only and not isinstance(sigma, float):
            raise Mismatch(
                f"score_fn(x, sigma) was called with sigma = {sigma!r}, a "
                f"{type(sigma).__name__}: pass sigma as a Python float: iterate over "
                "sigmas.tolist(), as the exercise asks (the score functions of the notebook "
                "look each level up by its float value)."
            )
        level = float(sigma)
        if level not in perturbed:  # a ladder recomputed in other arithmetic: the nearest level
            nearest = min(perturbed, key=lambda s: abs(s - level))
            if not math.isclose(nearest, level, rel_tol=1e-5):
                raise Mismatch(
                    f"score_fn(x, sigma) was called with sigma = {level:.6g}, which is not a "
                    f"level of the ladder sigmas ({', '.join(f'{s:.4g}' for s in perturbed)}): "
                    "take every sigma_i from sigmas itself (sigmas.tolist())."
                )
            level = nearest
        return perturbed[level].score(x)

    return mixture, sigmas, score_fn


def _weight_of_first_mode(x: torch.Tensor) -> float:
    """Fraction of samples nearer (5, 5) than (-5, -5)."""
    return (x.sum(dim=1) > 0).float().mean().item()


@exercise(
    "3.5", "your annealed sampler recovers the 0.8 / 0.2 weights that plain Langevin gets wrong."
)
def exercise_3_5(annealed_langevin) -> None:
    """Check ``annealed_langevin(score_fn, x0 (N, D), sigmas (L,), step_size, n_steps_each, generator)``."""
    # the paper's ladder ends at sigma_L = 1, where a step without / sigma_L^2 looks right;
    # the second ends at 0.5
    for step_size, ladder, start_seed, noise_seed in cases(
        [(0.1, (20.0, 1.0, 10), 3, 4), (0.02, (10.0, 0.5, 8), 5, 6)],
        [(0.05, (20.0, 1.0, 10), 13, 14), (0.01, (15.0, 0.3, 12), 15, 16)],
    ):
        _check_annealed(annealed_langevin, step_size, ladder, start_seed, noise_seed)


def _annealed_variant(score_fn, x0, sigmas, step_size: float, n_steps: int, seed: int, *,
                      drift: float = 0.5, noise: float = 1.0, power: int = 2,
                      divide: bool = True, levels: slice = slice(None),
                      one_draw_per_level: bool = False) -> torch.Tensor:
    """Algorithm 1 with the course's step, or one of the usual slips: at level i the step
    alpha_i = step_size (sigma_i / sigma_L)^power (without / sigma_L^power unless ``divide``),
    x + drift * alpha_i * s + sqrt(noise * alpha_i) * z, over the levels ``levels`` of the ladder,
    with a new z every step (or one per level); z from a generator seeded with ``seed``."""
    generator, x = torch.Generator().manual_seed(seed), x0.clone()
    last = float(sigmas[-1]) if divide else 1.0
    for sigma in sigmas.tolist()[levels]:
        alpha = step_size * (sigma / last) ** power
        z = None
        for _ in range(n_steps):
            if z is None or not one_draw_per_level:
                z = torch.randn(x.shape, generator=generator)
            x = x + drift * alpha * score_fn(x, sigma) + math.sqrt(noise * alpha) * z
    return x


def _annealed_mutants(step_size: float, n_steps: int, sigma_L: float) -> dict[str, dict]:
    """The usual slips of 3.5, keyed by their explanation: the options of
    :func:`_annealed_variant`, with ``steps`` for another number of steps per level."""
    return {
        f"your step at level i is step_size * sigma_i^2, without the division by sigma_L^2 "
        f"(invisible when sigma_L = 1; here sigma_L = {sigma_L:g}): Algorithm 1's step is "
        "step_size * sigma_i^2 / sigma_L^2.": dict(divide=False),
        "your update is x + alpha_i * s + sqrt(2 alpha_i) * z, twice Algorithm 1's step: the "
        "authors' code convention (or the course's step with 2 alpha_i). The course's step, "
        "exercise 2.1's, is x + (alpha_i / 2) * s + sqrt(alpha_i) * z, with alpha_i = "
        "step_size * sigma_i^2 / sigma_L^2.": dict(drift=1.0, noise=2.0),
        "your noise is sqrt(2 alpha_i) * z, the authors' convention, but your drift is the "
        "course's (alpha_i / 2) * s: the two conventions must not be mixed. The course's step "
        "is x + (alpha_i / 2) * s + sqrt(alpha_i) * z.": dict(noise=2.0),
        "your step at level i grows like sigma_i; Algorithm 1's grows like sigma_i^2 "
        "(step_size * sigma_i^2 / sigma_L^2), which keeps a step's drift and noise in the same "
        "ratio at every level.": dict(power=1),
        "you draw one noise vector per level and reuse it for all the steps of that level: "
        "every step needs fresh noise, z = torch.randn(x.shape, generator=generator) inside "
        "the inner loop.": dict(one_draw_per_level=True),
        "you skip the first level, sigma_1 = sigma_max: run all the levels of the ladder, "
        "from sigmas[0] down to sigmas[-1].": dict(levels=slice(1, None)),
        "you skip the last level, sigma_L: run all the levels of the ladder, from sigmas[0] "
        "down to sigmas[-1].": dict(levels=slice(None, -1)),
        "your drift is alpha_i * s, without the 1/2: exercise 2.1's step is "
        "x + (alpha_i / 2) * s + sqrt(alpha_i) * z.": dict(drift=1.0),
        "your levels run from the smallest sigma to the largest: annealing starts at "
        "sigmas[0], the largest, and ends at sigmas[-1].": dict(levels=slice(None, None, -1)),
        "your step is the same at every level: Algorithm 1's step grows like sigma_i^2, "
        "alpha_i = step_size * sigma_i^2 / sigma_L^2.": dict(power=0),
        f"you run one step fewer than n_steps_each (= {n_steps}) at each level.": dict(
            steps=n_steps - 1),
        f"you run one step more than n_steps_each (= {n_steps}) at each level.": dict(
            steps=n_steps + 1),
    }


def _check_annealed(annealed_langevin, step_size: float, ladder: tuple, start_seed: int,
                    noise_seed: int) -> None:
    from scorelab.langevin import annealed_langevin_dynamics

    _, sigmas, score_fn = _toy_problem(*ladder, floats_only=True)
    n, n_steps = 2000, 50
    x0 = (
        8.0 * torch.rand(n, 2, generator=torch.Generator().manual_seed(start_seed)) - 4.0
    )  # (N, 2), uniform on [-4, 4]^2

    def run(points):
        with package_refused(annealed_langevin_dynamics, what="annealed_langevin"), \
                global_rng_untouched("annealed_langevin"):
            return call_student(annealed_langevin, score_fn, points, sigmas.clone(), step_size,
                                n_steps, generator=torch.Generator().manual_seed(noise_seed),
                                what="annealed_langevin")

    given = x0.clone()
    got = run(given)
    expect_untouched(given, x0, call="annealed_langevin(score_fn, x0, ...)")
    got = expect_tensor(got, what="annealed_langevin(...)", shape=(n, 2))
    if not torch.isfinite(got).all():
        raise Mismatch(
            "the samples contain NaN or inf: the chain diverged. Is the step at level i "
            "step_size * sigma_i^2 / sigma_L^2 with sigma_L the smallest sigma?"
        )
    expected = annealed_langevin_dynamics(score_fn, x0.clone(), sigmas, step_size, n_steps,
                                          generator=torch.Generator().manual_seed(noise_seed),
                                          progress=False)
    if torch.allclose(got, expected, atol=1e-3, rtol=1e-3):
        return
    # The text prescribes every draw, so a right sampler reproduces the reference draw for draw.
    expect_same_draws(
        lambda: run(x0.clone()), got, outputs="samples",
        draw="draw the noise of every step with torch.randn(x.shape, generator=generator), "
        "and nothing else from any other source")
    for message, slip in _annealed_mutants(step_size, n_steps, float(sigmas[-1])).items():
        steps = slip.pop("steps", n_steps)
        slipped = _annealed_variant(score_fn, x0, sigmas, step_size, steps, noise_seed, **slip)
        if torch.allclose(got, slipped, atol=1e-3, rtol=1e-3):
            raise Mismatch(message)
    _explain_unknown_slip(got, expected, n)


def _explain_unknown_slip(got: torch.Tensor, expected: torch.Tensor, n: int) -> None:
    """Raise the Mismatch for samples that match no known slip: the statistics (the (5, 5)
    mode's weight and spread against the reference's) only word the message."""
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
            f"{reference_weight:.3f} (true value 0.8). Check the three things that move "
            "particles between the modes: the levels run from the largest sigma to the "
            "smallest; the step at level i is step_size * sigma_i^2 / sigma_L^2 (large steps at "
            "large sigma); and each step adds noise sqrt(alpha_i) z, freshly drawn from the "
            "generator."
        )
    if not abs(spread / reference_spread - 1) < 0.25:
        raise Mismatch(
            f"the weights are right but the (5, 5) mode has variance {spread:.3f} where the "
            f"reference sampler gives {reference_spread:.3f}: do you finish at the smallest "
            "sigma, with noise sqrt(alpha_i) * z at every step, and return the last step's "
            "samples as they are (Algorithm 1 has no final denoising step)?"
        )
    largest = (got - expected).abs().max().item()
    raise Mismatch(
        f"your samples look plausible (weight of the (5, 5) mode {weight:.3f}, the reference "
        f"sampler's {reference_weight:.3f}) but differ from the reference sampler's by up to "
        f"{largest:.3g}, from the same start and the same draws. The text fixes every draw, so "
        "the check compares draw for draw: every level of the ladder once, largest sigma "
        "first; exactly n_steps_each steps per level; the step alpha_i = step_size * sigma_i^2 "
        "/ sigma_L^2; each step x + (alpha_i / 2) * s + sqrt(alpha_i) * z with one new "
        "z = torch.randn(x.shape, generator=generator)."
    )


def _mode_variance(x: torch.Tensor) -> float:
    """Mean per-coordinate variance of the samples in the (5, 5) half-plane."""
    near = x[x.sum(dim=1) > 0]
    return near.var(dim=0).mean().item() if len(near) > 1 else float("nan")


# ---------------------------------------------------------------- 3.6 (debug) a seeded sampler


def _seeded(score_fn, x0, sigmas, step_size: float, n_steps: int, seed: int, *,
            restart: bool, power: int, per_level_seeds: bool = False) -> torch.Tensor:
    """The colleague's sampler and its half-fixed versions: the noise stream restarted at
    every level (from seed, or from seed + i at level i) or not, the step growing like
    sigma^power."""
    generator, x, last = torch.Generator().manual_seed(seed), x0.clone(), float(sigmas[-1])
    for level, sigma in enumerate(sigmas.tolist()):
        if restart:
            generator = torch.Generator().manual_seed(seed + level * per_level_seeds)
        alpha = step_size * (sigma / last) ** power
        for _ in range(n_steps):
            noise = torch.randn(x.shape, generator=generator)
            x = x + alpha / 2 * score_fn(x, sigma) + math.sqrt(alpha) * noise
    return x


#: 3.6's advice when the global random state changed.
_ONE_GENERATOR = ("Keep the interface the exercise asks for: one torch.Generator seeded with "
                  "seed, passed to every torch.randn(x.shape, generator=...).")


@exercise(
    "3.6",
    "your sampler draws exactly what Algorithm 1 draws from the same seed: the step grows like "
    "sigma^2, and one noise stream runs through all the levels.",
)
def exercise_3_6(annealed_langevin_seeded) -> None:
    """Check ``annealed_langevin_seeded(score_fn, x0 (N, 2), sigmas (L,), step_size,
    n_steps_each, seed)`` draw for draw against :func:`annealed_langevin_dynamics`."""
    from scorelab.langevin import annealed_langevin_dynamics

    n, n_steps = 1000, 20
    x0 = 8.0 * torch.rand(n, 2, generator=torch.Generator().manual_seed(5)) - 4.0  # (N, 2)
    # a ladder ending at sigma_L = 0.5 too: at sigma_L = 1, sigma_i^2 / sigma_L and sigma_i^2
    # are Algorithm 1's sigma_i^2 / sigma_L^2
    for seed, step_size, ladder in cases([(0, 0.1, (20.0, 1.0, 10)), (7, 0.05, (10.0, 0.5, 8))],
                                         [(123, 0.08, (20.0, 1.0, 10))]):
        _, sigmas, score_fn = _toy_problem(*ladder)
        call = f"annealed_langevin_seeded(..., step_size={step_size}, seed={seed})"
        given = x0.clone()
        with package_refused(annealed_langevin_dynamics, what="annealed_langevin_seeded"), \
                global_rng_untouched(call, advice=_ONE_GENERATOR):
            got = call_student(annealed_langevin_seeded, score_fn, given, sigmas.clone(),
                               step_size, n_steps, seed=seed, what="annealed_langevin_seeded")
        expect_untouched(given, x0, call=call)
        got = expect_tensor(got, what=call, shape=(n, 2))
        expected = annealed_langevin_dynamics(
            score_fn, x0, sigmas, step_size, n_steps,
            generator=torch.Generator().manual_seed(seed), progress=False)

        def variant(restart: bool, power: int) -> torch.Tensor:
            return _seeded(score_fn, x0, sigmas, step_size, n_steps, seed, restart=restart,
                           power=power)

        per_level = _seeded(score_fn, x0, sigmas, step_size, n_steps, seed, restart=True,
                            power=2, per_level_seeds=True)
        mutants = {
            f"{call} seeds every level with a seed of its own. That does give fresh noise, "
            "but the check compares draw for draw with one stream: make one generator from "
            "seed, before the loop over the levels.": per_level,
            f"{call} still behaves like your colleague's version: read its step against "
            "Algorithm 1 first, then measure what is left.": variant(True, 1),
            f"{call} has Algorithm 1's step now, but its noise differs from the reference "
            "sampler's after the first level. Compare the first noise draw of two levels: a "
            "seed fixes where a random stream starts.": variant(True, 2),
            f"{call} draws one noise stream now, but its step at level i grows like sigma_i; "
            "Algorithm 1's grows like sigma_i^2 (step_size * sigma_i^2 / sigma_L^2).": variant(
                False, 1),
            f"{call} divides by sigma_L, not by sigma_L^2: Algorithm 1's step is "
            "step_size * sigma_i^2 / sigma_L^2 (the two agree only when sigma_L = 1).":
                _seeded(score_fn, x0, sigmas, step_size * float(sigmas[-1]), n_steps, seed,
                        restart=False, power=2),
            f"{call} leaves out the division by sigma_L^2: Algorithm 1's step is "
            "step_size * sigma_i^2 / sigma_L^2 (the two agree only when sigma_L = 1).":
                _seeded(score_fn, x0, sigmas, step_size * float(sigmas[-1]) ** 2, n_steps, seed,
                        restart=False, power=2),
        }
        diagnose(got, expected, what=call, mutants=mutants, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- 3.1 (derive) the common ratio


def _neighbour_kl(gamma, dim):
    """KL(N(0, gamma^2 s^2 I_D) || N(0, s^2 I_D)) = D/2 (gamma^2 - 1 - 2 log gamma)."""
    return dim / 2 * (gamma**2 - 1 - 2 * math.log(gamma))


def _expect_neighbour_kl(neighbour_kl) -> None:
    def draw(seed: int, low: float, high: float, dims: list[int]) -> list[dict]:
        gammas = random_values(low, high, len(dims), seed=seed, log=True)
        return [{"gamma": g, "dim": d} for g, d in zip(gammas, dims)]

    ratios = {  # (seed, smallest and largest ratio, dimensions)
        "for ratios close to 1 (1.01 to 1.2)": (70, 1.01, 1.2, [1, 64, 3]),
        "for large ratios (1.5 to 5)": (71, 1.5, 5.0, [2, 3072, 3]),
    }
    points, group = by_regime({name: cases(draw(seed, *rest), draw(seed + 100, *rest))
                               for name, (seed, *rest) in ratios.items()})
    check_formula(
        neighbour_kl, _neighbour_kl, points, what="neighbour_kl", regimes=[group],
        mutants=[
            ("it is the KL the other way round, from level i + 1's law to level i's (or gamma "
             "taken as sigma_(i+1) / sigma_i): the samples that start level i + 1 come from "
             "level i, so KL(level i || level i + 1), with gamma = sigma_i / sigma_(i+1) > 1.",
             lambda gamma, dim: dim / 2 * (1 / gamma**2 - 1 + 2 * math.log(gamma))),
            ("it is twice the divergence: the KL of two Gaussians carries a factor 1/2 per "
             "dimension.", lambda gamma, dim: dim * (gamma**2 - 1 - 2 * math.log(gamma))),
            ("it has log(gamma) where the log of the variance ratio, 2 log(gamma), belongs.",
             lambda gamma, dim: dim / 2 * (gamma**2 - 1 - math.log(gamma))),
            ("it is one dimension's divergence: the D independent coordinates add theirs.",
             lambda gamma, dim: 0.5 * (gamma**2 - 1 - 2 * math.log(gamma))),
            ("it has the ratio of the standard deviations where the ratio of the variances, "
             "gamma^2, belongs.", lambda gamma, dim: dim / 2 * (gamma - 1 - math.log(gamma))),
            ("that is the leading order for gamma close to 1 only: keep the whole divergence.",
             lambda gamma, dim: dim * (gamma - 1) ** 2),
        ],
    )


def _expect_a_divergence(neighbour_kl) -> None:
    """Two properties of any KL divergence, said before the formula is compared."""
    same = to_float(call_student(neighbour_kl, 1.0, 4, what="neighbour_kl"),
                    what="neighbour_kl(gamma=1.0, dim=4)")
    if abs(same) > 1e-9:
        raise Mismatch(f"neighbour_kl(gamma=1.0, dim=4) = {same:.4g}: at gamma = 1 the two "
                       "levels are one law, and the divergence of a law from itself is 0.")
    for gamma in (1.1, 2.0):
        value = to_float(call_student(neighbour_kl, gamma, 4, what="neighbour_kl"),
                         what=f"neighbour_kl(gamma={gamma}, dim=4)")
        if value < 0:
            raise Mismatch(f"neighbour_kl(gamma={gamma}, dim=4) = {value:.4g}: a KL divergence "
                           "is never negative.")


@exercise(
    "3.1",
    "the divergence between neighbouring levels, D/2 (gamma^2 - 1 - 2 log gamma), depends on "
    "their ratio gamma alone, so a geometric ladder makes every hand-over equally hard; its "
    "common ratio is (sigma_max / sigma_min)^(1 / (L - 1)): L levels leave L - 1 gaps.",
)
def exercise_3_1(neighbour_kl, common_ratio) -> None:
    """Check ``neighbour_kl(gamma, dim) -> float``, the divergence between neighbouring levels
    of a one-point data set, then ``common_ratio(sigma_max, sigma_min, n_levels) -> float`` at
    random ladders."""
    _expect_a_divergence(neighbour_kl)
    _expect_neighbour_kl(neighbour_kl)

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
    from scorelab.noise import geometric_sigmas

    check_formula(
        without_package(common_ratio, geometric_sigmas, what="common_ratio"),
        _geometric_ratio,
        points,
        what="common_ratio",
        regimes=[group],
        mutants=[
            ("it takes the L-th root: count the factors between sigma_max and sigma_min, one "
             "for each gap between neighbouring levels.",
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
            ("it takes the (L + 1)-th root: count the factors between sigma_max and "
             "sigma_min, one for each gap between neighbouring levels.",
             lambda sigma_max, sigma_min, n_levels:
             (sigma_max / sigma_min) ** (1.0 / (n_levels + 1))),
            ("it is log(sigma_max / sigma_min) / (L - 1), a step of log sigma, not a ratio of "
             "sigmas.",
             lambda sigma_max, sigma_min, n_levels: math.log(sigma_max / sigma_min)
             / (n_levels - 1)),
        ],
    )


# ---------------------------------------------------------------- 3.4 (investigate) plain Langevin's share

#: 3.4: the reference runs with the student's seed, so a sampler given the generator agrees
#: exactly. One that draws from elsewhere is an independent run: from the line x + y = -0.1,
#: where every particle starts on the dividing line, two runs of 2,000 particles differ by
#: about 0.016 (sd; from the boxes far less); accept three of those.
SHARE_TOLERANCE = 0.05


def _share_starts():
    """Starting clouds of 2,000 particles: uniform on [-8, 8]^2, a lopsided box, a line across
    the gap between the modes (where a share counted at the start, without sampling, is 0);
    hidden, other boxes."""

    def box(x_low, x_high, seed):
        u = torch.rand(2000, 2, generator=torch.Generator().manual_seed(seed))
        return torch.stack([x_low + (x_high - x_low) * u[:, 0], 16 * u[:, 1] - 8], dim=1)

    def near_the_gap(seed):  # every point just on the (-5, -5) side of x_1 + x_2 = 0
        t = 12 * torch.rand(2000, generator=torch.Generator().manual_seed(seed)) - 6
        return torch.stack([t, -0.1 - t], dim=1)

    return cases(
        [("a uniform start on [-8, 8]^2", box(-8.0, 8.0, 5)),
         ("a start on [-8, 2] x [-8, 8]", box(-8.0, 2.0, 6)),
         ("a start on the line x_1 + x_2 = -0.1, across the gap", near_the_gap(8))],
        [("a hidden start on [-3, 8] x [-8, 8]", box(-3.0, 8.0, 7)),
         ("a hidden start on [-6, 4] x [-8, 8]", box(-6.0, 4.0, 9))],
    )


@exercise(
    "3.4",
    "plain Langevin keeps the share of the start in each basin, whatever the true weights, "
    "because the score near a mode ignores them; the basins meet on the line "
    "x_1 + x_2 = -0.141, and from the uniform box the start puts 1 - (16 + c)^2 / 512 = 0.509 "
    "of its mass on the heavy side of it: within sampling error, the share plain Langevin "
    "returns.",
)
def exercise_3_4(plain_langevin_share, basin_edge, predicted_share) -> None:
    """Check ``plain_langevin_share(x0 (N, 2), generator) -> float``, ``basin_edge``, the c of
    the line x_1 + x_2 = c between the two basins, and ``predicted_share``, the share of the
    uniform start on [-8, 8]^2 that lies on the (5, 5) side of that line."""
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
                                    generator=torch.Generator().manual_seed(8))
        expected = _weight_of_first_mode(samples)
        if abs(got - expected) <= SHARE_TOLERANCE:
            continue
        if got > 1.0 and abs(got / 100.0 - expected) <= SHARE_TOLERANCE:
            raise Mismatch(f"on {name} you report {got:g}, which looks like a percentage: return "
                           "the share, a number between 0 and 1.")
        if got > 1.0 and abs(got / len(x0) - expected) <= SHARE_TOLERANCE:
            raise Mismatch(
                f"on {name} you report {got:g}, a number of samples: return the share, that "
                f"number over the {len(x0)} samples."
            )
        if abs(got - (1 - expected)) <= SHARE_TOLERANCE:
            raise Mismatch(
                f"on {name} you report {got:.3f}, the share of the (-5, -5) mode; count the "
                "samples on the (5, 5) side (x_1 + x_2 > 0)."
            )
        if abs(got - 0.8) <= SHARE_TOLERANCE:
            raise Mismatch(
                f"on {name} you report {got:.3f}, the true weight: your particles cross between "
                "the modes, as exact samples of the mixture (or a step far above 0.1) would. "
                "Run plain Langevin (langevin_dynamics with mixture.score) from x0 with step "
                "0.1: at that step almost no particle crosses the gap."
            )
        raise Mismatch(
            f"on {name} you report {got:.3f}; plain Langevin from that start puts {expected:.3f} "
            "of the samples on the (5, 5) side. Run a few hundred steps of step 0.1 from x0 and "
            "count the samples with x_1 + x_2 > 0."
        )
    _expect_basin_edge(basin_edge)
    _expect_predicted_share(predicted_share)


#: The line x_1 + x_2 = c where the drift of the 0.8 / 0.2 mixture along the diagonal vanishes:
#: 4 exp(10 c) (10 - c) = 10 + c (responsibility ratio 4 exp(10 c) at that line).
BASIN_EDGE = -0.14145880086316454


#: 3.4: the equation for c has two more roots, c = +-10, at the modes themselves.
_ROOT_AT_A_MODE = ("that root is a mode, where the pull vanishes too; the edge is the root "
                   "between the modes, near 0.")


def _expect_basin_edge(basin_edge) -> None:
    expect_derived(
        answer_number(basin_edge, what="basin_edge"), BASIN_EDGE, call="basin_edge",
        wrong="is not where the drift along the diagonal vanishes",
        slips={
            0.0: "0 is the edge for equal weights; here the heavier mode's responsibility at "
            "the midpoint is 0.8, and its pull reaches past the midline.",
            -BASIN_EDGE: "the sign: the heavier (5, 5) mode's basin reaches past the midline, "
            "towards the lighter mode, so c is negative.",
            -math.log(4.0) / 10.0: "that is where the two responsibilities are equal; the "
            "drift along the diagonal vanishes where each is weighted by its pull, r_k times "
            "the distance to its mean: slightly further.",
            -math.log(4.0): "on the line x_1 + x_2 = c the log-ratio of the responsibilities "
            "is log 4 + 10 c (each mean is 5 along both axes): check the factor 10.",
            BASIN_EDGE / 2: "that is x_1 (= x_2) of the edge point (c/2, c/2); basin_edge is "
            "c = x_1 + x_2.",
            10.0: _ROOT_AT_A_MODE,
            -10.0: _ROOT_AT_A_MODE,
        },
        measured=(5e-3, "close, but not to three decimals: solve your equation for c more "
                        "precisely."),
        otherwise="write the score at the point (c/2, c/2), whose responsibilities depend on c "
        "only, set its component along (1, 1) to 0 and solve for c numerically (to three "
        "decimals).",
        tolerance=1e-3, absolute=True)


#: The share of the uniform start on [-8, 8]^2 above the line x_1 + x_2 = c: the sum of two
#: uniforms on [-8, 8] has a triangular law on [-16, 16], and P(S <= c) = (16 + c)^2 / 512 for
#: c <= 0. (The first-order twin (16 - c)^2 / 512 differs by c^2 / 256 = 8e-5; both pass.)
PREDICTED_SHARE = 1.0 - (16.0 + BASIN_EDGE) ** 2 / 512.0


def _expect_predicted_share(predicted_share) -> None:
    value = answer_number(predicted_share, what="predicted_share")
    if math.isfinite(value) and not 0.0 <= value <= 1.0:
        raise Mismatch(f"predicted_share = {value:g} is not a share: a share lies between 0 "
                       "and 1 (not a percentage, not a number of particles).")
    if abs(value - PREDICTED_SHARE) < 0.006 and abs(value - round(value, 2)) < 1e-9:
        raise Mismatch(f"predicted_share = {value:g}: close, but give it to three decimals (or "
                       "unrounded): the edge moves it by less than 0.01.")
    expect_derived(
        value, PREDICTED_SHARE,
        call="predicted_share", wrong="is not the start's share above the basin edge",
        slips={
            0.5: "that is the start's share above the line x_1 + x_2 = 0; the basins meet at "
            "your basin_edge, slightly on the light mode's side, so a little more of the start "
            "falls towards (5, 5).",
            0.8: "that is the true weight, which the particles would reach only by crossing "
            "between the modes: predict from where they start.",
            1.0 - PREDICTED_SHARE: "that is the share below the edge, the (-5, -5) basin's.",
            0.2: "that is the light mode's weight; predict from where the particles start.",
        },
        measured=(0.02, "close to what sampling gives, but predict it exactly: the share of "
                        "the uniform start above the line x_1 + x_2 = basin_edge, from the "
                        "law of x_1 + x_2, with no sampling."),
        otherwise="if every particle stays in the basin where it starts, the final share on "
        "the (5, 5) side is the share of the start above the line x_1 + x_2 = c. For a "
        "uniform start on [-8, 8]^2, what is the law of x_1 + x_2?",
        tolerance=2e-4, absolute=True)


# ---------------------------------------------------------------- hints (checks.hint("3.k"))

register_hints(
    "3.1",
    "The D coordinates are independent, so the divergence is D times that of one coordinate: "
    "two zero-mean Gaussians in one dimension. For the ladder: walking down it multiplies "
    "sigma by the same factor at every step; how many such steps take you from sigma_max to "
    "sigma_min?",
    "Write KL(p || q) = E_p[log p - log q] for p = N(0, a^2) and q = N(0, b^2): the log of the "
    "normalising constants gives log(b / a), and E_p[x^2] = a^2. Which of the two levels is p? "
    "For the ladder: the ratio of the first to the last level is a product of equal factors, "
    "one for each gap between neighbouring levels.",
    "Check the divergence where you know it: 0 at gamma = 1, positive on both sides, and about "
    "D (gamma - 1)^2 for gamma close to 1. For the ladder: the factor raised "
    "to the number of gaps gives sigma_max over sigma_min.",
)
register_hints(
    "3.2",
    "A geometric ladder is evenly spaced on a logarithmic axis. For the evenly spaced ladder: by "
    "exercise 3.1 a hand-over is as hard as its neighbours' ratio is large; where is that "
    "ratio largest when the gaps are all equal?",
    "Take logarithms: what kind of sequence are log sigma_1, ..., log sigma_L, and where "
    "does it start and end? Build that one, then undo the logarithm. For the evenly spaced "
    "ladder: with n levels the gap is (sigma_max - sigma_min) / (n - 1); require its hardest "
    "hand-over to have a ratio no larger than the geometric ladder's.",
    "Check your ladder: it starts at sigma_max and ends at sigma_min (not one step short), "
    "neighbours have the same ratio everywhere, and it is float32. torch.logspace counts in "
    "powers of 10 unless you give it a base. Check your count: build the evenly spaced ladder "
    "with it and with one level fewer, and compare their largest neighbour ratios with the "
    "geometric ladder's.",
)
register_hints(
    "3.3",
    "By exercise 2.2, v / tau^2 depends on the step and tau^2 through one combination only. "
    "What plays the role of tau^2 at level i?",
    "Level i's density is the data convolved with N(0, sigma_i^2 I), and independent Gaussians"
    " add their variances. Keep exercise 2.2's combination the same at every level.",
    "Checks to run on your rule: at the last level it gives eps; for data of a single point, "
    "whose variance is 0, it becomes Algorithm 1's rule; and for data spread far wider than "
    "every noise level the steps hardly change from level to level. Can you say why each must "
    "hold?",
)
register_hints(
    "3.4",
    "Run plain Langevin from the given start, then count. Before you run it, predict the share"
    " from the start alone.",
    "Close to (5, 5), compare the mixture's score with the score of N((5, 5), I) alone: how "
    "much does the weight 0.8 change it, and what then decides where a particle ends? For the "
    "edge: at the point (c/2, c/2), what is the ratio of the two responsibilities, and when do "
    "their pulls along (1, 1) balance? For the prediction: which law does x_1 + x_2 follow "
    "when x_1 and x_2 are independent and uniform on [-8, 8]?",
    "Checks to run: from the uniform box your share should be close to the share of the start "
    "already on the (5, 5) side, and it should barely move with twice the steps or half the "
    "step size. Your measurement should lie within its sampling error (about 0.007 for 5,000 "
    "particles) of your prediction; the prediction itself is checked to about three decimals, "
    "and it moves above 0.5 only because the edge is below 0.",
)
register_hints(
    "3.5",
    "Two nested loops: over the noise levels from the largest to the smallest, and over the "
    "Langevin steps within a level, each with that level's own step size and score.",
    "At which level does Algorithm 1 step with step_size itself, and how does its step alpha_i "
    "grow with sigma_i on the levels above? Which score does a step at level i follow, and "
    "what is one step, once alpha_i and that score are known (exercise 2.1)?",
    "The check compares draw for draw with the package's sampler. If it names no mistake, "
    "check: every level runs once, from the largest sigma to the smallest, with exactly "
    "n_steps_each steps; the step at the last level is step_size itself; and every single step "
    "draws new noise from the generator (not one draw per level, and no other draws).",
)
register_hints(
    "3.6",
    "Read the step first and compare it with Algorithm 1's alpha_i. Once it is right, measure "
    "before you read further: the weight over several seeds, against the package's sampler, "
    "with its standard error.",
    "A seed fixes where a random stream starts. Print the first noise draw of the first two "
    "levels: are they different numbers?",
    "Checks to run: print a few numbers of the first noise draw of every level; then run the "
    "package's annealed_langevin_dynamics on the same inputs with a generator seeded with seed, "
    "and compare: the two must agree at every level, not only the first. Your function must "
    "also leave torch's global random state as it found it.",
)
