"""Checks for the exercises of chapter 7: NCSNv2's overlap ratio, one inpainting step,
Technique 4 by simulation, an inpainting loop that forgets the known pixels' noise, a
Gaussian's conditional law, and how far Algorithm 2 is from it.

The inpainting checks run the student's code on a *Gaussian image model*: 2x2 "images"
drawn from a correlated Gaussian, whose perturbed score is exact at every noise level. It is
cheap, and it records every image the sampler asks it about, so a check can see what the
score network would have been shown.
"""

from __future__ import annotations

import functools
import math

import torch

from scorelab.checks._core import (
    Mismatch,
    answer_number,
    bisect,
    call_student,
    cases,
    diagnose,
    FormulaMatches,
    exercise,
    expect_derived,
    expect_finite,
    expect_given_noise,
    expect_tensor,
    expect_untouched,
    global_rng_untouched,
    is_close,
    package_refused,
    refuse_calls,
    register_hints,
    to_float,
    without_package,
)

# ----------------------------------------------------------------------------- 7.1 (derive)

register_hints(
    "7.1",
    "The two arguments differ by 6 gamma, which is more than 6. What is Phi(6), to how many "
    "decimals? Which of the two terms can still move?",
    "Where does Phi take the value 1/2? What does that ask of the second term's argument, and "
    "which equation in gamma follows?",
    "Check your gamma: it is above 1 and falls towards 1 as D grows; put it back into the full"
    " criterion with the package's level_overlap: for D = 64 and for D = 3 x 32 x 32 it must "
    "give 1/2 to several digits, and the approximation must get better as D grows.",
)


def _gamma_half(dim: int) -> float:
    """The gamma with level_overlap(gamma, dim) = 1/2, by bisection (the truth, no formula)."""
    from scorelab.noise import level_overlap

    # overlap falls from 0.997 to ~0 on this bracket
    return bisect(lambda gamma: level_overlap(gamma, dim) > 0.5, 1.0 + 1e-12, 50.0, 200)


TOLERANCE_71 = 1e-4  # relative error of gamma - 1


@exercise(
    "7.1",
    "your gamma_half(D) is the ratio at which NCSNv2's overlap criterion equals 1/2, for small "
    "and large images alike.",
)
def exercise_7_1(gamma_half) -> None:
    """Check ``gamma_half(D) -> float``: the geometric ratio with C(gamma, D) = 1/2."""
    from scorelab.noise import level_overlap

    dims = cases(public=[16, 64, 784, 3072, 65_536], hidden=[10, 200, 12_288, 196_608])
    errors: dict[int, float] = {}  # relative error of gamma - 1, by D
    examples: dict[int, str] = {}
    refused = (level_overlap, _gamma_half)
    message = ("your gamma_half solves the full criterion numerically (it calls the package's "
               "level_overlap): that is what the check compares with. The exercise asks for "
               "the closed form that the approximation gives: derive it and write it down.")
    for dim in dims:
        with refuse_calls(refused, message):
            answer = call_student(gamma_half, dim, what="gamma_half")
        got = to_float(answer, what=f"gamma_half({dim})")
        expected = _gamma_half(dim)
        if not math.isfinite(got):
            raise Mismatch(f"gamma_half({dim}) = {got}: not a finite number.")
        errors[dim] = (got - expected) / (expected - 1.0)
        examples[dim] = f"gamma_half({dim}) = {got:.9g}, expected {expected:.9g}"
    # 1e-4 of gamma - 1 accepts float32 arithmetic (gamma - 1 is as small as 0.005 here)
    wrong = sorted(dim for dim, error in errors.items() if abs(error) > TOLERANCE_71)
    if not wrong:
        return
    example = examples[wrong[0]]  # the smallest D that fails
    below = [dim for dim, error in errors.items() if error <= -1.0]
    if below:
        raise Mismatch(
            f"gamma_half({below[0]}) is not above 1; the ratio sigma_(i-1) / sigma_i of a "
            f"decreasing ladder is. {examples[below[0]]}."
        )
    small = [abs(e) for d, e in errors.items() if d < 1000]
    large = [abs(e) for d, e in errors.items() if d >= 1000]
    if all(e <= TOLERANCE_71 for e in large):
        raise Mismatch(f"right for large images (D >= 1,000) but not for small ones: {example}.")
    if all(e <= TOLERANCE_71 for e in small):
        raise Mismatch(f"right for small images (D < 1,000) but not for large ones: {example}.")
    large_ratios = [1.0 + e for d, e in errors.items() if d >= 1000]
    if all(abs(r - math.sqrt(2)) < 0.1 or abs(r - 1 / math.sqrt(2)) < 0.05 for r in large_ratios):
        raise Mismatch(
            f"gamma - 1 is off by a factor of about sqrt(2) for large D: the criterion has "
            f"sqrt(2 D), not sqrt(D). {example}."
        )
    if max(large) < 0.1 and min(small) > 1.5 * max(large):
        raise Mismatch(
            f"close for large images (within {max(large):.1%} in gamma - 1) but wrong for small "
            f"ones (up to {max(small):.0%} off): an approximation that only holds as D grows? "
            f"Keep every gamma of the criterion, the one in 3 gamma too. {example}."
        )
    raise Mismatch(f"wrong for small and large images alike: {example}.")


# ---------------------------------------------------------------------- Gaussian image model


class GaussianImages:
    """N(mu, Sigma) on (1, 2, 2) images, with the exact score of its perturbed densities.

    ``mu`` (4,) and ``cov`` (4, 4) are float64, the pixels flattened row by row. Unless
    ``record`` is False, ``score(x, sigma)`` records (sigma, a copy of x) for every call, so a
    check can see which images the sampler asked about.
    """

    def __init__(self, sigmas=(1.0, 0.5, 0.25, 0.12, 0.06), step_size=0.01, n_steps_each=5, *,
                 record: bool = True):
        self.sigmas = torch.tensor(sigmas)
        self.step_size, self.n_steps_each, self.record = step_size, n_steps_each, record
        self.mu = torch.tensor([0.5, 0.3, 0.6, 0.4], dtype=torch.float64)
        root = torch.tensor([[1.0, 0.8, 0.6, 0.4], [0.0, 0.6, 0.3, 0.2], [0.0, 0.0, 0.7, 0.3],
                             [0.0, 0.0, 0.0, 0.5]], dtype=torch.float64)
        self.cov = 0.05 * root.T @ root  # (4, 4)
        self.calls: list[tuple[float, torch.Tensor]] = []

    def top_row_known(self, n: int, generator: torch.Generator | None = None):
        """n images (n, 1, 2, 2) whose top row is an exact draw of the model's top row,
        conditioned on lying in [0, 1], and whose bottom row, to be filled in, shows 0.5; and
        the mask (2, 2) of the known top row.

        Images lie in [0, 1], so draws whose top row leaves it (about 10 %) are skipped. That
        depends on the top row alone, so the law of the bottom row *given* the top row is
        unchanged (the top rows' own spread shrinks: ``_plateau_parts``, which assumes the
        untruncated law, differs by 0.05 % from the truncated one).
        """
        draws = torch.randn(3 * n, 4, dtype=torch.float64, generator=generator)
        flat = self.mu + draws @ torch.linalg.cholesky(self.cov).T  # (3n, 4), exact samples
        flat = flat[((flat[:, :2] >= 0) & (flat[:, :2] <= 1)).all(dim=1)][:n]
        flat[:, 2:] = 0.5
        return flat.float().reshape(n, 1, 2, 2), torch.tensor([[1.0, 1.0], [0.0, 0.0]])

    def score(self, x: torch.Tensor, sigma) -> torch.Tensor:
        sigma = float(sigma)
        if self.record:
            self.calls.append((sigma, x.detach().clone()))
        flat = x.reshape(len(x), 4).double() - self.mu  # (N, 4)
        precision = torch.linalg.inv(self.cov + sigma**2 * torch.eye(4, dtype=torch.float64))
        return (-flat @ precision).reshape(x.shape).to(x.dtype)


# -------------------------------------------------------------------------- 7.2 (implement)

register_hints(
    "7.2",
    "Write log p(x_u | x_k) with the definition of a conditional density: which of its terms "
    "depends on x_u?",
    "The normaliser p(x_k) does not depend on x_u: what is left of the gradient? The step is "
    "chapter 3's update with this level's step alpha for the pixels that are free to move; "
    "moving every pixel and then putting y back into the known ones does the same.",
    "Checks to run: with a zero score and z = 0 your step must return x exactly where the mask "
    "is 0 and y where it is 1; with one mask for the whole batch (shape (1, 1, H, W), as "
    "keep_rows gives, or (1, H, W)) the result must still have x's shape; and x itself must be "
    "unchanged afterwards.",
)


def _reference_step(score_fn, x, y, mask, sigma, alpha, z):
    moved = x + 0.5 * alpha * score_fn(x, sigma) + math.sqrt(alpha) * z
    return torch.where(mask.bool(), y, moved)


def _step_mutants(model, x, y, mask, sigma, alpha, z, what) -> dict[str, torch.Tensor]:
    """7.2's known mistakes, each the result of one inpainting step done that wrong way from
    the state ``x`` (the step's argument, or that state with y put in first)."""
    score = model.score(x, sigma)
    moved = x + 0.5 * alpha * score + math.sqrt(alpha) * z
    known = mask.bool().expand(x.shape)
    return {
        f"{what}: the known pixels were not put back; after the step, set them to y "
        "(where mask is 1).": moved,
        f"{what}: the known pixels keep x's values; after the step they must hold y, the "
        "observed pixels with this level's noise.": torch.where(known, x, moved),
        f"{what}: the mask is used the wrong way round: 1 marks a known pixel (take y there).": torch.where(
            ~known, y, moved
        ),
        f"{what}: the step is x + alpha s + sqrt(2 alpha) z, the authors' code; this course "
        "writes x + (alpha / 2) s + sqrt(alpha) z.": torch.where(
            known, y, x + alpha * score + math.sqrt(2 * alpha) * z
        ),
        f"{what}: the score term has the wrong sign: the step climbs the density, "
        "x + (alpha / 2) s + sqrt(alpha) z.": torch.where(
            known, y, x - 0.5 * alpha * score + math.sqrt(alpha) * z
        ),
        f"{what}: the noise term is missing: add sqrt(alpha) z.": torch.where(
            known, y, x + 0.5 * alpha * score
        ),
        f"{what}: the noise is scaled by alpha; it is sqrt(alpha) z.": torch.where(
            known, y, x + 0.5 * alpha * score + alpha * z
        ),
        f"{what}: the score term lacks its 1/2: the move is x + (alpha / 2) s + sqrt(alpha) z.":
            torch.where(known, y, x + alpha * score + math.sqrt(alpha) * z),
        f"{what}: the score is divided by sigma: score_fn(x, sigma) already returns the score "
        "of level sigma, not sigma times it.":
            torch.where(known, y, x + 0.5 * alpha * score / sigma + math.sqrt(alpha) * z),
        f"{what}: the known pixels hold y plus more noise? y already carries this level's "
        "noise: copy it as it is.": torch.where(known, y + sigma * z, moved),
        f"{what}: the result is clamped to [0, 1]; within a level the pixels carry noise "
        "and must not be clamped (the sampler clamps once, at the end).":
            torch.where(known, y, moved).clamp(0, 1),
    }


@exercise(
    "7.2",
    "your inpainting_step moves the unknown pixels by their part of the score and keeps the "
    "known ones at y, the observed pixels with this level's noise.",
)
def exercise_7_2(inpainting_step) -> None:
    """Check ``inpainting_step(score_fn, x, y, mask, sigma, alpha, z) -> Tensor like x``."""
    model = GaussianImages()
    generator = torch.Generator().manual_seed(72)
    settings = cases(public=[(0.06, 3e-4), (0.5, 0.02)], hidden=[(1.0, 0.05), (0.12, 1e-3)])
    for k, (sigma, alpha) in enumerate(settings):
        images = torch.rand(6, 1, 2, 2, generator=generator)
        # a chain's state: the images under noise, so that many pixels lie outside [0, 1]
        x = images + max(sigma, 0.3) * torch.randn(6, 1, 2, 2, generator=generator)
        y = images + sigma * torch.randn(6, 1, 2, 2, generator=generator)
        mask = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).expand(6, 1, 2, 2)
        if k % 2 == 0:  # one mask for the whole batch: (1, 1, H, W) as keep_rows gives, (1, H, W)
            mask = mask[:1] if k == 0 else mask[0]
        z = torch.randn(6, 1, 2, 2, generator=generator)
        what = f"inpainting_step at sigma={sigma}, alpha={alpha}, mask of shape {tuple(mask.shape)}"
        given = {"x": x.clone(), "y": y.clone(), "mask": mask.clone(), "z": z.clone()}
        try:
            got = call_student(
                inpainting_step, model.score, given["x"], given["y"], given["mask"], sigma,
                alpha, given["z"], what="inpainting_step",
            )
        except (IndexError, RuntimeError, TypeError) as error:
            if isinstance(error, NotImplementedError) or mask.shape == x.shape:
                raise  # not done yet, or no whole-batch mask to blame
            raise Mismatch(
                f"inpainting_step raised {type(error).__name__} ({error}) with one mask for the "
                f"whole batch, of shape {tuple(mask.shape)} for x of shape {tuple(x.shape)}, as "
                "keep_rows gives: make it boolean and broadcast it to x's shape first "
                "(mask.bool().expand(x.shape)), or use torch.where(mask.bool(), ...), which "
                "broadcasts."
            ) from error
        for name, original in (("x", x), ("y", y), ("mask", mask), ("z", z)):
            expect_untouched(given[name], original, call=f"inpainting_step (its argument {name})")
        got = expect_tensor(got, what=what, shape=tuple(x.shape))
        expect_finite(got, what=what)
        # x as given, or with y put in first (the authors' code): the two differ only at a
        # level's first step, and both are Algorithm 2
        starts = (x, torch.where(mask.bool().expand(x.shape), y, x))
        expected = [_reference_step(model.score, start, y, mask, sigma, alpha, z)
                    for start in starts]
        expect_given_noise(
            lambda noise: call_student(inpainting_step, model.score, x.clone(), y.clone(),
                                       mask.clone(), sigma, alpha, noise, what="inpainting_step"),
            z, got.detach(), what="inpainting_step",
            without_noise=torch.where(mask.bool(), y, x + 0.5 * alpha * model.score(x, sigma)))
        if any(is_close(got, reference) for reference in expected):
            continue
        if is_close(got, _reference_step(model.score, starts[1], y, torch.zeros_like(x), sigma,
                                         alpha, z)):
            raise Mismatch(f"{what}: the known pixels were put back before the step, not after "
                           "it: the move changes them too.")
        for start in starts:
            mutants = _step_mutants(model, start, y, mask, sigma, alpha, z, what)
            for explanation, value in mutants.items():
                if is_close(got, value):
                    raise Mismatch(explanation)
        diagnose(got.detach(), expected[0], what=what)


# ---------------------------------------------------------------------- 7.3 (investigate)

register_hints(
    "7.3",
    "With a single training point the score at level i is exact and linear, so only the "
    "variance of the samples matters.",
    "Does the ratio depend on sigma_i? Work it out for one step, then pick the simplest "
    "sigma_i. The samples start at level i - 1's variance; which step size does level i use?",
    "Check your measurement before you scan: with a tiny eps the chain hardly moves and the "
    "ratio stays near gamma^2; two calls with generators seeded alike agree. The candidates "
    "span orders of magnitude below 2 sigma_L^2: space them evenly in log eps, then refine "
    "near the best.",
)

def _mixed_ratio(step_size, gamma, n_steps, sigma_min, drift, noise) -> float | None:
    """Eq. 4's ratio for the update x + drift alpha s + sqrt(noise alpha) z (the course's is
    drift 1/2, noise 1), or None where that chain does not settle."""
    alpha = step_size / sigma_min**2  # at sigma_i = 1
    rho = 1.0 - drift * alpha
    if not abs(rho) < 1.0:
        return None
    decay = rho ** (2 * n_steps)
    return gamma**2 * decay + noise * alpha * (1.0 - decay) / (1.0 - rho**2)


SHIPPED_GAMMA = 500.0 ** (1.0 / 21.0)  # the shipped digits ladder: sigma 5 -> 0.01, L = 22
SCAN_STEPS = 30  # the scan's steps a level: three times the shipped 10, whose step chapter 7 quotes


@exercise(
    "7.3",
    "your simulation reproduces NCSNv2's Eq. 4, and your step size brings it as close to 1 as "
    "the rule's.",
)
def exercise_7_3(measured_variance_ratio, best_step_size) -> None:
    """Check ``measured_variance_ratio(step_size, gamma, n_steps_each, sigma_min, *, n, dim,
    generator) -> float`` against Eq. 4, and the step the student chose for the shipped ladder."""
    from scorelab.noise import langevin_variance_ratio, step_size_for_ladder

    measured_variance_ratio = without_package(
        measured_variance_ratio, langevin_variance_ratio, step_size_for_ladder,
        what="measured_variance_ratio")
    n, dim = 2000, 64
    # the sample variance of n * dim Gaussian draws has relative standard error sqrt(2 / (n dim))
    tolerance = 5.0 * math.sqrt(2.0 / (n * dim))
    settings = cases(  # (step size, gamma, T, sigma_L): the shipped ladder, then others
        public=[(3e-5, SHIPPED_GAMMA, 10, 0.01), (1.2e-4, SHIPPED_GAMMA, 10, 0.01),
                (2e-3, 2.0, 2, 0.1)],
        hidden=[(1e-5, 1.05, 5, 0.01), (5e-5, 2.0, 20, 0.01), (0.01, 1.5, 3, 0.2)],
    )
    on_the_formula = FormulaMatches("Eq. 4", advice=(
        "The exercise asks you to measure the ratio by running the chain, then to compare with "
        "Eq. 4."))

    def measure(step_size, gamma, n_steps, sigma_min, call):
        with global_rng_untouched("measured_variance_ratio"):
            answer = call_student(
                measured_variance_ratio, step_size, gamma, n_steps, sigma_min, n=n, dim=dim,
                generator=torch.Generator().manual_seed(7), what="measured_variance_ratio",
            )
        return to_float(answer, what=call)

    for step_size, gamma, n_steps, sigma_min in settings:
        call = (f"measured_variance_ratio({step_size:g}, gamma={gamma:.4g}, T={n_steps}, "
                f"sigma_min={sigma_min:g})")
        got = measure(step_size, gamma, n_steps, sigma_min, call)
        if measure(step_size, gamma, n_steps, sigma_min, call) != got:
            raise Mismatch(
                f"two calls of {call} with generators seeded alike gave different ratios: draw "
                "every random number from the generator you are given, so that a measurement "
                "can be repeated."
            )
        expected = langevin_variance_ratio(step_size, gamma, n_steps, sigma_min)
        on_the_formula.record(got, expected, where=call)
        if not math.isfinite(got) or abs(got / expected - 1.0) > tolerance:
            known_mistakes = {  # value -> explanation; the nearest within tolerance is named
                langevin_variance_ratio(step_size, gamma**2, n_steps, sigma_min):
                " That is Eq. 4 for a start of variance gamma^4 sigma_i^2: scale standard "
                "normal draws by gamma sigma_i, the start's standard deviation, not by its "
                "variance.",
                gamma**2: " That is gamma^2, the ratio at the start: did the chain move at all? "
                "(With alpha = eps instead of eps sigma_i^2 / sigma_L^2 it barely does.)",
                math.sqrt(expected): " That is the square root of Eq. 4: return a variance, not "
                "a standard deviation.",
                langevin_variance_ratio(step_size, 1.0 + 1e-12, n_steps, sigma_min):
                " That is Eq. 4 for a start at level i's own variance: the chain starts from "
                "the previous level, N(0, gamma^2 sigma_i^2 I).",
                **{langevin_variance_ratio(step_size, gamma, t, sigma_min):
                   f" That is Eq. 4 for one step fewer or more: run T = {n_steps} steps."
                   for t in (n_steps - 1, n_steps + 1)},
                **{_mixed_ratio(step_size, gamma, n_steps, sigma_min, drift, noise): (
                    f" That mixes the two conventions ({form}): the drift's alpha / 2 goes "
                    "with the noise's sqrt(alpha) (or alpha with sqrt(2 alpha)).")
                   for drift, noise, form in ((1.0, 1.0, "x + alpha s + sqrt(alpha) z"),
                                              (0.5, 2.0, "x + alpha/2 s + sqrt(2 alpha) z"))
                   if _mixed_ratio(step_size, gamma, n_steps, sigma_min, drift, noise)},
            }
            if step_size < sigma_min**2:  # twice the step still below 2 sigma_L^2: Eq. 4 holds
                known_mistakes[langevin_variance_ratio(2 * step_size, gamma, n_steps, sigma_min)] = (
                    " That is Eq. 4 for twice the step: x + alpha s + sqrt(2 alpha) z is the "
                    "authors' convention; this course's step is x + (alpha / 2) s + sqrt(alpha) z.")
            close = [value for value in known_mistakes
                     if math.isfinite(got) and abs(got - value) < tolerance * value]
            hint = known_mistakes[min(close, key=lambda v: abs(got - v))] if close else ""
            raise Mismatch(
                f"{call} = {got:.4f}, but Eq. 4 gives {expected:.4f} (a simulation with "
                f"{n} x {dim} draws should land within {tolerance:.1%}).{hint}"
            )
    chosen = answer_number(best_step_size, what="best_step_size")
    rule = step_size_for_ladder(SHIPPED_GAMMA, SCAN_STEPS, 0.01)
    best = langevin_variance_ratio(rule, SHIPPED_GAMMA, SCAN_STEPS, 0.01)
    if not 0 < chosen < 2e-4:
        raise Mismatch(
            f"best_step_size = {chosen:g} is outside (0, 2 sigma_L^2) = (0, 2e-4), the range "
            "searched here: beyond it each step overshoots and flips the sign of x (and beyond "
            "4 sigma_L^2 the chain diverges)."
        )
    if abs(chosen / rule - 1.0) < 1e-6:
        raise Mismatch(
            f"best_step_size = {chosen:.6g} is the package's step_size_for_ladder to six "
            "digits: the exercise asks for the step your own scan of measured_variance_ratio "
            "finds (a scan of noisy measurements lands near the rule, not on it)."
        )
    reached = langevin_variance_ratio(chosen, SHIPPED_GAMMA, SCAN_STEPS, 0.01)
    if reached - best <= tolerance * best:
        return
    rule_10 = step_size_for_ladder(SHIPPED_GAMMA, 10, 0.01)
    best_10 = langevin_variance_ratio(rule_10, SHIPPED_GAMMA, 10, 0.01)
    if langevin_variance_ratio(chosen, SHIPPED_GAMMA, 10, 0.01) - best_10 <= tolerance * best_10:
        raise Mismatch(
            f"best_step_size = {chosen:.3g} is a best step at T = 10 steps a level (chapter 7 "
            f"quotes 3.1e-5); the scan asks for T = {SCAN_STEPS}."
        )
    if abs(chosen / (rule / 2) - 1.0) < 0.1:
        raise Mismatch(
            f"best_step_size = {chosen:.3g} is about half the best step: that is the authors' "
            "step_lr, in their convention x + step s + sqrt(2 step) z; this course's step size "
            "is twice it."
        )
    direction = "small" if chosen < rule else "large"
    raise Mismatch(
        f"best_step_size = {chosen:.3g} leaves Eq. 4 at {reached:.3f} with T = {SCAN_STEPS} "
        f"steps a level; the best step reaches {best:.3f} (your step is too {direction}; a "
        "finer grid near the minimum helps)."
    )


# ---------------------------------------------------------------------------- 7.4 (debug)

register_hints(
    "7.4",
    "Before you read the loop: write an image the network saw at level sigma_i as clean data "
    "plus noise. How far does one of its pixels lie from the clean pixel, in units of sigma_i,"
    " spread over many pixels? Then: what does the loop show the score in the known pixels?",
    "Print, level by level, how far the known pixels the score is shown lie from the observed "
    "images, in units of sigma_i (noise_seen does it). What should that read, and what must "
    "the loop add, and when, to make it so?",
    "Check your fix with noise_seen: every level should now read the spread you predicted (the"
    " buggy loop reads much less), and the known pixels of the result must equal the observed "
    "ones exactly.",
)


def known_pixel_noise(calls, images: torch.Tensor, known: torch.Tensor) -> dict[float, float]:
    """Per level: the std of (x - images) / sigma over the known pixels the score was shown.

    Each level's first call is left out (it still shows the previous level's known pixels).
    Algorithm 2 gives about 1 at every level.
    """
    levels: dict[float, list[torch.Tensor]] = {}
    for sigma, x in calls:
        levels.setdefault(float(f"{sigma:.6g}"), []).append(x)  # 0.119999997 -> 0.12
    noise = {}
    for sigma, seen in levels.items():
        if len(seen) < 2:
            continue
        residuals = torch.cat([((x - images)[known] / sigma).flatten() for x in seen[1:]])
        noise[sigma] = residuals.double().std().item()
    return noise


def _expect_spread_prediction(spread_should_be) -> None:
    """The spread of (seen - observed) / sigma_i on the known pixels, for images like the
    training images x + sigma_i z: 1 at every level."""
    expect_derived(
        answer_number(spread_should_be, what="spread_should_be"), 1.0, call="spread_should_be",
        wrong="is not the spread the network saw in training",
        slips={0.0: "that is the spread of clean known pixels, images the network never saw: "
                    "in training every pixel of x + sigma_i z, the known ones too, carries the "
                    "level's noise."},
        measured=(0.15, "close: that looks like a measured spread; the prediction follows "
                        "exactly from how the training images were made."),
        otherwise="in training the network saw x + sigma_i z, with noise of standard deviation "
        "sigma_i in every pixel; in units of sigma_i, what is that spread?")


@exercise(
    "7.4",
    "the score should see known pixels with a spread of 1 (in units of sigma_i) at every "
    "level; they now carry each level's noise, so the network sees the images it was trained "
    "on, and they come out exactly as observed.",
)
def exercise_7_4(spread_should_be, fixed_inpaint) -> None:
    """Check the prediction ``spread_should_be`` (a number) and the student's fix of the
    notebook's ``buggy_inpaint(score_fn, sigmas, images, mask, step_size, n_steps_each,
    generator=None)`` (same signature) on the Gaussian image model."""
    from scorelab.ncsn.inpaint import inpaint

    _expect_spread_prediction(spread_should_be)

    fixed_inpaint = without_package(fixed_inpaint, inpaint, what="fixed_inpaint")
    # sqrt(alpha_i) = sqrt(eps) sigma_i / sigma_L is far from sigma_i at these steps, so noise
    # scaled by sqrt(alpha) instead of sigma shows
    settings = cases(public=[((1.0, 0.5, 0.25, 0.12, 0.06), 0.001)],
                     hidden=[((2.0, 0.8, 0.3, 0.1), 0.002)])
    for sigmas, step_size in settings:
        model = GaussianImages(sigmas)
        images = torch.rand(400, 1, 2, 2, generator=torch.Generator().manual_seed(74))
        mask = torch.tensor([[1.0, 1.0], [0.0, 0.0]])  # the top row known
        out = call_student(
            fixed_inpaint, model.score, list(sigmas), images.clone(), mask.clone(), step_size, 4,
            generator=torch.Generator().manual_seed(0), what="fixed_inpaint",
        )
        out = expect_tensor(out, what="fixed_inpaint(...)", shape=tuple(images.shape))
        expect_finite(out, what="fixed_inpaint(...)")
        known = mask.bool().expand(images.shape)
        if not torch.equal(out[known], images[known]):
            raise Mismatch(
                "the known pixels of the result differ from the observed images: put them back "
                "exactly after the last step (they still carry the smallest level's noise)."
            )
        _expect_ladder_levels(model.calls, sigmas)
        # 800 known pixels a call, 3 calls a level: the std of ~2,400 standard normal draws
        # has a standard error of about 1.5%; accept 0.85-1.15.
        clamped = all(0.0 <= x.min() and x.max() <= 1.0 for _, x in model.calls)
        for sigma, std in known_pixel_noise(model.calls, images, known).items():
            if abs(std - 1.0) <= 0.15:
                continue
            seen = (f"at level sigma = {sigma:g} the score was shown known pixels with noise of "
                    f"std {std * sigma:.3g}, but the network was trained on images with noise "
                    f"{sigma:g} in every pixel")
            if std > 1.0:
                raise Mismatch(f"{seen}: more noise than that. Add exactly this level's noise, "
                               "sigma_i z~ (not another level's, nor its square root), once.")
            if clamped and std > 0.2:
                raise Mismatch(f"{seen}. Every image the score saw lies in [0, 1]: clamping x "
                               "inside the loop cuts the noise off the known pixels. Clamp "
                               "once, after the last level.")
            if std > 0.05:
                raise Mismatch(f"{seen}: less noise than that. Is it sigma_i times a standard "
                               "normal draw (not sigma_i^2, sqrt(alpha_i) or sigma_L)?")
            raise Mismatch(f"{seen}. Add that level's noise to the known pixels.")
        if len(model.calls) < len(sigmas) * 4:
            raise Mismatch(
                f"the score was called {len(model.calls)} times; {len(sigmas)} levels of 4 steps "
                "need at least one call a step."
            )
    _expect_conditional(fixed_inpaint)


def _expect_ladder_levels(calls, sigmas) -> None:
    """Mismatch unless the score was asked about every level of the ladder, and only those."""
    def on(sigma: float, levels) -> bool:  # float32 ladders hold 0.12 as 0.119999997
        return any(math.isclose(sigma, level, rel_tol=1e-6) for level in levels)

    ladder = [float(sigma) for sigma in sigmas]
    called = sorted({float(sigma) for sigma, _ in calls}, reverse=True)
    odd_levels = [sigma for sigma in called if not on(sigma, ladder)]
    if odd_levels:
        odd = ", ".join(f"{sigma:g}" for sigma in odd_levels)
        raise Mismatch(
            f"the score was called at sigma = {odd}, not a level of the ladder "
            f"{tuple(float(s) for s in sigmas)}: the network is conditioned on the noise level "
            "sigma_i of the loop, not on the step or the variance."
        )
    if not all(on(sigma, called) for sigma in ladder):
        raise Mismatch(
            f"the score was called only at sigma = {[round(s, 6) for s in called]}: at each level "
            "of the loop, ask it about that level, sigma_i."
        )


def _conditional_error(inpaint_fn, what: str) -> tuple[float, float]:
    """Run ``inpaint_fn`` (the student's signature; None: the package's ``inpaint``) on 4,000
    images of the Gaussian model with their top row known (30 steps a level, step 5e-4): the
    mean and the mean square of (filled-in bottom row - its exact conditional mean given the
    top row), over both unknown pixels."""
    from scorelab.ncsn.inpaint import inpaint

    model = GaussianImages()
    images, mask = model.top_row_known(4000, generator=torch.Generator().manual_seed(740))
    generator = torch.Generator().manual_seed(1)
    if inpaint_fn is None:  # Algorithm 2, with the final denoising step and the clamp
        out = inpaint(model, images, mask, generator=generator, step_size=5e-4, n_steps_each=30)
    else:
        out = call_student(inpaint_fn, model.score, model.sigmas.tolist(), images.clone(),
                           mask, 5e-4, 30, generator=generator, what=what)
    out = expect_tensor(out, what=f"{what}(...)", shape=tuple(images.shape))
    residual = _bottom_row_residuals(model, out, given=images)  # (n, 2)
    return residual.mean().item(), residual.square().mean().item()


def _expect_conditional(fixed_inpaint) -> None:
    """Mismatch unless the filled-in pixels follow Algorithm 2's conditional distribution.

    Over 4,000 images Algorithm 2's mean square error from the exact conditional mean varies
    by about 2 % between seeds and its mean offset by 0.004: accept 15 % and 0.02."""
    offset, error = _conditional_error(fixed_inpaint, "fixed_inpaint")
    ref_offset, ref_error = _conditional_error(None, "inpaint")
    if abs(error / ref_error - 1.0) <= 0.15 and abs(offset - ref_offset) <= 0.02:
        return
    found = (f"the filled-in pixels lie {error:.4f} (mean square) from their exact conditional "
             f"mean given the known ones, offset by {offset:+.3f} on average; Algorithm 2 gives "
             f"{ref_error:.4f} and {ref_offset:+.3f}")
    if error < 0.5 * ref_error:
        cause = ("they vary too little from image to image: does each Langevin step add its "
                 "noise sqrt(alpha_i) z?")
    else:
        cause = ("the known pixels are right, so look at the move of the others: the sign of "
                 "the score term, the step alpha_i = step_size sigma_i^2 / sigma_L^2 with half "
                 "of it on the score, the noise sqrt(alpha_i) z, and the final denoising step.")
    raise Mismatch(f"{found} (on the Gaussian image model, 30 steps a level): {cause}")


# ------------------------------------------------------------------------------ 7.5 (derive)

register_hints(
    "7.5",
    "Split x into the known block k and the unknown block u. With x_k fixed, the exponent of "
    "the joint density is a quadratic in x_u alone, so the conditional law is Gaussian: "
    "completing the square in x_u gives its mean and covariance.",
    "Write the precision matrix Lambda = Sigma^-1 in the same blocks and expand the exponent: "
    "which block of Lambda multiplies the part quadratic in x_u, and which the part linear in "
    "it? Complete the square in Lambda's blocks first, then turn them into Sigma's with the "
    "inverse of a 2 x 2 block matrix.",
    "Test your function by hand: for a 2-D Gaussian with x_1 known the answer is mu_2 + c "
    "(tau_2 / tau_1)(x_1 - mu_1) and tau_2^2 (1 - c^2), with tau_1, tau_2 the standard "
    "deviations and c the correlation; a known block independent of the unknown one leaves the"
    " marginal law; the covariance is symmetric and does not depend on the values.",
)


def _gaussian_conditional(cov: torch.Tensor, known: torch.Tensor):
    """The regression matrix Sigma_uk Sigma_kk^-1 (D_u, D_k) and the conditional covariance
    Sigma_uu - Sigma_uk Sigma_kk^-1 Sigma_ku (D_u, D_u) of N(mu, cov) given the ``known`` block."""
    cov_uk = cov[~known][:, known]
    gain = torch.linalg.solve(cov[known][:, known], cov_uk.T).T
    return gain, cov[~known][:, ~known] - gain @ cov_uk.T


def _random_covariance(dim: int, generator: torch.Generator) -> torch.Tensor:
    root = torch.randn(dim, dim, dtype=torch.float64, generator=generator)
    return root @ root.T / dim + 0.2 * torch.eye(dim, dtype=torch.float64)


def _conditional_mutants(mean, cov, known, values):
    """7.5's known mistakes: (name -> conditional means, name -> conditional covariance)."""
    gain, covariance = _gaussian_conditional(cov, known)
    mu_u, mu_k = mean[~known], mean[known]
    cov_uk = cov[~known][:, known]
    precision = torch.linalg.inv(cov)
    means = {
        "the conditional means ignore mu_k: the regression acts on x_k - mu_k, the known "
        "values' departure from their own mean.": mu_u + values @ gain.T,
        "the conditional means lack mu_u: start from the unknown block's own mean and move "
        "it by the regression.": (values - mu_k) @ gain.T,
        "the conditional means move the wrong way: the regression (Sigma_uk Sigma_kk^-1)"
        "(v - mu_k) is added to mu_u, not subtracted from it.": mu_u - (values - mu_k) @ gain.T,
        "the regression matrix takes the known block of Sigma^-1 instead of the inverse of "
        "Sigma's known block: (Sigma^-1)_kk is not (Sigma_kk)^-1.":
            mu_u + (values - mu_k) @ (cov_uk @ precision[known][:, known]).T,
        "the conditional means are the unknown block's marginal means: the known values "
        "should move them.": mu_u.expand(len(values), -1),
    }
    if gain.shape[0] == gain.shape[1]:  # only then does the transposed matrix fit
        means["the regression matrix is applied transposed: each conditional mean is mu_u + "
              "(Sigma_uk Sigma_kk^-1)(v - mu_k), and with the N vectors v as rows that is "
              "(values - mu_k) times the matrix's transpose."] = mu_u + (values - mu_k) @ gain
    covariances = {
        "the conditional covariance is Sigma_uu, the marginal one: knowing x_k removes the "
        "part of the spread that it explains.": cov[~known][:, ~known],
        "the conditional covariance adds what x_k explains instead of removing it: "
        "Sigma_uu - Sigma_uk Sigma_kk^-1 Sigma_ku.": cov[~known][:, ~known] + gain @ cov_uk.T,
        "your conditional covariance is the unknown block of the precision Sigma^-1; the "
        "conditional covariance is the inverse of that block.": precision[~known][:, ~known],
    }
    return means, covariances


def _conditional_cases():
    """(mean, cov, known, values) for 7.5: the Gaussian image model with its top row known,
    a 3-D Gaussian given its middle coordinate, a 5-D one given its first and third for a
    single vector of values, then hidden ones of other sizes and masks."""
    generator = torch.Generator().manual_seed(75)
    model = GaussianImages()
    public = [(model.mu, model.cov, torch.tensor([True, True, False, False]), 5),
              (torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64),
               torch.tensor([[2.0, 0.6, -0.3], [0.6, 1.0, 0.4], [-0.3, 0.4, 0.5]],
                            dtype=torch.float64), torch.tensor([False, True, False]), 3)]
    public += [(torch.randn(dim, dtype=torch.float64, generator=generator),
                _random_covariance(dim, generator), torch.tensor(known), n)
               for dim, known, n in [(5, [True, False, True, False, False], 1)]]
    hidden = [(torch.randn(dim, dtype=torch.float64, generator=generator),
               _random_covariance(dim, generator), torch.tensor(known), n)
              for dim, known, n in [(4, [False, True, False, True], 3),
                                    (2, [False, True], 1),
                                    (6, [False, False, False, True, True, True], 2)]]
    out = []
    for mean, cov, known, n in cases(public=public, hidden=hidden):
        values = mean[known] + torch.randn(n, int(known.sum()), dtype=torch.float64,
                                           generator=generator)
        out.append((mean, cov, known, values))
    return out


def _expect_pair(answer, what: str, n: int, n_unknown: int, n_known: int):
    """The (means, covariance) pair of 7.5, as tensors of the right shapes, or a Mismatch."""
    if not (isinstance(answer, (tuple, list)) and len(answer) == 2):
        raise Mismatch(f"{what} should return a pair (means (N, D_u), covariance (D_u, D_u)), but "
                       f"returned {type(answer).__name__}"
                       + (f" of length {len(answer)}." if isinstance(answer, (tuple, list))
                          else "."))
    means, covariance = answer
    if (isinstance(means, torch.Tensor) and n_known != n_unknown
            and tuple(means.shape) == (n, n_known)):
        raise Mismatch(f"{what}: the means have one column per *known* coordinate; the law "
                       "asked for is that of the unknown ones (where known is False).")
    if isinstance(means, torch.Tensor) and n == 1 and tuple(means.shape) == (n_unknown,):
        raise Mismatch(f"{what}: the means have shape ({n_unknown},) for N = {n} vector(s) of "
                       f"values; keep the N axis: shape ({n}, {n_unknown}).")
    if isinstance(covariance, torch.Tensor) and covariance.ndim == 3:
        raise Mismatch(f"{what}: the covariance has shape {tuple(covariance.shape)}, one matrix "
                       f"per vector of values; the conditional covariance does not depend on "
                       f"the values: return one ({n_unknown}, {n_unknown}) matrix.")
    means = expect_tensor(means, what=f"{what}: the means", shape=(n, n_unknown), dtype=None)
    covariance = expect_tensor(covariance, what=f"{what}: the covariance",
                               shape=(n_unknown, n_unknown), dtype=None)
    expect_finite(means, what=f"{what}: the means")
    expect_finite(covariance, what=f"{what}: the covariance")
    return means.detach().double(), covariance.detach().double()


@exercise(
    "7.5",
    "your gaussian_conditional gives the exact law of the unknown coordinates given the known "
    "ones, for any mask.",
)
def exercise_7_5(gaussian_conditional) -> None:
    """Check ``gaussian_conditional(mean (D,), cov (D, D), known (D,) bool, values (N, D_k))
    -> (means (N, D_u), covariance (D_u, D_u))``."""
    for mean, cov, known, values in _conditional_cases():
        n, n_known = values.shape
        n_unknown = len(mean) - n_known
        what = (f"gaussian_conditional for D = {len(mean)} with known = "
                f"{[int(k) for k in known.tolist()]}")
        given = {"mean": mean.clone(), "cov": cov.clone(), "known": known.clone(),
                 "values": values.clone()}
        with package_refused(_gaussian_conditional, what="gaussian_conditional"):
            answer = call_student(gaussian_conditional, *given.values(),
                                  what="gaussian_conditional")
        for name, original in (("mean", mean), ("cov", cov), ("known", known),
                               ("values", values)):
            expect_untouched(given[name], original,
                             call=f"gaussian_conditional (its argument {name})")
        means, covariance = _expect_pair(answer, what, n, n_unknown, n_known)
        gain, expected_cov = _gaussian_conditional(cov, known)
        expected_means = mean[~known] + (values - mean[known]) @ gain.T
        if n_known == n_unknown:
            swapped_gain, _ = _gaussian_conditional(cov, ~known)
            if is_close(means, mean[known] + (values - mean[~known]) @ swapped_gain.T):
                raise Mismatch(f"{what}: the roles of the blocks are swapped; known is True "
                               "where a coordinate is given. Take the blocks with the mask "
                               "(cov[~known][:, ~known] is Sigma_uu), not by position: the text "
                               "writes the unknown block first only to keep the algebra short.")
        mean_mutants, cov_mutants = _conditional_mutants(mean, cov, known, values)
        diagnose(means, expected_means, what=f"{what}: the first tensor returned (the means)",
                 mutants={f"{what}: {name}": value for name, value in mean_mutants.items()},
                 rtol=1e-5, atol=1e-6)
        diagnose(covariance, expected_cov,
                 what=f"{what}: the second tensor returned (the covariance)",
                 mutants={f"{what}: {name}": value for name, value in cov_mutants.items()},
                 rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------- 7.6 (investigate)

register_hints(
    "7.6",
    "At the last level, with many small steps, the chain forgets where it started: it samples "
    "the law that this level's score describes, given the known pixels that level shows it.",
    "Which Gaussian does the last level's score belong to, and which values of the known "
    "pixels does that level show the chain? Condition the one on the other with your "
    "gaussian_conditional. The ratio, though, measures the distance from the exact "
    "conditional mean given the clean known pixels.",
    "Checks to run: split the expected square distance into the chain's spread around its own "
    "mean and the distance of that mean from the exact one; neither part may be left out. "
    "Your prediction must lie a little below the small-step rows without denoising at large "
    "T, and it cannot be 1: why not?",
)

STEP_GRID = (1, 3, 10, 30, 100, 300)  # the steps a level of 7.6's scan
TOLERANCE_76 = 0.01  # relative; Monte Carlo over y moves a prediction by about 0.1 %


def _bottom_row_residuals(model: GaussianImages, completed: torch.Tensor,
                          given: torch.Tensor | None = None) -> torch.Tensor:
    """(N, 2): the bottom rows of ``completed`` (N, 1, 2, 2) minus their exact conditional mean
    given the top rows of ``given`` (default: ``completed``'s own)."""
    known = torch.tensor([True, True, False, False])
    gain, _ = _gaussian_conditional(model.cov, known)
    flat = completed.detach().reshape(len(completed), 4).double()
    top = (flat if given is None else given.reshape(len(given), 4).double())[:, known]
    return flat[:, ~known] - (model.mu[~known] + (top - model.mu[known]) @ gain.T)


def spread_ratio(completed: torch.Tensor, model: GaussianImages) -> float:
    """The mean square distance of the filled-in bottom rows of ``completed`` (N, 1, 2, 2) from
    their exact conditional mean given the top rows, over the trace of the exact conditional
    covariance: 1 when the bottom rows are exact draws of the conditional law."""
    _, covariance = _gaussian_conditional(model.cov, torch.tensor([True, True, False, False]))
    residuals = _bottom_row_residuals(model, completed)
    return (residuals.square().sum(1).mean() / covariance.trace()).item()


@functools.lru_cache(maxsize=8)  # deterministic, and a wrong plateau asks for it again
def _scan_ratios(up_to: int, seed: int = 76, denoise: bool = True) -> dict[int, float]:
    """Algorithm 2 at the model's step, with or without the denoising step (no clamp):
    T -> spread ratio, for the T of ``STEP_GRID`` up to ``up_to``."""
    from scorelab.ncsn.inpaint import inpaint

    model = GaussianImages(record=False)
    images, mask = model.top_row_known(4000, generator=torch.Generator().manual_seed(seed))
    ratios = {}
    for n_steps in (t for t in STEP_GRID if t <= up_to):
        completed = inpaint(model, images, mask, n_steps_each=n_steps, clamp=False,
                            denoise=denoise, generator=torch.Generator().manual_seed(seed + 1))
        ratios[n_steps] = spread_ratio(completed, model)
    return ratios


def _plateau_parts(model: GaussianImages | None = None) -> dict[str, float]:
    """Spread ratios of Algorithm 2 in the limit of small steps and many of them: without its
    denoising step (``"exact"``, the plateau of 7.6), with it (``"denoised"``), and the values
    that typical partial answers give for the first (``"clean known"``: the perturbed model
    conditioned on the clean x_k, which is also the plateau of 7.4's buggy loop).

    The last level's chain samples N(m_s(y), C_s), the perturbed model N(mu, Sigma +
    sigma_L^2 I) conditioned on the noisy known pixels y = x_k + sigma_L z (R, R_s: the
    regression matrices of the clean and perturbed models), while the ratio measures the
    distance from m(x_k), the exact conditional mean: E|x_u - m(x_k)|^2 = tr C_s +
    sigma_L^2 |R_s|_F^2 + tr((R_s - R) Sigma_kk (R_s - R)^T), over tr C. The denoising step
    x + sigma_L^2 s(x, sigma_L) = mu + A (x - mu), A = Sigma (Sigma + sigma_L^2 I)^-1
    (Tweedie's formula for a Gaussian), maps x_u - mu_u to G (y - mu_k) + A_uu xi with
    G = A_uk + A_uu R_s and xi ~ N(0, C_s).
    """
    model = model or GaussianImages()
    known = torch.tensor([True, True, False, False])
    sigma = float(model.sigmas[-1])
    gain, covariance = _gaussian_conditional(model.cov, known)
    perturbed = model.cov + sigma**2 * torch.eye(4, dtype=torch.float64)
    gain_s, covariance_s = _gaussian_conditional(perturbed, known)
    cov_kk = model.cov[known][:, known]

    def through(matrix):  # the mean square of (matrix - R)(x_k - mu_k) + sigma matrix z
        shift = matrix - gain
        return (shift @ cov_kk @ shift.T).trace() + sigma**2 * matrix.square().sum()

    shrink = model.cov @ torch.linalg.inv(perturbed)  # A
    shrink_uu = shrink[~known][:, ~known]
    shift_s = gain_s - gain  # the chain conditioned on the clean x_k: R_s x_k, not R x_k
    parts = {
        "exact": through(gain_s) + covariance_s.trace(),
        "clean known": (shift_s @ cov_kk @ shift_s.T).trace() + covariance_s.trace(),
        "denoised": through(shrink[~known][:, known] + shrink_uu @ gain_s)
        + (shrink_uu @ covariance_s @ shrink_uu.T).trace(),
        "covariance only": covariance_s.trace(),
        "noise added": covariance.trace() + 2 * sigma**2,
    }
    parts["divided by tr C_s"] = parts["exact"] * covariance.trace() / covariance_s.trace()
    return {name: (value / covariance.trace()).item() for name, value in parts.items()}


def _expect_steps_needed(steps_needed) -> None:
    chosen = to_float(steps_needed, what="steps_needed")
    if chosen not in STEP_GRID:
        raise Mismatch(f"steps_needed = {steps_needed!r}: choose one of the scan's T, {STEP_GRID}.")
    ratios = _scan_ratios(up_to=int(chosen))
    needed = next((t for t in ratios if abs(ratios[t] - 1.0) <= 0.1), None)
    if needed is None or chosen < needed:
        raise Mismatch(
            f"steps_needed = {int(chosen)}: at T = {int(chosen)} the denoised spread is "
            f"{ratios[int(chosen)]:.2f} times the exact one, more than 10 % off: the chain has "
            "not yet forgotten its uniform start and the noise of the first levels."
        )
    if chosen > needed:
        raise Mismatch(
            f"steps_needed = {int(chosen)}: at the model's step (eps = 0.01, the denoised row) a "
            "smaller T of the scan already lands within 10 % of 1; take the smallest."
        )


def _expect_plateau(predicted_plateau) -> None:
    got = to_float(predicted_plateau, what="predicted_plateau")
    parts = _plateau_parts()
    exact = parts["exact"]
    if not math.isfinite(got):
        raise Mismatch(f"predicted_plateau = {got}: not a finite number.")
    if abs(got / exact - 1.0) <= TOLERANCE_76:
        return
    near = {name: abs(got / value - 1.0) <= 0.005 for name, value in parts.items()}
    # the denoised rows of the scan sit a percent or two above their limit
    near["denoised"] = -0.005 <= got / parts["denoised"] - 1.0 <= 0.03
    at_model_step = _scan_ratios(up_to=STEP_GRID[-1], denoise=False)  # T -> raw ratio
    if near["clean known"] or near["covariance only"]:
        cause = ("either the chain was conditioned on the clean x_k, or part of the distance "
                 "is missing. At the last level the chain is shown y = x_k + sigma_L z~ (the "
                 "known pixels carry noise too): condition N(mu, Sigma + sigma_L^2 I) on that "
                 "y, and count both the spread around the chain's own mean and the distance "
                 "of that mean from the exact conditional mean given the clean x_k.")
    elif near["divided by tr C_s"]:
        cause = ("the ratio divides by the trace of the *exact* conditional covariance (the "
                 "clean model's), not the perturbed one's.")
    elif near["noise added"]:
        cause = ("that adds sigma_L^2 to each unknown pixel of the exact conditional law; "
                 "conditioning the perturbed model on noisy known pixels is not that: use your "
                 "gaussian_conditional on N(mu, Sigma + sigma_L^2 I) given y.")
    elif near["denoised"]:
        cause = ("that is the limit *with* the denoising step; the plateau asked for is "
                 "without it, which leaves the last level's own noise in the sample.")
    elif abs(got - 1.0) <= 0.02:
        cause = ("1 would make Algorithm 2 exact; the small-step curve without denoising "
                 "levels off elsewhere. What law does the last level's chain sample? (And "
                 "take this model's sigma_L, toy.sigmas[-1] = 0.06.)")
    elif any(abs(got / ratio - 1.0) <= 0.03 for t, ratio in at_model_step.items() if t >= 10):
        cause = ("that is about what the model's step gives without denoising (" + ", ".join(
            f"{ratio:.2f} at T = {t}" for t, ratio in at_model_step.items() if t >= 30)
            + "): there each Langevin step adds a bias of its own, as a finite step widens "
            "the chain's law. The plateau asked for is the limit of small steps. (If you "
            "predicted it, count the last level's noise once: the perturbed conditional law "
            "already holds it.)")
    elif abs(got / exact - 1.0) <= 0.05:
        cause = ("close, but is it measured? At T = 300 the small-step rows are still a "
                 "percent or two above their limits, with a Monte Carlo error of about 2 %: "
                 "predict the limit from the law that the last level's chain samples.")
    elif got < exact:
        cause = ("too small. The expected square distance from the exact conditional mean "
                 "adds the trace of the chain's conditional covariance (both unknown pixels) "
                 "and the mean square distance between the two conditional means.")
    else:
        cause = ("too large. Take the last level's sigma_L, the perturbed covariance "
                 "Sigma + sigma_L^2 I, noise of standard deviation sigma_L on the known "
                 "pixels, and divide by the trace of the exact conditional covariance.")
    raise Mismatch(f"predicted_plateau = {got:.4f} is not the limit (within "
                   f"{TOLERANCE_76:.1%}): {cause}")


@exercise(
    "7.6",
    "you found how many steps a level the model's step needs, and predicted (within 1 %) where "
    "the sampler settles without its denoising step.",
)
def exercise_7_6(steps_needed, predicted_plateau) -> None:
    """Check 7.6's two numbers: the smallest T of ``STEP_GRID`` whose denoised spread ratio is
    within 10 % of 1 at the model's step, and the spread ratio without denoising in the limit
    of small steps (``_plateau_parts()["exact"]``, within 1 %)."""
    if steps_needed is None or predicted_plateau is None:
        raise NotImplementedError
    _expect_steps_needed(steps_needed)
    _expect_plateau(predicted_plateau)


# ------------------------------------------------------------------------- 7.7 (investigate)

register_hints(
    "7.7",
    "Bayes' rule for the component k: its weight given x_2 = a is its prior weight times the "
    "density of x_2 = a under that component, normalised over k. What is the law of one "
    "coordinate of an isotropic Gaussian in two dimensions?",
    "The density of x_2 under component k is one-dimensional, N(a; mu_k2, v_k), with its own "
    "normalising factor, which differs between components of different variances. Work with "
    "log-weights and normalise with a softmax: far from every component the densities "
    "themselves are 0 in floating point.",
    "For the level that decides, compute rather than read it off: the perturbed mixture p_sigma "
    "has the variances v_k + sigma^2, so your function gives one curve per level; take the "
    "level whose curve lies closest, in mean square over the grid of a, to Algorithm 2's "
    "measured weights.",
)


class TwoPixelMixture:
    """Two-pixel images (N, 1, 1, 2) drawn from an equal mixture of two isotropic Gaussians,
    with the exact score of its perturbed densities (Algorithm 2 then has no network's error).

    Pixel 1 is to be filled in, pixel 2 is known (``mask``). The components sit at
    ``means`` (0.2, 0.45) and (0.8, 0.55) with the variance 0.05^2: the unknown pixel has two
    modes, far apart, and the known one says which, softly. Its ladder has ten levels from 1
    down to 0.01, with Algorithm 2's step 1e-4 and 20 steps a level.
    """

    def __init__(self) -> None:
        from scorelab.densities import GaussianMixture
        from scorelab.noise import geometric_sigmas

        self.weights = torch.tensor([0.5, 0.5], dtype=torch.float64)
        self.means = torch.tensor([[0.2, 0.45], [0.8, 0.55]], dtype=torch.float64)
        self.variances = torch.tensor([0.05**2, 0.05**2], dtype=torch.float64)
        self.mixture = GaussianMixture(self.weights, self.means, self.variances)
        self.sigmas = geometric_sigmas(1.0, 0.01, 10)
        self.step_size, self.n_steps_each = 1e-4, 20
        self.mask = torch.tensor([[[0.0, 1.0]]])  # (1, 1, 2): pixel 2 known

    def score(self, x: torch.Tensor, sigma) -> torch.Tensor:
        flat = x.reshape(len(x), 2).double()
        return self.mixture.perturbed_score(flat, float(sigma)).reshape(x.shape).to(x.dtype)

    def right_mode_weights(self, values, n: int = 2000, seed: int = 77,
                           n_steps_each: int | None = None, *, given: str = "noisy"
                           ) -> torch.Tensor:
        """The weight of the right-hand mode: for each known value a of ``values`` (A,), the
        fraction of n completions whose pixel 1 lies above 0.5, (A,), with T =
        ``n_steps_each`` steps a level (default: the model's 20).

        ``given="noisy"`` runs Algorithm 2 (the package's ``inpaint``): the score of p_sigma,
        whose known pixel carries the level's noise. ``given="clean"`` runs annealed Langevin
        dynamics on pixel 1 alone with the exact score of the law of that pixel perturbed at
        sigma given the *clean* known one, sum_k pi_k(a) N(mu_k1, v_k + sigma^2), whose weights
        are the exact ones at every level.
        """
        from scorelab.ncsn.inpaint import inpaint

        if given not in ("noisy", "clean"):
            raise ValueError(f"given must be 'noisy' or 'clean', got {given!r}")
        generator = torch.Generator().manual_seed(seed)
        fractions = []
        for value in torch.as_tensor(values, dtype=torch.float32).tolist():
            if given == "clean":
                pixel = self._clean_conditional(value, n, n_steps_each, generator)
            else:
                images = torch.full((n, 1, 1, 2), value)  # pixel 1 is not read
                pixel = inpaint(self, images, self.mask, generator=generator, denoise=False,
                                clamp=False, n_steps_each=n_steps_each)[:, 0, 0, 0]
            fractions.append((pixel > 0.5).float().mean())
        return torch.stack(fractions)

    def _clean_conditional(self, value: float, n: int, n_steps_each: int | None,
                           generator: torch.Generator) -> torch.Tensor:
        """n draws (n,) of pixel 1 by annealed Langevin dynamics on the law of that pixel,
        perturbed alone, given the clean known pixel ``value``, from the uniform start."""
        from scorelab.densities import GaussianMixture
        from scorelab.langevin import annealed_langevin_dynamics

        known = torch.tensor([value], dtype=torch.float64)
        weights = _conditional_weights(self.weights, self.means, self.variances, known)[0]
        given_pixel = GaussianMixture(weights, self.means[:, :1], self.variances)
        start = torch.rand(n, 1, generator=generator)
        pixel = annealed_langevin_dynamics(
            lambda x, sigma: given_pixel.perturbed_score(x.double(), sigma).float(), start,
            self.sigmas, self.step_size, n_steps_each or self.n_steps_each,
            generator=generator, progress=False)
        return pixel[:, 0]

    def mode_changes(self, value: float, n: int = 2000, seed: int = 77,
                     n_steps_each: int | None = None) -> torch.Tensor:
        """For Algorithm 2 with the known pixel ``value``: per level, the fraction of the n
        chains whose pixel 1 is on the other side of 0.5 after the level than before it, (L,)."""
        from scorelab.ncsn.inpaint import inpaint

        images = torch.full((n, 1, 1, 2), float(value))
        _, path = inpaint(self, images, self.mask, generator=torch.Generator().manual_seed(seed),
                          denoise=False, clamp=False, n_steps_each=n_steps_each, snapshots=True)
        right = path[:-1, :, 0, 0, 0] > 0.5  # the start, then after each level: (L + 1, n)
        return (right[1:] != right[:-1]).float().mean(dim=1)


#: the grid of known values a on which 7.7 measures Algorithm 2
KNOWN_VALUES_77 = torch.linspace(0.4, 0.6, 11)


def _conditional_weights(weights, means, variances, values) -> torch.Tensor:
    """The weights pi_k(a) of the components in the law of x_1 given x_2 = a, (N, K): the
    responsibilities of the mixture of the components' second coordinates at a."""
    from scorelab.densities import GaussianMixture

    return GaussianMixture(weights, means[:, 1:], variances).responsibilities(values[:, None])


def _weight_mutants(weights, means, variances, values) -> dict[str, torch.Tensor]:
    """7.7's known mistakes in the conditional weights, each as that mistake computes them."""
    def normalised(log_weights):
        return torch.softmax(log_weights, dim=1)

    square = (values[:, None] - means[:, 1]) ** 2
    prior = weights.log()
    return {
        "the weights do not depend on a: they are the prior weights pi_k. Knowing x_2 changes "
        "them, by Bayes' rule.": weights.expand(len(values), -1),
        "the factor 1 / sqrt(2 pi v_k) of each component's density is missing; it differs "
        "between components of different variances.": normalised(prior - square / (2 * variances)),
        "each component's factor is 1 / (2 pi v_k), that of its two-dimensional density; the law "
        "of x_2 alone is one-dimensional: 1 / sqrt(2 pi v_k).":
            normalised(prior - variances.log() - square / (2 * variances)),
        "the prior weights pi_k are missing: the posterior is prior times likelihood.":
            normalised(-0.5 * variances.log() - square / (2 * variances)),
        "the weights use the components' first coordinates mu_k1; the known coordinate is x_2, "
        "the second column of means.": normalised(
            prior - 0.5 * variances.log() - (values[:, None] - means[:, 0]) ** 2 / (2 * variances)),
        "the exponent lacks its 1/2: the density of N(m, v) at a is proportional to "
        "exp(-(a - m)^2 / (2 v)).": normalised(prior - 0.5 * variances.log() - square / variances),
        "variances holds v_k, the variances, not standard deviations: the exponent is "
        "-(a - mu_k2)^2 / (2 v_k).": normalised(
            prior - variances.log() - square / (2 * variances**2)),
    }


def _weight_cases():
    """(weights, means, variances, values) for 7.7: the exercise's mixture on its grid of a,
    three components of different weights and variances, then hidden ones, one with values
    far from every component."""
    model = TwoPixelMixture()
    public = [
        (model.weights, model.means, model.variances, KNOWN_VALUES_77.double()),
        (torch.tensor([0.2, 0.5, 0.3]), torch.tensor([[0.0, -1.0], [2.0, 0.5], [-1.0, 1.0]]),
         torch.tensor([0.5, 0.1, 1.0]), torch.tensor([-1.5, -0.2, 0.4, 0.9, 2.0])),
        # far from every component: densities underflow to 0 in float32 (and float64)
        (torch.tensor([0.4, 0.6]), torch.tensor([[0.0, 0.0], [1.0, 0.3]]),
         torch.tensor([0.01, 0.02]), torch.tensor([-30.0, 0.2, 40.0])),
    ]
    hidden = [
        (torch.tensor([0.7, 0.3]), torch.tensor([[1.0, 1.0], [-1.0, 2.0]]),
         torch.tensor([0.2, 0.8]), torch.tensor([0.0, 1.5, 3.0])),
        (torch.tensor([0.1, 0.6, 0.3]), torch.tensor([[0.5, -50.0], [0.0, 0.0], [1.0, 60.0]]),
         torch.tensor([0.3, 0.05, 0.2]), torch.tensor([-80.0, 0.1, 70.0, 5.0])),
    ]
    return cases(public=public, hidden=hidden)


def _expect_weights(conditional_weights) -> None:
    for weights, means, variances, values in _weight_cases():
        n, k = len(values), len(weights)
        shown = ", ".join(f"{value:.3g}" for value in values.tolist())
        what = f"conditional_weights for K = {k} components at a = [{shown}]"
        given = {"weights": weights.clone(), "means": means.clone(),
                 "variances": variances.clone(), "a": values.clone()}
        got = call_student(conditional_weights, *given.values(), what="conditional_weights")
        for name, original in zip(given, (weights, means, variances, values)):
            expect_untouched(given[name], original,
                             call=f"conditional_weights (its argument {name})")
        if isinstance(got, torch.Tensor) and n != k and tuple(got.shape) == (k, n):
            raise Mismatch(f"{what}: the result has shape ({k}, {n}), one row per component; "
                           f"return one row per value of a: shape ({n}, {k}).")
        got = expect_tensor(got, what=what, shape=(n, k), dtype=None).detach().double()
        if torch.isnan(got).any():
            raise Mismatch(f"{what}: NaN in the weights, where a is far from every component? "
                           "There every density exp(-(a - mu_k2)^2 / (2 v_k)) is 0 in floating "
                           "point, and 0 / 0 is NaN. Work with log-weights and normalise them "
                           "with a softmax (torch.softmax subtracts the largest first).")
        expect_finite(got, what=what)
        expected = _conditional_weights(weights.double(), means.double(), variances.double(),
                                        values.double())
        if is_close(got.exp(), expected):
            raise Mismatch(f"{what}: these are the logs of the weights: return the weights "
                           "themselves.")
        if not is_close(got.sum(dim=1), torch.ones(n, dtype=torch.float64)):
            raise Mismatch(f"{what}: a row of weights sums to {got.sum(dim=1)[0].item():.4g}, "
                           "not 1: normalise over the components, as Bayes' rule divides by "
                           "p(x_2 = a).")
        mutants = _weight_mutants(weights.double(), means.double(), variances.double(),
                                  values.double())
        diagnose(got, expected, what=what, rtol=1e-4, atol=1e-6,
                 mutants={f"{what}: {name}": value for name, value in mutants.items()})


def _level_fits(measured: torch.Tensor, model: TwoPixelMixture) -> list[float]:
    """Mean square distance, over 7.7's grid, between Algorithm 2's measured weights of the
    right-hand mode and each ladder level's curve, the weight given x~_2 = a under p_sigma
    (the curves leave out the noise of y)."""
    fits = []
    for sigma in model.sigmas.tolist():
        curve = _conditional_weights(model.weights, model.means, model.variances + sigma**2,
                                     KNOWN_VALUES_77.double())[:, 1]
        fits.append((curve - measured.double()).square().mean().item())
    return fits


#: a level is accepted when its curve fits at most this many times worse than the best one
FIT_SLACK_77 = 2.0


@functools.cache
def _measured_77() -> torch.Tensor:
    """Algorithm 2's weights on 7.7's grid, as the exercise notebook measures them."""
    return TwoPixelMixture().right_mode_weights(KNOWN_VALUES_77)


def _expect_deciding_level(deciding_level) -> None:
    model = TwoPixelMixture()
    got = answer_number(deciding_level, what="deciding_level")
    levels = model.sigmas.tolist()
    fits = _level_fits(_measured_77(), model)
    best = min(range(len(levels)), key=fits.__getitem__)
    on_ladder = [i for i, level in enumerate(levels) if abs(got / level - 1.0) < 0.01]
    shown = ", ".join(f"{level:.3g}" for level in levels)
    if not on_ladder:
        raise Mismatch(f"deciding_level = {got:.4g} is not a level of the ladder ({shown}): "
                       "pick the level whose curve fits Algorithm 2's weights best.")
    chosen = on_ladder[0]
    if fits[chosen] <= FIT_SLACK_77 * fits[best]:  # the measured weights may lie between two
        return
    if chosen == len(levels) - 1:
        cause = ("that is the last level, where the known pixel speaks most clearly; had the "
                 "chains decided there, Algorithm 2 would be nearly exact")
    elif chosen == 0:
        cause = "that is the first level, where the unknown pixel's law has one mode only"
    elif chosen < best:
        cause = "a higher level, whose curve is flatter than Algorithm 2's weights"
    else:
        cause = "a lower level, whose curve is steeper than Algorithm 2's weights"
    raise Mismatch(f"deciding_level = {got:.4g}: {cause}. Its curve's mean square distance "
                   f"from the measured weights is {fits[chosen]:.2g}, and another level's "
                   f"curve lies {fits[chosen] / fits[best]:.0f} times closer. Compute the "
                   "distances for every level rather than judging by eye.")


@exercise(
    "7.7",
    "your conditional_weights are the exact law of the unknown pixel's mode given the known "
    "pixel, and you found the level at which Algorithm 2 decides it.",
)
def exercise_7_7(conditional_weights, deciding_level) -> None:
    """Check ``conditional_weights(weights (K,), means (K, 2), variances (K,), a (N,)) ->
    (N, K)`` and ``deciding_level``, the ladder level whose curve fits Algorithm 2's weights."""
    _expect_weights(conditional_weights)
    if deciding_level is None or deciding_level is ...:
        raise NotImplementedError
    _expect_deciding_level(deciding_level)
