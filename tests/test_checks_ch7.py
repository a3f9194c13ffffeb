"""The checks of chapter 7: each passes the solution, names typical wrong answers, runs its
hidden cases while grading, and its hints do not give the solution away."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from _checks_helpers import assert_explains, assert_passes, lcs, run_check, stub, with_answer
from scorelab import checks
from scorelab.checks import _core
from scorelab.checks.ch7 import (KNOWN_VALUES_77, GaussianImages, TwoPixelMixture, _level_fits,
                                 _measured_77, _mixed_ratio, _plateau_parts, known_pixel_noise,
                                 spread_ratio)
from scorelab.ncsn.inpaint import inpaint

#: 7.4 with its prediction right, so that a test varies the fix
exercise_7_4 = with_answer(checks.exercise_7_4, 1.0, first=True)

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------- solutions


def gamma_half(D):
    root = math.sqrt(2 * D)
    return root / (root - 3)


def inpainting_step(score_fn, x, y, mask, sigma, alpha, z):
    moved = x + 0.5 * alpha * score_fn(x, sigma) + math.sqrt(alpha) * z
    return torch.where(mask.bool(), y, moved)


def measured_variance_ratio(step_size, gamma, n_steps_each, sigma_min, *, n=2000, dim=64,
                            generator=None):
    alpha = step_size / sigma_min**2
    x = gamma * torch.randn(n, dim, generator=generator)
    for _ in range(n_steps_each):
        x = x + 0.5 * alpha * (-x) + math.sqrt(alpha) * torch.randn(n, dim, generator=generator)
    return x.var().item()


BEST_STEP = 1.5e-5  # what a scan of measured_variance_ratio finds: shipped ladder, T = 30


def langevin_move(score_fn, x, sigma, alpha, z, step_size):
    return x + 0.5 * alpha * score_fn(x, sigma) + math.sqrt(alpha) * z


def make_inpaint(*, noise_scale=lambda sigma: sigma, exact_end=True, redraw_each_step=False,
                 move=langevin_move):
    def inpaint_fn(score_fn, sigmas, images, mask, step_size, n_steps_each, generator=None):
        known = mask.bool().expand(images.shape)
        x = torch.rand(images.shape, generator=generator)
        for sigma in sigmas:
            alpha = step_size * (sigma / sigmas[-1]) ** 2
            y = images + noise_scale(sigma) * torch.randn(images.shape, generator=generator)
            for _ in range(n_steps_each):
                z = torch.randn(images.shape, generator=generator)
                x = move(score_fn, x, sigma, alpha, z, step_size)
                if redraw_each_step:
                    y = images + noise_scale(sigma) * torch.randn(images.shape, generator=generator)
                x = torch.where(known, y, x)
        x = x + sigmas[-1] ** 2 * score_fn(x, sigmas[-1])
        return torch.where(known, images if exact_end else y, x.clamp(0, 1))

    return inpaint_fn


fixed_inpaint = make_inpaint()


def gaussian_conditional(mean, cov, known, values):
    unknown = ~known
    cov_uk = cov[unknown][:, known]
    gain = torch.linalg.solve(cov[known][:, known], cov_uk.T).T
    means = mean[unknown] + (values - mean[known]) @ gain.T
    return means, cov[unknown][:, unknown] - gain @ cov_uk.T


def conditional_with(*, gain=None, means=None, covariance=None):
    """gaussian_conditional with one part computed another (wrong) way."""
    def answer(mean, cov, known, values):
        right_means, right_cov = gaussian_conditional(mean, cov, known, values)
        g = gain(mean, cov, known) if gain else None
        got_means = (means(mean, cov, known, values) if means
                     else mean[~known] + (values - mean[known]) @ g.T if gain else right_means)
        return got_means, covariance(mean, cov, known) if covariance else right_cov

    return answer


def _right_gain(mean, cov, known):
    return cov[~known][:, known] @ torch.linalg.inv(cov[known][:, known])


# ------------------------------------------------------------------------------ tests


@pytest.mark.parametrize(
    "check, n_args",
    [(checks.exercise_7_1, 1), (checks.exercise_7_2, 1), (checks.exercise_7_3, 2),
     (exercise_7_4, 1), (checks.exercise_7_5, 1)],
)
def test_an_unfilled_stub_is_not_done_yet(capsys, check, n_args):
    out = run_check(capsys, check, *([stub] + [1e-5] * (n_args - 1)))
    assert "not done yet" in out


@pytest.mark.parametrize("prediction, phrase", [(0.0, "clean known pixels"),
                                                (0.5, "in units of sigma_i"),
                                                ("one", "should be a number")])
def test_7_4_checks_the_predicted_spread(capsys, prediction, phrase):
    assert_explains(capsys, checks.exercise_7_4, (prediction, fixed_inpaint), phrase)


def test_7_4_waits_for_the_prediction(capsys):
    for unset in (..., None):
        out = run_check(capsys, checks.exercise_7_4, unset, fixed_inpaint)
        assert out.startswith("⏳") and "not done yet" in out


def test_7_1_accepts_the_solution(capsys, grading):
    assert_passes(capsys, checks.exercise_7_1, gamma_half)


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (lambda D: 1 + 3 / math.sqrt(2 * D), ["close for large images", "3 gamma"]),
        (lambda D: math.sqrt(D) / (math.sqrt(D) - 3), ["sqrt(2 D), not sqrt(D)"]),
        (lambda D: math.sqrt(2 * D) / (math.sqrt(2 * D) + 3), ["not above 1"]),
        (lambda D: 1.3, ["wrong for small and large images alike"]),
        (lambda D: "1.3", ["should be a number"]),
        (lambda D: gamma_half(D) if D < 1000 else 1.01, ["right for small images"]),
    ],
)
def test_7_1_explains_wrong_answers(capsys, answer, phrases):
    assert_explains(capsys, checks.exercise_7_1, answer, *phrases)


def test_7_1_hidden_cases_catch_an_answer_tuned_to_the_public_ones(capsys, grading):
    public = {16, 64, 784, 3072, 65_536}
    assert_explains(capsys, checks.exercise_7_1,
                    lambda D: gamma_half(D) if D in public else 1.5, "gamma_half(")


def test_7_2_accepts_the_solution(capsys, grading):
    assert_passes(capsys, checks.exercise_7_2, inpainting_step)


def test_7_2_accepts_y_put_in_before_the_move_as_the_authors_code_does(capsys, grading):
    # the score then sees y in the known pixels at a level's first step too
    def y_first(score_fn, x, y, mask, sigma, alpha, z):
        return inpainting_step(score_fn, torch.where(mask.bool(), y, x), y, mask, sigma, alpha, z)

    def unknown_only(score_fn, x, y, mask, sigma, alpha, z):  # moves x_u alone, by its block
        known = mask.bool().expand(x.shape)
        start = torch.where(known, y, x)
        moved = start + 0.5 * alpha * score_fn(start, sigma) + math.sqrt(alpha) * z
        return torch.where(known, start, moved)

    assert_passes(capsys, checks.exercise_7_2, y_first)
    assert_passes(capsys, checks.exercise_7_2, unknown_only)


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (lambda s, x, y, m, sig, a, z: x + 0.5 * a * s(x, sig) + math.sqrt(a) * z,
         ["were not put back"]),
        (lambda s, x, y, m, sig, a, z: torch.where(
            m.bool(), y, x + a * s(x, sig) + math.sqrt(2 * a) * z), ["the authors' code"]),
        (lambda s, x, y, m, sig, a, z: torch.where(~m.bool(), y, inpainting_step(
            s, x, y, torch.zeros_like(m), sig, a, z)), ["wrong way round"]),
        (lambda s, x, y, m, sig, a, z: torch.where(m.bool(), y, x + 0.5 * a * s(x, sig)),
         ["noise term is missing"]),
        (lambda s, x, y, m, sig, a, z: inpainting_step(
            s, torch.where(m.bool(), y, x), y, torch.zeros_like(m), sig, a, z), ["before the step"]),
        (lambda s, x, y, m, sig, a, z: inpainting_step(s, x, y, m, sig, a, z)[:3],
         ["wrong shape"]),
        (lambda s, x, y, m, sig, a, z: torch.where(
            m.bool(), y, x - 0.5 * a * s(x, sig) + math.sqrt(a) * z), ["wrong sign"]),
        (lambda s, x, y, m, sig, a, z: torch.where(
            m.bool(), x, x + 0.5 * a * s(x, sig) + math.sqrt(a) * z), ["keep x's values"]),
        # y put in first, then a wrong move: named from that start too
        (lambda s, x, y, m, sig, a, z: (lambda v: torch.where(
            m.bool(), y, v - 0.5 * a * s(v, sig) + math.sqrt(a) * z))(torch.where(m.bool(), y, x)),
         ["wrong sign"]),
    ],
)
def test_7_2_explains_wrong_answers(capsys, answer, phrases):
    assert_explains(capsys, checks.exercise_7_2, answer, *phrases)


def test_7_3_accepts_the_solution(capsys, grading):
    assert_passes(capsys, checks.exercise_7_3, measured_variance_ratio, BEST_STEP)


@pytest.mark.parametrize(
    "answer, step, phrases",
    [
        (lambda *a, **k: measured_variance_ratio(*a, **k) ** 0.5, BEST_STEP,
         ["square root of Eq. 4"]),
        (lambda e, g, T, s, **k: measured_variance_ratio(e, g, 0 * T, s, **k), BEST_STEP,
         ["did the chain move at all"]),
        (lambda e, g, T, s, **k: measured_variance_ratio(2 * e, g, T, s, **k), BEST_STEP,
         ["but Eq. 4 gives"]),
        (measured_variance_ratio, 1.2e-4, ["too large"]),
        (measured_variance_ratio, 5e-6, ["too small"]),
        (measured_variance_ratio, 3e-4, ["outside (0, 2 sigma_L^2)"]),
    ],
)
def test_7_3_explains_wrong_answers(capsys, answer, step, phrases):
    assert_explains(capsys, checks.exercise_7_3, (answer, step), *phrases)


def test_7_4_accepts_the_solution_and_the_authors_per_step_noise(capsys, grading):
    assert_passes(capsys, exercise_7_4, fixed_inpaint)
    assert_passes(capsys, exercise_7_4, make_inpaint(redraw_each_step=True))


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (make_inpaint(noise_scale=lambda sigma: 0.0), ["noise of std 0", "Add that level's noise"]),
        (make_inpaint(noise_scale=lambda sigma: sigma**2), ["the score was shown known pixels"]),
        (make_inpaint(noise_scale=lambda sigma: 1.0), ["the score was shown known pixels"]),
        (make_inpaint(exact_end=False), ["differ from the observed images"]),
        # the known pixels right, the move of the unknown ones wrong
        (make_inpaint(move=lambda s, x, sig, a, z, e: x - 0.5 * a * s(x, sig) + math.sqrt(a) * z),
         ["from their exact conditional mean", "the sign of the score term"]),
        (make_inpaint(move=lambda s, x, sig, a, z, e: x + 0.5 * a * s(x, sig)),
         ["vary too little", "sqrt(alpha_i) z"]),
        (make_inpaint(move=lambda s, x, sig, a, z, e: x + 0.5 * e * s(x, sig) + math.sqrt(e) * z),
         ["from their exact conditional mean"]),
        (make_inpaint(move=lambda s, x, sig, a, z, e: s(x, sig) * 0 + x),
         ["from their exact conditional mean"]),
        (make_inpaint(move=lambda s, x, sig, a, z, e: x + a * s(x, sig) + math.sqrt(2 * a) * z),
         ["from their exact conditional mean"]),
        (make_inpaint(move=lambda s, x, sig, a, z, e: langevin_move(s, x, sig**2, a, z, e)),
         ["called at sigma = 0.0625", "not a level of the ladder"]),
        (make_inpaint(move=lambda s, x, sig, a, z, e: langevin_move(s, x, 0.06, a, z, e)),
         ["called only at sigma = [0.06]"]),
    ],
)
def test_7_4_explains_wrong_answers(capsys, answer, phrases):
    assert_explains(capsys, exercise_7_4, answer, *phrases)


def test_known_pixel_noise_measures_the_noise_in_units_of_sigma():
    model = GaussianImages()
    images = torch.rand(300, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    known = torch.zeros(300, 1, 2, 2, dtype=torch.bool)
    known[:, :, 0] = True
    fixed_inpaint(model.score, model.sigmas.tolist(), images, known.float()[0, 0], 0.004, 3,
                  generator=torch.Generator().manual_seed(1))
    noise = known_pixel_noise(model.calls, images, known)
    assert sorted(noise) == sorted(round(s, 6) for s in model.sigmas.tolist())
    assert all(abs(std - 1.0) < 0.15 for std in noise.values())


# -------------------------------------------------------------------------------- hints

TOKEN = re.compile(r"[A-Za-z_]\w*|\d+\.?\d*|\S")


def _solution_regions() -> dict[str, str]:
    """The code between BEGIN/END SOLUTION in solutions/07, by exercise number."""
    cells = json.loads((ROOT / "solutions" / "07_using_ncsn.ipynb").read_text())["cells"]
    regions: dict[str, str] = {}
    number = None
    for cell in cells:
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            found = re.findall(r"^#+\s.*\bExercise\s+(\d+\.\d+)", source, re.M)
            number = found[-1] if found else number
        elif "# BEGIN SOLUTION" in source:
            body = source.split("# BEGIN SOLUTION")[1].split("# END SOLUTION")[0]
            code = "\n".join(l for l in body.splitlines() if not l.strip().startswith("#"))
            regions[number] = regions.get(number, "") + code
    return regions


@pytest.mark.parametrize("number", ["7.1", "7.2", "7.3", "7.4", "7.5", "7.6", "7.7"])
def test_hints_have_tiers_and_give_away_at_most_30_percent(number):
    tiers = _core.HINTS[number]
    assert len(tiers) == 3
    solution = TOKEN.findall(_solution_regions()[number])
    for tier in tiers:
        share = lcs(TOKEN.findall(tier), solution) / len(solution)
        assert share <= 0.30, f"hint of {number} spells out {share:.0%} of the solution: {tier!r}"


def test_hint_prints_the_tiers_in_turn(capsys):
    _core._hints_shown.pop("7.2", None)
    checks.hint("7.2")
    checks.hint("7.2")
    out = capsys.readouterr().out
    assert "Hint 1 of 3 for exercise 7.2" in out and "Hint 2 of 3" in out


def test_7_1_accepts_an_answer_computed_in_float32(capsys):
    def in_float32(D):
        root = torch.sqrt(torch.tensor(2.0 * D))
        return (root / (root - 3)).item()

    assert_passes(capsys, checks.exercise_7_1, in_float32)


def test_7_2_accepts_a_mask_for_the_whole_batch_and_names_more_mistakes(capsys):
    # a mask of shape (1, H, W) for a batch (N, 1, H, W): indexing with it fails, where does not
    def by_indexing(s, x, y, m, sig, a, z):
        moved = x + 0.5 * a * s(x, sig) + math.sqrt(a) * z
        moved[m.bool()] = y[m.bool()]
        return moved

    out = run_check(capsys, checks.exercise_7_2, by_indexing)
    assert out.startswith("❌") and "raised IndexError" in out and "broadcast it to x" in out, out

    def float_mask_in_where(s, x, y, m, sig, a, z):  # torch.where needs a boolean condition
        return torch.where(m, y, x + 0.5 * a * s(x, sig) + math.sqrt(a) * z)

    out = run_check(capsys, checks.exercise_7_2, float_mask_in_where)
    assert out.startswith("❌") and "raised" in out, out
    assert_explains(capsys, checks.exercise_7_2, lambda s, x, y, m, sig, a, z: torch.where(
        m.bool(), y, x + a * s(x, sig) + math.sqrt(a) * z), "lacks its 1/2")
    assert_explains(capsys, checks.exercise_7_2, lambda s, x, y, m, sig, a, z: inpainting_step(
        s, x, y, m, sig, a, z).clamp(0, 1), "clamped")


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (lambda e, g, T, s, **k: measured_variance_ratio(e, SHIPPED, T, s, **k),
         ["gamma=2, T=2, sigma_min=0.1"]),
        (lambda e, g, T, s, **k: measured_variance_ratio(e, g, 10, s, **k),
         ["T=2", "but Eq. 4 gives"]),
        (lambda e, g, T, s, **k: measured_variance_ratio(e, g, T, 0.01, **k), ["sigma_min=0.1"]),
        (lambda e, g, T, s, **k: measured_variance_ratio(e, g, T - 1, s, **k),
         ["one step fewer or more"]),
        (lambda e, g, T, s, **k: measured_variance_ratio(e, 1.0, T, s, **k),
         ["level i's own variance"]),
    ],
)
def test_7_3_tries_other_ladders_and_step_counts(capsys, answer, phrases):
    assert_explains(capsys, checks.exercise_7_3, (answer, BEST_STEP), *phrases)


SHIPPED = 500.0 ** (1.0 / 21.0)


def test_7_4_catches_noise_scaled_by_the_square_root_of_the_step(capsys):
    def sqrt_alpha_noise(score_fn, sigmas, images, mask, step_size, n_steps_each, generator=None):
        scale = {sigma: math.sqrt(step_size) * sigma / sigmas[-1] for sigma in sigmas}
        return make_inpaint(noise_scale=lambda sigma: scale[sigma])(
            score_fn, sigmas, images, mask, step_size, n_steps_each, generator=generator)

    assert_explains(capsys, exercise_7_4, sqrt_alpha_noise, "the score was shown known pixels")


# ------------------------------------------------------------------- 7.5 and 7.6


def test_7_5_accepts_the_solution_and_a_float32_answer(capsys, grading):
    assert_passes(capsys, checks.exercise_7_5, gaussian_conditional)

    def in_float32(mean, cov, known, values):
        means, covariance = gaussian_conditional(mean.float(), cov.float(), known, values.float())
        return means, covariance

    assert_passes(capsys, checks.exercise_7_5, in_float32)


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (conditional_with(covariance=lambda m, c, k: c[~k][:, ~k]), ["marginal one"]),
        (conditional_with(covariance=lambda m, c, k: c[~k][:, ~k] + _right_gain(m, c, k)
                          @ c[k][:, ~k]), ["adds what x_k explains"]),
        (conditional_with(covariance=lambda m, c, k: torch.linalg.inv(c)[~k][:, ~k]),
         ["block of the precision"]),
        (conditional_with(gain=lambda m, c, k: c[~k][:, k] @ torch.linalg.inv(c)[k][:, k]),
         ["(Sigma^-1)_kk is not (Sigma_kk)^-1"]),
        (conditional_with(means=lambda m, c, k, v: m[~k] + v @ _right_gain(m, c, k).T),
         ["ignore mu_k"]),
        (conditional_with(means=lambda m, c, k, v: (v - m[k]) @ _right_gain(m, c, k).T),
         ["lack mu_u"]),
        (conditional_with(means=lambda m, c, k, v: m[~k] - (v - m[k]) @ _right_gain(m, c, k).T),
         ["the wrong way"]),
        (conditional_with(means=lambda m, c, k, v: m[~k].expand(len(v), -1)),
         ["marginal means"]),
        (lambda m, c, k, v: gaussian_conditional(m, c, ~k, v), ["swapped"]),
        (lambda m, c, k, v: gaussian_conditional(m, c, k, v)[0], ["should return a pair"]),
        (lambda m, c, k, v: (gaussian_conditional(m, c, k, v)[0][0],
                             gaussian_conditional(m, c, k, v)[1]), ["wrong shape"]),
        (lambda m, c, k, v: (gaussian_conditional(m, c, k, v)[0] * float("nan"),
                             gaussian_conditional(m, c, k, v)[1]), ["NaN"]),
        (conditional_with(means=lambda m, c, k, v: m[~k] + (v - m[k]) @ _right_gain(m, c, k)),
         ["applied transposed"]),
        (lambda m, c, k, v: (gaussian_conditional(m, c, k, v)[0],
                             gaussian_conditional(m, c, k, v)[1].expand(len(v), -1, -1)),
         ["one matrix per vector of values", "does not depend on the values"]),
        (lambda m, c, k, v: (gaussian_conditional(m, c, k, v)[0].squeeze(0),
                             gaussian_conditional(m, c, k, v)[1]), ["D = 5", "keep the N axis"]),
    ],
)
def test_7_5_explains_wrong_answers(capsys, answer, phrases):
    assert_explains(capsys, checks.exercise_7_5, answer, *phrases)


PUBLIC_MASKS = {(1, 1, 0, 0), (0, 1, 0), (1, 0, 1, 0, 0)}


def _two_by_two_only(mean, cov, known, values):
    """Right for the public masks, wrong for the hidden ones."""
    means, covariance = gaussian_conditional(mean, cov, known, values)
    public = tuple(int(k) for k in known.tolist()) in PUBLIC_MASKS
    return (means, covariance) if public else (means + 0.1, covariance)


def test_7_5_public_cases_are_three_masks(capsys):
    assert_passes(capsys, checks.exercise_7_5, _two_by_two_only)


def test_7_5_hidden_cases_catch_an_answer_for_the_public_masks_only(capsys, grading):
    assert_explains(capsys, checks.exercise_7_5, _two_by_two_only, "known = [0, 1, 0, 1]")


def test_7_5_names_the_swapped_mask_when_the_shapes_differ(capsys):
    def known_block(mean, cov, known, values):  # right for the 2 + 2 pixels, then swapped
        if len(mean) == 4:
            return gaussian_conditional(mean, cov, known, values)
        return values.clone(), cov[known][:, known]

    assert_explains(capsys, checks.exercise_7_5, known_block, "one column per *known* coordinate")


def test_7_6_accepts_the_solution(capsys):
    assert_passes(capsys, checks.exercise_7_6, 10, _plateau_parts()["exact"] * 1.005)


def test_7_6_is_not_done_while_its_numbers_are_none(capsys):
    assert "not done yet" in run_check(capsys, checks.exercise_7_6, None, None)


def _partial_plateau(name: str) -> float:
    """The plateau as a typical partial answer computes it (cf. _plateau_parts)."""
    if name in _plateau_parts():
        return _plateau_parts()[name]
    toy = GaussianImages()
    known = torch.tensor([True, True, False, False])
    sigma = float(toy.sigmas[-1])
    _, exact_cov = gaussian_conditional(toy.mu, toy.cov, known, toy.mu[known][None])
    perturbed = toy.cov + sigma**2 * torch.eye(4, dtype=torch.float64)
    x_known = toy.mu[known] + torch.randn(4000, 2, dtype=torch.float64,
                                          generator=torch.Generator().manual_seed(9)) * 0.2
    clean_means, chain_cov = gaussian_conditional(toy.mu, perturbed, known, x_known)
    exact_means, _ = gaussian_conditional(toy.mu, toy.cov, known, x_known)
    if name == "clean y":  # the perturbed model's conditional given the clean x_k
        distance = (clean_means - exact_means).square().sum(1).mean() + chain_cov.trace()
    else:  # "noise counted twice": the chain's law with sigma_L^2 more on each unknown pixel
        distance = chain_cov.trace() + 2 * sigma**2
    return (distance / exact_cov.trace()).item()


@pytest.mark.parametrize(
    "steps, plateau, phrases",
    [
        (3, 1.24, ["at T = 3", "not yet forgotten"]),
        (30, 1.24, ["take the smallest"]),
        (7, 1.24, ["choose one of the scan's T"]),
        (10, 1.0, ["would make Algorithm 2 exact"]),
        (10, "covariance only", ["part of the distance is missing"]),
        (10, "noise added", ["adds sigma_L^2 to each unknown pixel"]),
        (10, "denoised", ["*with* the denoising step"]),
        (10, 1.37, ["what the model's step gives", "at T = 300"]),
        (10, "noise counted twice", ["count the last level's noise once"]),
        (10, "clean y", ["conditioned on the clean x_k", "the known pixels carry noise too"]),
        (10, "divided by tr C_s", ["*exact* conditional covariance"]),
        (10, 1.26, ["close, but is it measured?"]),
        (100, 1.24, ["eps = 0.01, the denoised row", "take the smallest"]),
        (10, 0.7, ["too small"]),
        (10, 1.8, ["too large"]),
    ],
)
def test_7_6_explains_wrong_answers(capsys, steps, plateau, phrases):
    plateau = _partial_plateau(plateau) if isinstance(plateau, str) else plateau
    assert_explains(capsys, checks.exercise_7_6, (steps, plateau), *phrases)


@pytest.mark.parametrize("seed", [1, 2])
def test_7_6_answer_does_not_hang_on_the_seed(seed):
    """Ten steps a level is the answer for other draws of the images and the chain too: the
    ratios at T = 3 and T = 10 sit far on either side of the 10 % band."""
    ratios = __import__("scorelab.checks.ch7", fromlist=["_scan_ratios"])._scan_ratios(
        up_to=10, seed=seed)
    assert ratios[3] > 1.2 and abs(ratios[10] - 1.0) < 0.06, ratios


def test_7_6_limits_match_a_long_run_at_a_small_step():
    """The closed forms of _plateau_parts against Algorithm 2 with 1,000 steps of 5e-4 a level
    on 12,000 images: within 2 % (measured: within 0.6 % for three seeds)."""
    toy = GaussianImages(record=False)
    images, mask = toy.top_row_known(12_000, generator=torch.Generator().manual_seed(3))
    parts = _plateau_parts(toy)
    for denoise, name in [(False, "exact"), (True, "denoised")]:
        completed = inpaint(toy, images, mask, step_size=5e-4, n_steps_each=1000,
                            denoise=denoise, clamp=False,
                            generator=torch.Generator().manual_seed(4))
        assert spread_ratio(completed, toy) == pytest.approx(parts[name], rel=0.02), name


def test_spread_ratio_is_one_for_exact_conditional_draws():
    toy = GaussianImages()
    images, _ = toy.top_row_known(20_000, generator=torch.Generator().manual_seed(5))
    known = torch.tensor([True, True, False, False])
    flat = images.reshape(len(images), 4).double()
    means, covariance = gaussian_conditional(toy.mu, toy.cov, known, flat[:, known])
    draws = torch.randn(len(images), 2, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(6))
    flat[:, ~known] = means + draws @ torch.linalg.cholesky(covariance).T
    assert spread_ratio(flat.reshape(images.shape), toy) == pytest.approx(1.0, abs=0.03)


def test_7_3_names_the_authors_step_and_a_formula_in_place_of_a_measurement(capsys):
    from scorelab.noise import langevin_variance_ratio

    def authors(step_size, gamma, n_steps_each, sigma_min, *, n=2000, dim=64, generator=None):
        alpha = step_size / sigma_min**2
        x = gamma * torch.randn(n, dim, generator=generator)
        for _ in range(n_steps_each):
            z = torch.randn(n, dim, generator=generator)
            x = x + alpha * (-x) + math.sqrt(2 * alpha) * z  # x + a s + sqrt(2a) z
        return x.var().item()

    assert_explains(capsys, checks.exercise_7_3, (authors, BEST_STEP), "authors' convention")
    formula = lambda s, g, t, m, **kwargs: langevin_variance_ratio(s, g, t, m)  # noqa: E731
    assert_explains(capsys, checks.exercise_7_3, (formula, BEST_STEP),
                    "calls the package's langevin_variance_ratio")
    own_formula = lambda s, g, t, m, **kwargs: _mixed_ratio(s, g, t, m, 0.5, 1.0)  # noqa: E731
    assert_explains(capsys, checks.exercise_7_3, (own_formula, BEST_STEP), "to six digits")

    def formula_in_float32(step_size, gamma, n_steps_each, sigma_min, **kwargs):
        rho = torch.tensor(1 - step_size / (2 * sigma_min**2), dtype=torch.float32)
        stationary = 2 / (1 + rho)
        return float(rho ** (2 * n_steps_each) * (gamma**2 - stationary) + stationary)

    assert_explains(capsys, checks.exercise_7_3, (formula_in_float32, BEST_STEP),
                    "to six digits", "a simulation")


def test_7_3_refuses_the_packages_rule_in_place_of_a_scan(capsys):
    from scorelab.noise import step_size_for_ladder

    rule = step_size_for_ladder(500.0 ** (1 / 21), 30, 0.01)
    for step in (rule, float(torch.tensor(rule, dtype=torch.float32))):
        assert_explains(capsys, checks.exercise_7_3, (measured_variance_ratio, step),
                        "step_size_for_ladder to six digits", "your own scan")
    at_ten_steps = step_size_for_ladder(500.0 ** (1 / 21), 10, 0.01)  # the chapter's 3.1e-5
    for step in (at_ten_steps, 3.1e-5, 3.3e-5):
        assert_explains(capsys, checks.exercise_7_3, (measured_variance_ratio, step),
                        "T = 10", "T = 30")


def test_7_3_names_the_authors_step_where_twice_the_step_is_stable(capsys):
    """Twice the public case's 1.2e-4 is beyond 2 sigma_L^2: the check names no mistake there
    and does not fail on Eq. 4's own range check (it did, blaming the student's code)."""
    def wrong_at_large_steps(step_size, gamma, n_steps_each, sigma_min, **kwargs):
        factor = 1.0 if step_size < 1e-4 else 1.3
        return factor * _mixed_ratio(step_size, gamma, n_steps_each, sigma_min, 0.5, 1.0)

    out = run_check(capsys, checks.exercise_7_3, wrong_at_large_steps, BEST_STEP)
    assert out.startswith("❌") and "raised" not in out, out
    assert "measured_variance_ratio(0.00012" in out and "but Eq. 4 gives" in out, out


# --- a student's tries: float32 ladders, the package's own answer, side effects ----------------


def test_7_4_accepts_a_fix_that_holds_the_ladder_in_a_float32_tensor(capsys, grading):
    def as_tensor_ladder(score_fn, sigmas, images, mask, step_size, n_steps_each,
                         generator=None):
        return fixed_inpaint(score_fn, torch.as_tensor(sigmas, dtype=torch.float32), images,
                             mask, step_size, n_steps_each, generator=generator)

    def float_of(score_fn, sigmas, *args, **kwargs):  # the loop sees 0-d float32 tensors
        return as_tensor_ladder(lambda x, sigma: score_fn(x, float(sigma)), sigmas, *args,
                                **kwargs)

    assert_passes(capsys, exercise_7_4, as_tensor_ladder)
    assert_passes(capsys, exercise_7_4, float_of)


def test_7_4_refuses_the_packages_inpaint_and_names_too_much_noise_and_a_clamp(capsys):
    from types import SimpleNamespace

    def packaged(score_fn, sigmas, images, mask, step_size, n_steps_each, generator=None):
        model = SimpleNamespace(score=score_fn,
                                sigmas=torch.tensor(sigmas, dtype=torch.float64))
        return inpaint(model, images, mask, step_size=step_size, n_steps_each=n_steps_each,
                       generator=generator)

    assert_explains(capsys, exercise_7_4, packaged, "calls the package's inpaint")
    # about the previous level's noise (the public ladder halves sigma at each level)
    assert_explains(capsys, exercise_7_4, make_inpaint(noise_scale=lambda s: 2.1 * s),
                    "more noise than that")

    def clamp_after_put_back(score_fn, sigmas, images, mask, step_size, n_steps_each,
                             generator=None):
        known = mask.bool().expand(images.shape)
        x = torch.rand(images.shape, generator=generator)
        for sigma in sigmas:
            alpha = step_size * (sigma / sigmas[-1]) ** 2
            y = images + sigma * torch.randn(images.shape, generator=generator)
            for _ in range(n_steps_each):
                z = torch.randn(images.shape, generator=generator)
                x = torch.where(known, y, langevin_move(score_fn, x, sigma, alpha, z, 0))
                x = x.clamp(0, 1)
        x = x + sigmas[-1] ** 2 * score_fn(x, sigmas[-1])
        return torch.where(known, images, x.clamp(0, 1))

    assert_explains(capsys, exercise_7_4, clamp_after_put_back,
                    "clamping x inside the loop", "Clamp once")


def test_7_2_names_a_clamp_a_fresh_draw_a_scaled_score_and_a_write_into_x(capsys):
    def clamped(score_fn, x, y, mask, sigma, alpha, z):
        return torch.where(mask.bool(), y, inpainting_step(score_fn, x, y, mask, sigma, alpha, z)
                           .clamp(0, 1))

    def fresh_noise(score_fn, x, y, mask, sigma, alpha, z):
        return inpainting_step(score_fn, x, y, mask, sigma, alpha, torch.randn_like(z))

    def scaled(score_fn, x, y, mask, sigma, alpha, z):
        return inpainting_step(lambda v, s: score_fn(v, s) / s, x, y, mask, sigma, alpha, z)

    def in_place(score_fn, x, y, mask, sigma, alpha, z):
        x += 0.5 * alpha * score_fn(x, sigma) + math.sqrt(alpha) * z
        return torch.where(mask.bool(), y, x)

    for answer, phrase in [(clamped, "clamped to [0, 1]"), (fresh_noise, "draws noise of its own"),
                           (scaled, "divided by sigma"), (in_place, "its argument x")]:
        assert_explains(capsys, checks.exercise_7_2, answer, phrase)


def test_7_5_refuses_the_checks_own_answer_and_names_a_write_into_values(capsys):
    from scorelab.checks.ch7 import _gaussian_conditional

    def borrowed(mean, cov, known, values):
        gain, covariance = _gaussian_conditional(cov, known)
        return mean[~known] + (values - mean[known]) @ gain.T, covariance

    def in_place(mean, cov, known, values):
        values -= mean[known]
        gain = cov[~known][:, known] @ torch.linalg.inv(cov[known][:, known])
        return mean[~known] + values @ gain.T, cov[~known][:, ~known] - gain @ cov[known][:, ~known]

    assert_explains(capsys, checks.exercise_7_5, borrowed, "calls the package's",
                    "_gaussian_conditional")
    assert_explains(capsys, checks.exercise_7_5, in_place, "its argument values",
                    "changed the tensor it was given in place")


def test_7_5_the_swapped_message_says_to_index_with_the_mask(capsys):
    def by_position(mean, cov, known, values):  # the text's order: unknown block first
        u = int((~known).sum())
        gain = cov[:u, u:] @ torch.linalg.inv(cov[u:, u:])
        return mean[:u] + (values - mean[u:]) @ gain.T, cov[:u, :u] - gain @ cov[u:, :u]

    assert_explains(capsys, checks.exercise_7_5, by_position, "swapped", "with the mask")


def test_7_1_refuses_a_numerical_root_and_names_the_right_example(capsys):
    from scorelab.noise import level_overlap

    def numerical(D):
        low, high = 1.0 + 1e-12, 50.0
        for _ in range(100):
            middle = (low + high) / 2
            low, high = (middle, high) if level_overlap(middle, D) > 0.5 else (low, middle)
        return low

    assert_explains(capsys, checks.exercise_7_1, numerical, "level_overlap", "closed form")
    out = run_check(capsys, checks.exercise_7_1, lambda D: gamma_half(D) - 1)
    example = re.search(r"gamma_half\((\d+)\) is not above 1.*gamma_half\((\d+)\) =", out)
    assert example and example.group(1) == example.group(2), out


def test_7_3_names_an_ignored_generator_and_a_start_of_variance_gamma_to_the_fourth(capsys):
    def unseeded(step_size, gamma, n_steps_each, sigma_min, *, n=2000, dim=64, generator=None):
        return measured_variance_ratio(step_size, gamma, n_steps_each, sigma_min, n=n, dim=dim,
                                       generator=torch.Generator().manual_seed(
                                           torch.randint(10**6, ()).item()))

    def fourth(step_size, gamma, n_steps_each, sigma_min, *, n=2000, dim=64, generator=None):
        return measured_variance_ratio(step_size, gamma**2, n_steps_each, sigma_min, n=n,
                                       dim=dim, generator=generator)

    assert_explains(capsys, checks.exercise_7_3, (unseeded, BEST_STEP), "global random")
    assert_explains(capsys, checks.exercise_7_3, (fourth, BEST_STEP), "gamma^4")
    out = run_check(capsys, checks.exercise_7_3, measured_variance_ratio, None)
    assert "not done yet" in out


def test_7_6_names_the_denoised_rows_measured_value(capsys):
    denoised_row = _plateau_parts()["denoised"] * 1.013  # a T = 300 row, a percent above
    assert_explains(capsys, checks.exercise_7_6, (10, denoised_row), "*with* the denoising step")


def test_7_4_refuses_a_measured_spread_for_a_prediction(capsys):
    assert_explains(capsys, checks.exercise_7_4, (0.99, fixed_inpaint), "measured spread")


def test_7_4_names_too_little_noise_on_the_known_pixels(capsys):
    assert_explains(capsys, exercise_7_4, make_inpaint(noise_scale=lambda s: s**2),
                    "less noise than that", "not sigma_i^2")


@pytest.mark.parametrize(
    "step, phrases",
    [(3.62e-5, ["best step at T = 10", "T = 30"]), (2.53e-5, ["best step at T = 10"]),
     (7.3e-6, ["authors' step_lr", "twice it"])],
    ids=["T = 10, high", "T = 10, low", "authors' convention"],
)
def test_7_3_names_a_scan_at_ten_steps_and_the_authors_halved_step(capsys, step, phrases):
    assert_explains(capsys, checks.exercise_7_3, (measured_variance_ratio, step), *phrases)


@pytest.mark.parametrize("drift, noise, form", [(1.0, 1.0, "x + alpha s + sqrt(alpha) z"),
                                                (0.5, 2.0, "x + alpha/2 s + sqrt(2 alpha) z")])
def test_7_3_names_mixed_step_conventions(capsys, drift, noise, form):
    def mixed(step_size, gamma, n_steps_each, sigma_min, *, n=2000, dim=64, generator=None):
        alpha = step_size / sigma_min**2
        x = gamma * torch.randn(n, dim, generator=generator)
        for _ in range(n_steps_each):
            z = torch.randn(n, dim, generator=generator)
            x = x - drift * alpha * x + math.sqrt(noise * alpha) * z
        return x.var().item()

    assert_explains(capsys, checks.exercise_7_3, (mixed, BEST_STEP), "mixes the two conventions",
                    form)


def test_7_3_refuses_a_measurement_that_calls_the_packages_formula(capsys):
    from scorelab.noise import langevin_variance_ratio

    def jittered(step_size, gamma, n_steps_each, sigma_min, *, generator=None, **kwargs):
        jitter = 1 + 0.003 * float(torch.randn(1, generator=generator))
        return langevin_variance_ratio(step_size, gamma, n_steps_each, sigma_min) * jitter

    assert_explains(capsys, checks.exercise_7_3, (jittered, BEST_STEP), "write it yourself")


# ------------------------------------------------------------------------------------ 7.7


def conditional_weights(weights, means, variances, a):
    log_weights = (weights.log() - 0.5 * variances.log()
                   - (a[:, None] - means[:, 1]) ** 2 / (2 * variances))
    return torch.softmax(log_weights, dim=1)


def best_level():
    """The level a student's least-squares fit of Algorithm 2's weights finds."""
    pair = TwoPixelMixture()
    fits = _level_fits(_measured_77(), pair)
    return pair.sigmas[min(range(len(fits)), key=fits.__getitem__)].item()


def test_7_7_accepts_the_solution_and_either_of_two_levels_that_fit_alike(capsys, grading):
    assert_passes(capsys, checks.exercise_7_7, conditional_weights, best_level())
    levels = TwoPixelMixture().sigmas.tolist()
    fits = _level_fits(_measured_77(), TwoPixelMixture())
    accepted = [level for level, fit in zip(levels, fits) if fit <= 2 * min(fits)]
    assert 1 <= len(accepted) <= 2 and min(accepted) > 0.05  # a middle level, not the last
    for level in accepted:
        assert_passes(capsys, checks.exercise_7_7, conditional_weights, level)


def test_7_7_algorithm_2_misses_the_exact_weight_by_far():
    # the finding the exercise is about: 0.98 exact at a = 0.6, Algorithm 2 near 0.6
    pair = TwoPixelMixture()
    values = KNOWN_VALUES_77.double()
    exact = conditional_weights(pair.weights, pair.means, pair.variances, values)[:, 1]
    measured = _measured_77()
    assert abs(exact[-1].item() - 0.982) < 1e-3
    assert 0.5 < measured[-1].item() < 0.7 and 0.3 < measured[0].item() < 0.5
    assert measured[-1] > measured[0]  # the known pixel is heard, softly


def _log_weights(w, m, v, a, *, drop=(), power=1.0, column=1, half=0.5):
    terms = -(a[:, None] - m[:, column]) ** 2 / (2 * half * 2 * v**power)
    if "prior" not in drop:
        terms = terms + w.log()
    if "norm" not in drop:
        terms = terms - 0.5 * v.log()
    return terms


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (lambda w, m, v, a: w.expand(len(a), -1), ["prior weights"]),
        (lambda w, m, v, a: torch.softmax(_log_weights(w, m, v, a, drop=("norm",)), 1),
         ["1 / sqrt(2 pi v_k)", "is missing"]),
        (lambda w, m, v, a: torch.softmax(_log_weights(w, m, v, a) - 0.5 * v.log(), 1),
         ["two-dimensional density"]),
        (lambda w, m, v, a: torch.softmax(_log_weights(w, m, v, a, drop=("prior",)), 1),
         ["prior weights pi_k are missing"]),
        (lambda w, m, v, a: torch.softmax(_log_weights(w, m, v, a, column=0), 1),
         ["first coordinates"]),
        (lambda w, m, v, a: torch.softmax(_log_weights(w, m, v, a, half=0.25), 1),
         ["lacks its 1/2"]),
        (lambda w, m, v, a: torch.softmax(_log_weights(w, m, v, a, power=2.0) - 0.5 * v.log(), 1),
         ["not standard deviations"]),
        (lambda w, m, v, a: torch.log_softmax(_log_weights(w, m, v, a), 1), ["logs of the weights"]),
        (lambda w, m, v, a: _log_weights(w, m, v, a).exp(), ["sums to", "not 1"]),
        (lambda w, m, v, a: conditional_weights(w, m, v, a).T, ["one row per value of a"]),
        # 0 / 0 far from every component
        (lambda w, m, v, a: (lambda e: e / e.sum(1, keepdim=True))(_log_weights(w, m, v, a).exp()),
         ["NaN", "softmax"]),
    ],
)
def test_7_7_explains_wrong_weights(capsys, answer, phrases, grading):
    assert_explains(capsys, checks.exercise_7_7, (answer, best_level()), *phrases)


def test_7_7_catches_underflow_without_grading(capsys):  # a public case is far from both
    def naive(w, m, v, a):
        dens = w * torch.exp(-(a[:, None] - m[:, 1]) ** 2 / (2 * v)) / torch.sqrt(v)
        return dens / dens.sum(dim=1, keepdim=True)

    assert_explains(capsys, checks.exercise_7_7, (naive, best_level()), "NaN")


@pytest.mark.parametrize(
    "level, phrases",
    [
        (0.01, ["the last level", "Compute the distances"]),
        (1.0, ["the first level"]),
        (0.5, ["not a level of the ladder"]),
        (0.0464, ["a lower level", "steeper"]),
        (0.599, ["a higher level", "flatter"]),
    ],
)
def test_7_7_names_a_wrong_level(capsys, level, phrases):
    levels = TwoPixelMixture().sigmas.tolist()
    level = min(levels, key=lambda s: abs(s - level)) if level != 0.5 else level
    assert_explains(capsys, checks.exercise_7_7, (conditional_weights, level), *phrases)


def test_7_7_not_done_yet_while_the_level_is_unset(capsys):
    out = run_check(capsys, checks.exercise_7_7, conditional_weights, ...)
    assert "❌" not in out and "not" in out.lower(), out


def test_7_7_the_figures_its_answer_quotes():
    """Exercise 7.7's answer and chapter 7's text quote these, at a = 0.6."""
    pair = TwoPixelMixture()
    changes = pair.mode_changes(0.6).tolist()  # T = 20, levels 1, 0.6, 0.36, 0.215, 0.129, ...
    assert abs(changes[3] - 0.5) < 0.05 and abs(changes[4] - 0.31) < 0.05  # half, a third
    assert 0.02 < changes[5] < 0.07 and max(changes[6:]) < 0.005  # one in twenty, almost none
    assert 0.72 < pair.right_mode_weights([0.6], n_steps_each=2000).item() < 0.78  # 0.75
    assert pair.right_mode_weights([0.6], given="clean").item() > 0.94  # 0.96
    # exercise 7.4's buggy loop (y = a at every level) ends at the same weight, 0.60
    buggy = make_inpaint(noise_scale=lambda sigma: 0.0)
    completed = buggy(pair.score, pair.sigmas.tolist(), torch.full((2000, 1, 1, 2), 0.6),
                      pair.mask, pair.step_size, pair.n_steps_each,
                      generator=torch.Generator().manual_seed(77))
    assert 0.56 < (completed[:, 0, 0, 0] > 0.5).float().mean().item() < 0.64
    # the barrier of the law of x~_1 given x~_2 (equal weights): 0.25, 1.7, 4.6 ... 17 nats
    x = torch.linspace(0.0, 1.0, 20_001, dtype=torch.float64)
    barriers = []
    for sigma in pair.sigmas.tolist():
        variance = 0.05**2 + sigma**2
        log_p = torch.logaddexp(-(x - 0.2) ** 2 / (2 * variance), -(x - 0.8) ** 2 / (2 * variance))
        barriers.append((log_p.max() - log_p[10_000]).item())
    assert [round(b, 2) for b in barriers[3:6]] == [0.25, 1.65, 4.6] and 16 < barriers[-1] < 17
    # at a = 0.6, from the left-hand mode: 1.4, 4.0 ... 11.6, 13.8, 14.8 nats
    from_left = []
    for sigma in pair.sigmas.tolist():
        variance = 0.05**2 + sigma**2
        log_w = torch.tensor([-(0.6 - 0.45) ** 2, -(0.6 - 0.55) ** 2]) / (2 * variance)
        log_w = torch.log_softmax(log_w.double(), dim=0)
        log_p = torch.logaddexp(log_w[0] - (x - 0.2) ** 2 / (2 * variance),
                                log_w[1] - (x - 0.8) ** 2 / (2 * variance))
        saddle = log_p[(x > 0.2) & (x < 0.8)].min()
        from_left.append((log_p[x < 0.5].max() - saddle).item())
    assert [round(b, 1) for b in from_left[4:6]] == [1.4, 4.0]
    assert [round(b) for b in from_left[7:]] == [12, 14, 15]


def test_7_7_clean_conditional_needs_a_known_way_of_conditioning():
    with pytest.raises(ValueError, match="given must be"):
        TwoPixelMixture().right_mode_weights([0.5], given="exact")
