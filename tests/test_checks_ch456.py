"""The checks of the new exercises of chapters 4-6 (derive, debug, investigate): the solution
passes (with the hidden cases too), typical wrong answers are named in words, nothing crashes;
and the solution notebooks carry the exercise metadata, levels rising within each chapter."""

from __future__ import annotations

import math
import re
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from _checks_helpers import assert_explains, assert_passes, run_check, stub, with_answer
from scorelab import checks
from scorelab.checks import _core

ROOT = Path(__file__).resolve().parents[1]

exercise_4_4 = with_answer(checks.exercise_4_4, lambda sigma, tau: -sigma / (tau**2 + sigma**2),
                           lambda sigma, tau: tau**2 / sigma, first=False)
exercise_5_2 = with_answer(checks.exercise_5_2,
                           lambda a, s: 0.5 * s.dot(s) ** 2 + 2 * s.dot(a @ s),
                           lambda t: 2 * t, first=False)
exercise_5_3 = with_answer(checks.exercise_5_3, lambda mu, tau: (mu, tau**2), first=False)
exercise_5_4 = with_answer(checks.exercise_5_4, lambda moment: -moment, first=True)
CROSSOVER_SIGMA = 0.8346917205909385  # sqrt(lambda_max) of the training digits' covariance
exercise_6_4 = with_answer(checks.exercise_6_4, CROSSOVER_SIGMA, first=False)
exercise_4_3 = with_answer(checks.exercise_4_3,
                           lambda t, s: (t**2 / (t**2 + s**2), 1 - s**2 / t**2), first=False)


# ---------------------------------------------------------------- chapter 4


def optimal_dsm_score(x, mu, tau, sigma):
    return -(x - mu) / (tau**2 + sigma**2)


def test_4_3_accepts_the_formula(capsys, grading):
    assert_passes(capsys, exercise_4_3, optimal_dsm_score)


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (lambda x, mu, tau, sigma: -(x - mu) / tau**2, ["clean density", "sigma -> 0"]),
        (lambda x, mu, tau, sigma: -(x - mu) / sigma**2, ["noise kernel"]),
        (lambda x, mu, tau, sigma: -(x - mu) / (tau + sigma) ** 2, ["variances do"]),
        (lambda x, mu, tau, sigma: (x - mu) / (tau**2 + sigma**2), ["sign"]),
        (
            lambda x, mu, tau, sigma: -x / (tau**2 + sigma**2),
            ["right when mu = 0", "wrong when mu is not 0"],
        ),
        (
            lambda x, mu, tau, sigma: optimal_dsm_score(x, mu, tau, sigma) if sigma < tau else 0.0,
            ["right for small noise", "wrong", "for large noise"],
        ),
        (lambda x, mu, tau, sigma: -(x - mu) / (tau**2 + sigma), ["wrong at", "test points"]),
        (lambda x, mu, tau, sigma: "minus x", ["should be a number"]),
        (lambda x, mu, tau, sigma: torch.full((3,), 1.0), ["single number"]),
    ],
)
def test_4_3_explains_wrong_formulas(capsys, answer, phrases):
    assert_explains(capsys, exercise_4_3, [answer], *phrases)


def dsm(target_power=2, *, target_sign=1.0, clean=False, reduce=False):
    def loss(model, x, sigma, generator=None):
        noise = torch.randn(x.shape, generator=generator).to(x)
        x_noisy = x + sigma * noise
        target = target_sign * (x - x_noisy) / sigma**target_power
        per_example = 0.5 * ((model(x if clean else x_noisy) - target) ** 2).sum(dim=1)
        return per_example.mean() if reduce else per_example

    return loss


def test_4_4_accepts_the_fix(capsys, grading):
    assert_passes(capsys, exercise_4_4, dsm())


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (dsm(target_power=1), ["bug is still there", "sigma^2"]),
        (dsm(target_sign=-1.0), ["wrong sign"]),
        (dsm(clean=True), ["clean x"]),
        (dsm(target_power=3), ["-z / sigma^2"]),
        (dsm(reduce=True), ["wrong shape"]),
        (lambda m, x, s, generator=None: s**2 * dsm()(m, x, s, generator), ["lambda(sigma)"]),
        (lambda m, x, s, generator=None: dsm()(m, x, s, generator) / x.shape[1],
         ["average over the dimensions"]),
        (lambda m, x, s, generator=None: dsm()(m, x, s, None), ["global random state"]),
    ],
)
def test_4_4_explains_wrong_fixes(capsys, answer, phrases):
    assert_explains(capsys, exercise_4_4, [answer], *phrases)


def test_a_detached_fixed_loss_is_told_it_carries_no_gradient(capsys):
    def detached(model, x, sigma, generator=None):
        z = torch.randn(x.shape, generator=generator)
        return (0.5 * ((model(x + sigma * z) + z / sigma) ** 2).sum(dim=1)).detach()

    assert_explains(capsys, exercise_4_4, detached, "carries no gradient")


def test_4_4_sees_the_symptom_when_the_values_only_match_at_the_tested_sigmas(capsys):
    right, buggy = dsm(), dsm(target_power=1)

    def sly(model, x, sigma, generator=None):  # right at the values tried, buggy in training
        return (right if sigma in (0.3, 2.0) else buggy)(model, x, sigma, generator)

    assert_explains(capsys, exercise_4_4, [sly], "learns the slope", "-0.800")


def kde_curve(mixture, train, test, sigmas, variance=lambda s: s**2, perturbed=False, at=None):
    from scorelab.densities import GaussianMixture
    from scorelab.metrics import fisher_divergence

    n = len(train)
    values = []
    for s in sigmas:
        kde = GaussianMixture(torch.full((n,), 1 / n), train, torch.full((n,), variance(s)))
        target = mixture.perturbed(s).score if perturbed else mixture.score
        values.append(fisher_divergence(kde.score, target, test if at is None else at, True))
    return values


def best_sigma(pick=min, **options):
    def answer(mixture, train, test, sigmas):
        values = kde_curve(mixture, train, test, sigmas, **options)
        return sigmas[pick(range(len(sigmas)), key=values.__getitem__)]

    return answer


def kde_divergences(**options):
    return lambda mixture, train, test, sigmas: kde_curve(mixture, train, test, sigmas, **options)


def test_4_5_accepts_the_experiment(capsys, grading):
    assert_passes(capsys, checks.exercise_4_5, kde_divergences(), best_sigma())


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (best_sigma(pick=max), ["largest divergence"]),
        (best_sigma(variance=lambda s: s), ["kernels of variance sigma would favour"]),
        (best_sigma(perturbed=True), ["the perturbed density p_sigma would favour"]),
        (lambda m, train, test, sigmas: sigmas[12], ["1000 training points", "0.501"]),
        (lambda *args: 0.5, ["not one of the sigmas"]),
        (lambda m, train, test, sigmas: sigmas[15], ["relative Fisher divergence of"]),
    ],
)
def test_4_5_explains_wrong_experiments(capsys, answer, phrases):
    assert_explains(capsys, checks.exercise_4_5, [kde_divergences(), answer], *phrases)


@pytest.mark.parametrize(
    "options, phrases",
    [
        ({"at": "train"}, ["measured on the training points"]),
        ({"variance": lambda s: s}, ["variance sigma", "sigma^2"]),
        ({"perturbed": True}, ["perturbed density p_sigma"]),
    ],
)
def test_4_5_checks_the_curve_itself(capsys, options, phrases):
    def curve(mixture, train, test, sigmas):
        chosen = {**options, "at": train} if options.get("at") == "train" else options
        return kde_curve(mixture, train, test, sigmas, **chosen)

    assert_explains(capsys, checks.exercise_4_5, [curve, best_sigma()], *phrases)


def test_4_5_names_the_arguments_of_fisher_divergence_swapped(capsys):
    from scorelab.densities import GaussianMixture
    from scorelab.metrics import fisher_divergence

    def swapped(mixture, train, test, sigmas):
        n = len(train)
        return [fisher_divergence(mixture.score, GaussianMixture(
            torch.full((n,), 1 / n), train, torch.full((n,), s**2)).score, test, True)
            for s in sigmas]

    assert_explains(capsys, checks.exercise_4_5, [swapped, best_sigma()],
                    "takes the model's score first")


def test_4_5_hidden_cases_catch_a_memorised_answer(capsys, monkeypatch):
    sigmas = [float(s) for s in torch.logspace(-1.5, 0.5, 21)]
    public = {1000: 0.4, 50: 0.5}  # the public cases' best sigmas, by number of training points
    memorised = {n: min(sigmas, key=lambda s: abs(s - v)) for n, v in public.items()}

    def answer(mixture, train, test, sigmas):
        return memorised.get(len(train), 0.1)

    assert_passes(capsys, checks.exercise_4_5, kde_divergences(), answer)
    monkeypatch.setattr(_core, "GRADING", True)
    assert_explains(
        capsys, checks.exercise_4_5, [kde_divergences(), answer], "training points your sigma"
    )


# ---------------------------------------------------------------- chapter 5


def sm_objective(m, kappa, mu, tau):
    return -1 / kappa + (tau**2 + (mu - m) ** 2) / (2 * kappa**2)


def test_5_3_accepts_the_formula(capsys, grading):
    assert_passes(capsys, exercise_5_3, sm_objective)


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (lambda m, kappa, mu, tau: sm_objective(m, kappa, mu, tau) + 2 / kappa, ["trace term has the wrong sign"]),
        (lambda m, kappa, mu, tau: sm_objective(m, kappa, mu, tau) + 1 / (2 * tau**2), ["Fisher divergence"]),
        (lambda m, kappa, mu, tau: -1 / kappa + (tau**2 + (mu - m) ** 2) / kappa**2, ["1/2"]),
        (lambda m, kappa, mu, tau: -1 / kappa + (tau**2 + (mu - m) ** 2) / (2 * kappa), ["square of the variance"]),
        (
            lambda m, kappa, mu, tau: -1 / kappa + tau**2 / (2 * kappa**2),
            ["right when the model's mean m equals mu", "wrong when m differs from mu"],
        ),
        (lambda m, kappa, mu, tau: math.log(kappa), ["wrong at"]),
        (lambda m, kappa, mu, tau: -1 / kappa**2 + (tau**2 + (mu - m) ** 2) / (2 * kappa**4),
         ["standard deviation"]),
    ],
)
def test_5_3_explains_wrong_formulas(capsys, answer, phrases):
    assert_explains(capsys, exercise_5_3, [answer], *phrases)


def sphere_loss(length=lambda d: math.sqrt(d), *, normalise=True, norm_weight=lambda d: 1.0,
                second="vr", create_graph=True, retain_graph=None, rademacher=False):
    def loss(model, x, n_projections=1, generator=None):
        v = torch.randn((n_projections, *x.shape), generator=generator).to(x)
        if rademacher:
            v = v.sign()
        elif normalise:
            v = v / v.norm(dim=-1, keepdim=True) * length(x.shape[-1])
        x = x.detach().unsqueeze(0).expand_as(v).clone().requires_grad_(True)
        score = model(x.reshape(-1, x.shape[-1])).reshape(x.shape)
        jv = torch.autograd.grad((score * v).sum(), x, create_graph=create_graph,
                                 retain_graph=retain_graph)[0]
        other = (score**2).sum(-1) if second == "vr" else (score * v).sum(-1) ** 2
        return ((jv * v).sum(-1) + 0.5 * norm_weight(x.shape[-1]) * other).mean(0)

    return loss


def test_5_4_accepts_directions_of_length_sqrt_d(capsys, grading):
    assert_passes(capsys, exercise_5_4, sphere_loss())


def test_5_4_accepts_the_learned_weight_in_any_float_dtype(capsys, grading):
    for answer in (lambda m: -m, lambda m: -m.float(), lambda m: (-1.0) * m.clone()):
        assert_passes(capsys, checks.exercise_5_4, answer, sphere_loss())


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (lambda m: -torch.linalg.inv(m), ["-C^-1", "weights W by C"]),
        (lambda m: m, ["+C", "sign"]),
        (lambda m: -m @ m, ["-C^2"]),
        (lambda m: -torch.eye(len(m), dtype=m.dtype), ["true score's W = -I"]),
        (lambda m: -torch.trace(m) / len(m) * torch.eye(len(m), dtype=m.dtype),
         ["mean of C's diagonal"]),
        (lambda m: -m / len(m), ["divides by D once more"]),
        (lambda m: -2 * m, ["two traces", "gradient with respect to W"]),
        (lambda m: (-m).numpy(), ["return W as a (3, 3) tensor"]),
        (lambda m: -m[:2, :2], ["learned_weight(C)"]),
    ],
)
def test_5_4_names_wrong_learned_weights(capsys, answer, phrases):
    assert_explains(capsys, checks.exercise_5_4, (answer, sphere_loss()), *phrases)


def test_5_4_checks_the_learned_weight_before_the_fix(capsys):
    out = run_check(capsys, checks.exercise_5_4, lambda m: m, stub)
    assert out.startswith("❌") and "+C" in out, out


def test_5_4_refuses_to_swap_the_sphere_for_gaussian_directions(capsys):
    # E[v v^T] = I as well, but the exercise asks to fix the sphere, and the success message
    # speaks of directions of length sqrt(D)
    assert_explains(capsys, exercise_5_4, sphere_loss(normalise=False),
                    "directions are Gaussian", "keeps them on a sphere")


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (sphere_loss(lambda d: 1.0), ["bug is still there", "1/D times the true score"]),
        (sphere_loss(lambda d: float(d)), ["length D"]),
        (sphere_loss(lambda d: 1 / math.sqrt(d)), ["divided by sqrt(D)"]),
        (lambda *args, **kwargs: sphere_loss()(*args, **kwargs).detach(), ["no gradient"]),
        (lambda *args, **kwargs: sphere_loss()(*args, **kwargs).sum(), ["wrong shape"]),
    ],
)
def test_5_4_explains_wrong_fixes(capsys, answer, phrases):
    assert_explains(capsys, exercise_5_4, [answer], *phrases)


def test_5_4_describes_the_unfixed_bug_without_handing_out_the_fix(capsys):
    out = run_check(capsys, exercise_5_4, sphere_loss(lambda d: 1.0))
    assert out.startswith("❌") and "bug is still there" in out and "1/D" in out
    for answer in ("sqrt(D)", "I / D", "E[v v^T]"):
        assert answer not in out, out
    assert "I / D" not in checks.HINTS["5.4"][1]  # the equation tier asks, it does not tell


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (sphere_loss(lambda d: 1.0, norm_weight=lambda d: 1 / d),
         ["divided the norm term by D", "right minimiser"]),
        (sphere_loss(lambda d: 1.0, second="ssm"),
         ["plain SSM term 1/2 (v^T s)^2", "kept the unit vectors"]),
        (sphere_loss(second="ssm"), ["plain SSM", "fixes SSM-VR"]),
        (sphere_loss(create_graph=False), ["trace term carries no gradient", "create_graph=True"]),
        (sphere_loss(create_graph=False, retain_graph=True),
         ["trace term carries no gradient", "create_graph=True"]),
        (sphere_loss(rademacher=True), ["Rademacher", "uniform"]),
    ],
    ids=["norm term / D", "unit + SSM term", "plain SSM", "no create_graph",
         "no create_graph, retained", "rademacher"],
)
def test_5_4_names_other_fixes_that_are_not_asked_for(capsys, answer, phrases):
    assert_explains(capsys, exercise_5_4, [answer], *phrases)


def test_5_4_sees_the_symptom_in_other_dimensions(capsys):
    # fixed only in the dimension where the values are compared
    sly = sphere_loss(lambda d: math.sqrt(d) if d == 5 else 1.0)
    assert_explains(capsys, exercise_5_4, [sly], "8 dimensions", "1/D = 0.125")


def exact_spread_ratio(matrix, *, gaussian_scale=None):
    """5.5's derived ratio; ``gaussian_scale`` replaces the sphere's moment factor D / (D + 2)."""
    dim = matrix.shape[0]
    sym = (matrix + matrix.T) / 2
    frobenius, trace = (sym**2).sum().item(), torch.trace(matrix).item()
    factor = dim / (dim + 2) if gaussian_scale is None else gaussian_scale
    return math.sqrt(factor * (1 - trace**2 / (dim * frobenius)))


#: 5.5 with its derived ratio right, so that a test varies the simulation
exercise_5_5 = with_answer(checks.exercise_5_5, exact_spread_ratio, first=False)


def spread_ratio(transform=lambda r: r, length=lambda d: math.sqrt(d)):
    def answer(matrix, n_draws=20_000, generator=None):
        d = matrix.shape[0]
        g = torch.randn(n_draws, d, generator=generator)
        s = torch.randn(n_draws, d, generator=generator)
        s = s / s.norm(dim=1, keepdim=True) * length(d)
        ratio = (((s @ matrix) * s).sum(1).std() / ((g @ matrix) * g).sum(1).std()).item()
        return transform(ratio)

    return answer


def test_5_5_accepts_the_simulation(capsys, grading):
    assert_passes(capsys, exercise_5_5, spread_ratio())


def signs_or_squares(*, rademacher=False, squares=False):
    """5.5 with random-sign "sphere" directions, or with ||v A||^2 instead of v^T A v."""
    def answer(matrix, n_draws=20_000, generator=None):
        d = matrix.shape[0]
        g = torch.randn(n_draws, d, generator=generator)
        s = torch.randn(n_draws, d, generator=generator)
        s = s.sign() if rademacher else s / s.norm(dim=1, keepdim=True) * math.sqrt(d)

        def form(v):
            return ((v @ matrix) ** 2).sum(1) if squares else ((v @ matrix) * v).sum(1)

        return (form(s).std() / form(g).std()).item()

    return answer


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (signs_or_squares(rademacher=True), ["for diag(1, ..., 10)", "Rademacher"]),
        (signs_or_squares(squares=True), ["||v A||^2", "v^T A v"]),
    ],
    ids=["rademacher", "squared length"],
)
def test_5_5_names_other_directions_and_other_forms_on_public_cases(capsys, answer, phrases):
    assert_explains(capsys, exercise_5_5, [answer], *phrases)


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (spread_ratio(lambda r: r**2), ["ratio of the variances"]),
        (spread_ratio(lambda r: 1 / r), ["Gaussian over sphere"]),
        (spread_ratio(length=lambda d: 1.0), ["length 1"]),
        (lambda *args, **kwargs: 0.5, ["differently seeded generators", "simulation"]),
        (lambda matrix, n_draws=20_000, generator=None: 0.3 + 1e-3 * torch.rand(
            n_draws, generator=generator).mean().item(), ["your ratio is 0.30"]),
        (lambda *args, **kwargs: "smaller", ["should be a number"]),
    ],
)
def test_5_5_explains_wrong_answers(capsys, answer, phrases):
    assert_explains(capsys, exercise_5_5, [answer], *phrases)


def sliced(*, vr=False, draw="MND", dtype=torch.float32, rademacher=False, create_graph=True,
           retain_graph=None, shared=False, one_copy=False, detach_second=False, at_least=1):
    """A 5.1 (or with ``vr`` 5.2) answer whose directions may be drawn another way than the
    reference's (another order or dtype, random signs), or with one of the mistakes: no
    create_graph, directions shared by the batch, one copy of x for all the projections, a
    detached second term, more projections than asked."""
    def loss(model, x, n_projections=1, generator=None):
        (n, d), m = x.shape, max(n_projections, at_least)
        if shared:
            v = torch.randn((m, 1, d), generator=generator).expand(m, n, d)
        elif draw == "NMD":
            v = torch.randn((n, m, d), generator=generator, dtype=dtype).transpose(0, 1)
        else:
            v = torch.randn((m, n, d), generator=generator, dtype=dtype)
        v = (v.sign() if rademacher else v).to(x)
        if one_copy:  # the pitfall of the stub's HINT
            copies = x.detach().clone().requires_grad_(True)
            score = model(copies).expand(m, n, d)
        else:
            copies = x.detach().unsqueeze(0).expand(m, n, d).clone().requires_grad_(True)
            score = model(copies.reshape(-1, d)).reshape(m, n, d)
        jv = torch.autograd.grad((score * v).sum(), copies, create_graph=create_graph,
                                 retain_graph=retain_graph)[0]
        second = 0.5 * (score**2).sum(-1) if vr else 0.5 * (score * v).sum(-1) ** 2
        return ((jv * v).sum(-1) + (second.detach() if detach_second else second)).mean(0)

    return loss


def jvp_loop(vr=False):
    """5.1 / 5.2 with torch.func.jvp, one projection at a time, directions drawn in float64."""
    from torch.func import jvp

    def loss(model, x, n_projections=1, generator=None):
        v = torch.randn((n_projections, *x.shape), generator=generator, dtype=torch.float64).to(x)
        terms = []
        for direction in v:
            score, jv = jvp(model, (x,), (direction,))
            second = 0.5 * (score**2).sum(1) if vr else 0.5 * (score * direction).sum(1) ** 2
            terms.append((jv * direction).sum(1) + second)
        return torch.stack(terms).mean(0)

    return loss


SLICED_CHECKS = [(checks.exercise_5_1, False), (exercise_5_2, True)]


@pytest.mark.parametrize("check, vr", SLICED_CHECKS, ids=["5.1", "5.2"])
@pytest.mark.parametrize(
    "options",
    [{"dtype": torch.float64}, {"draw": "NMD"}, {"rademacher": True},
     {"rademacher": True, "draw": "NMD"}, "jvp"],
    ids=["float64", "N-M-D order", "rademacher", "rademacher N-M-D", "torch.func.jvp"],
)
def test_5_1_and_5_2_accept_directions_drawn_another_way(capsys, check, vr, options):
    # the values differ from the reference's, so the statistical check decides
    answer = jvp_loop(vr) if options == "jvp" else sliced(vr=vr, **options)
    assert_passes(capsys, check, answer)


@pytest.mark.parametrize("check, vr", SLICED_CHECKS, ids=["5.1", "5.2"])
@pytest.mark.parametrize(
    "options",
    [
        {"create_graph": False},  # the reference's draws: the graph is freed
        {"create_graph": False, "retain_graph": True},
        {"create_graph": False, "dtype": torch.float64},  # other draws: the statistical check
        {"create_graph": False, "dtype": torch.float64, "retain_graph": True},
        {"create_graph": False, "draw": "NMD", "retain_graph": True},
        {"create_graph": False, "rademacher": True, "retain_graph": True},
    ],
    ids=["freed", "retained", "float64 freed", "float64 retained", "N-M-D", "rademacher"],
)
def test_5_1_and_5_2_see_a_trace_term_without_gradient(capsys, check, vr, options):
    assert_explains(capsys, check, sliced(vr=vr, **options),
                    "trace term carries no gradient", "create_graph=True")


@pytest.mark.parametrize("check, vr", SLICED_CHECKS, ids=["5.1", "5.2"])
def test_5_1_and_5_2_refuse_the_exact_loss(capsys, check, vr):
    from scorelab.training import exact_score_matching_loss

    def exact(model, x, n_projections=1, generator=None):
        return exact_score_matching_loss(model, x)

    assert_explains(capsys, check, exact, "does not depend on the random directions",
                    "exact_score_matching_loss")


@pytest.mark.parametrize("check, vr", SLICED_CHECKS, ids=["5.1", "5.2"])
def test_5_1_and_5_2_refuse_directions_shared_by_the_batch(capsys, check, vr):
    assert_explains(capsys, check, sliced(vr=vr, shared=True),
                    "shared by the whole batch", "(n_projections, *x.shape)")


@pytest.mark.parametrize("check, vr", SLICED_CHECKS, ids=["5.1", "5.2"])
def test_5_1_and_5_2_name_one_copy_of_x_for_all_projections(capsys, check, vr):
    assert_explains(capsys, check, sliced(vr=vr, one_copy=True),
                    "share one copy of x", "own copy of the batch")


@pytest.mark.parametrize("check, vr", SLICED_CHECKS, ids=["5.1", "5.2"])
def test_5_1_and_5_2_see_a_detached_second_term_drawn_another_way(capsys, check, vr):
    assert_explains(capsys, check, sliced(vr=vr, draw="NMD", detach_second=True),
                    "second term carries no gradient")


def test_5_1_sees_too_small_a_spread(capsys):
    # right on average, with right gradients, but ten directions where one was asked for
    assert_explains(capsys, checks.exercise_5_1, sliced(draw="NMD", at_least=10),
                    "with one projection", "exactly n_projections")


# ---------------------------------------------------------------- chapter 6


def annealed_step(eps, sigma_i, sigma_L):
    return eps * sigma_i**2 / sigma_L**2


def variance_ratio(eps, sigma_L, gamma, n_steps, *, authors=False):
    u = eps / sigma_L**2
    r = 1 - u if authors else 1 - u / 2
    kept = r ** (2 * n_steps)
    return kept * gamma**2 + (2 * u if authors else u) * (1 - kept) / (1 - r**2)


def drift_to_noise(eps, sigma_i, sigma_L):
    return math.sqrt(eps) / (2 * sigma_L)


STEP_ANSWERS = (variance_ratio, drift_to_noise)


def test_6_3_accepts_the_two_formulas(capsys, grading):
    assert_passes(capsys, checks.exercise_6_3, *STEP_ANSWERS)


def test_6_3_accepts_a_variance_ratio_written_with_torch_functions(capsys, grading):
    """Exercise 6.4 calls variance_ratio on a tensor grid: torch functions must be fine."""
    def with_torch(eps, sigma_L, gamma, n_steps):
        u = eps / sigma_L**2
        kept = torch.exp(2 * n_steps * torch.log1p(-u / 2))  # r^(2T)
        return kept * gamma**2 + (1 - kept) / (1 - u / 4)

    assert_passes(capsys, checks.exercise_6_3, with_torch, drift_to_noise)


def test_6_3_accepts_a_ratio_computed_from_the_step(capsys, grading):
    def from_the_step(eps, sigma_i, sigma_L):
        alpha_i = annealed_step(eps, sigma_i, sigma_L)
        return (alpha_i / 2 / sigma_i) / math.sqrt(alpha_i)

    assert_passes(capsys, checks.exercise_6_3, variance_ratio, from_the_step)


@pytest.mark.parametrize(
    "which, answer, phrases",
    [
        (
            0,
            lambda eps, sl, g, t: variance_ratio(eps, sl, g, t, authors=True),
            ["authors' convention"],
        ),
        (0, lambda eps, sl, g, t: 1 / (1 - eps / (4 * sl**2)), ["stationary ratio"]),
        (0, lambda eps, sl, g, t: (1 - eps / (2 * sl**2)) ** (2 * t) * g**2,
         ["only the start is left"]),
        (
            0,
            lambda eps, sl, g, t: variance_ratio(eps, sl, math.sqrt(g), t),
            ["gamma^2, not gamma"],
        ),
        (1, lambda eps, si, sl: math.sqrt(eps) / sl, ["drift_to_noise", "1/2 is missing"]),
        (1, lambda eps, si, sl: eps / (4 * sl**2), ["mean squared lengths"]),
        (1, lambda eps, si, sl: math.sqrt(eps) / (2 * sl * si), ["not 1 / sigma_i^2 long"]),
        (1, lambda eps, si, sl: 1 / (2 * si), ["sqrt(alpha_i) long"]),
        (1, lambda eps, si, sl: math.sqrt(eps) / (2 * si), ["not eps at every level"]),
        (1, lambda eps, si, sl: math.sqrt(eps) / (2 * sl) * (si / sl) ** 0.1,
         ["right at the last level", "wrong at the larger levels"]),
    ],
)
def test_6_3_explains_wrong_formulas(capsys, which, answer, phrases):
    answers = list(STEP_ANSWERS)
    answers[which] = answer
    assert_explains(capsys, checks.exercise_6_3, answers, *phrases)


def test_6_3_names_the_stub_not_done(capsys):
    out = run_check(capsys, checks.exercise_6_3, stub, drift_to_noise)
    assert out.startswith("⏳") and "not done yet" in out


def ncsnv2_epsilon(sigmas, n_steps, *, authors=False):
    sigma_L, gamma = float(sigmas[-1]), float(sigmas[-2] / sigmas[-1])
    grid = sigma_L**2 * torch.logspace(-8, math.log10(3.9), 3000, dtype=torch.float64)
    ratios = variance_ratio(grid, sigma_L, gamma, n_steps, authors=authors)
    return grid[int(torch.argmin(ratios))].item()


def test_6_4_accepts_the_search(capsys, grading):
    assert_passes(capsys, exercise_6_4, ncsnv2_epsilon)


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (lambda s, t: ncsnv2_epsilon(s, t, authors=True), ["half the paper-convention value"]),
        (lambda s, t: -1e-5, ["positive number"]),
        (lambda s, t: ncsnv2_epsilon(s, t) * 1.3, ["gives the ratio"]),
        (lambda s, t: ncsnv2_epsilon(s, t) * 1.1, ["near the best", "finer grid"]),
        (lambda s, t: float(s[-1]) ** 2, ["gives the ratio"]),
    ],
)
def test_6_4_explains_wrong_answers(capsys, answer, phrases):
    assert_explains(capsys, exercise_6_4, [answer], *phrases)


def digit_spreads(split="train"):
    from scorelab.data import load_digits

    pixels = load_digits(split).flatten(start_dim=1).double()
    covariance = torch.cov(pixels.T)
    return pixels, covariance, torch.linalg.eigvalsh(covariance)


def test_6_4_accepts_the_crossover_from_either_covariance_estimate(capsys, grading):
    pixels, _, spreads = digit_spreads()
    assert math.sqrt(spreads[-1]) == pytest.approx(CROSSOVER_SIGMA, rel=1e-9)
    biased = torch.linalg.eigvalsh(torch.cov(pixels.T, correction=0))[-1].sqrt().item()
    for answer in (CROSSOVER_SIGMA, biased, np.float32(CROSSOVER_SIGMA),
                   torch.tensor(CROSSOVER_SIGMA)):
        assert_passes(capsys, checks.exercise_6_4, ncsnv2_epsilon, answer)


def _crossover_slips():
    from scorelab.data import load_digits

    pixels, covariance, spreads = digit_spreads()
    widest = float(spreads[-1])
    return [
        (widest, ["crossover_sigma = 0.69671", "its square root"]),
        (math.sqrt(float(spreads.mean())), ["average variance of a pixel"]),
        (math.sqrt(float(covariance.diagonal().max())), ["widest single pixel"]),
        (math.sqrt(float(spreads.sum())), ["total variance"]),
        (math.sqrt(float(torch.linalg.eigvalsh(pixels.T @ pixels / len(pixels))[-1])),
         ["second moment about 0", "centre them"]),
        (math.sqrt(widest / 2), ["the digits' plus sigma^2"]),
        (math.sqrt(float(digit_spreads("test")[2][-1])), ["test digits"]),
        (16 * math.sqrt(widest), ["0 to 16"]),
        (0.8469, ["a level of the shipped ladder"]),
        (0.63, ["a level of the shipped ladder"]),
        (math.sqrt(float(torch.linalg.eigvalsh(torch.cov(
            load_digits("all").flatten(start_dim=1).double().T))[-1])), ["all the digits"]),
        (0.83, ["give it unrounded"]),
        (0.5, ["what is its covariance", "Find the largest over u"]),
    ]


@pytest.mark.parametrize("answer, phrases", _crossover_slips(), ids=lambda v: str(v)[:12])
def test_6_4_names_wrong_crossovers(capsys, answer, phrases):
    assert_explains(capsys, checks.exercise_6_4, (ncsnv2_epsilon, answer), *phrases)


def test_6_4_waits_for_the_crossover(capsys):
    for unset in (..., None):
        out = run_check(capsys, checks.exercise_6_4, ncsnv2_epsilon, unset)
        assert out.startswith("⏳") and "not done yet" in out


def test_6_4_hidden_cases_catch_a_memorised_answer(capsys, monkeypatch):
    from scorelab.noise import geometric_sigmas

    public = [((5.0, 0.01, 22), 10), ((1.0, 0.01, 10), 100)]  # the two ladders shown
    memorised = {t: ncsnv2_epsilon(geometric_sigmas(*ladder), t) for ladder, t in public}
    assert_passes(capsys, exercise_6_4, lambda s, t: memorised[t])
    monkeypatch.setattr(_core, "GRADING", True)
    assert_explains(capsys, exercise_6_4, [lambda s, t: memorised.get(t, 1e-3)], "T = 5")


def score_norm_profile(score_fn, x, sigmas, generator=None, *, mistake=None):
    """The profile sigma E|s(x + sigma z, sigma)| / sqrt(D) (L,), or one named mistake."""
    dim = x[0].numel()
    values = []
    for sigma in sigmas.tolist():
        noisy = x if mistake == "clean" else x + sigma * torch.randn(x.shape, generator=generator)
        s = score_fn(noisy, sigma)
        if mistake == "batch":
            norm = s.norm()
        elif mistake in ("row norms", "row norms by row length"):
            norm = s.norm(dim=-1).mean()
        else:
            norm = s.reshape(len(x), -1).norm(dim=1).mean()
        factor = {"no sigma": 1.0, "sigma^2": sigma**2}.get(mistake, sigma)
        divisor = {"no sqrt(D)": 1.0, "by D": dim, "last dim": math.sqrt(x.shape[-1]),
                   "row norms by row length": math.sqrt(x.shape[-1])}.get(
            mistake, math.sqrt(dim))
        values.append(factor * norm / divisor)
    return torch.stack(values)


def network_score(model, *, ladder=None, divide=False, shift=0):
    """A score function of a level-indexed network: right by default; with the colleague's
    ascending ladder, the NCSNv2 division by sigma, or an off-by-one level."""
    levels = model.sigmas.cpu() if ladder is None else ladder

    def score_fn(x, sigma):
        level = int(torch.argmin((levels - sigma).abs())) + shift
        out = model(x, torch.full((x.shape[0],), level))
        return out / sigma if divide else out

    return score_fn


COLLEAGUES_LADDER = torch.logspace(math.log10(0.01), math.log10(5.0), 22)


def test_6_5_accepts_the_fix(capsys, grading):
    assert_passes(capsys, checks.exercise_6_5, score_norm_profile, network_score)


def test_6_5_accepts_a_root_mean_square_profile(capsys):
    def rms_profile(score_fn, x, sigmas, generator=None):
        return torch.stack([
            s * score_fn(x + s * torch.randn(x.shape, generator=generator), s).pow(2).mean().sqrt()
            for s in sigmas.tolist()
        ])

    assert_passes(capsys, checks.exercise_6_5, rms_profile, network_score)


def test_6_5_asks_for_the_colleagues_function_debugged_not_replaced(capsys):
    from scorelab.scores import as_score_fn

    def wrapped(model):
        package = as_score_fn(model, model.sigmas)
        return lambda x, sigma: package(x, sigma)

    for replaced in (lambda model: as_score_fn(model, model.sigmas), wrapped):
        assert_explains(capsys, checks.exercise_6_5, [score_norm_profile, replaced],
                        "hands the work to the package's as_score_fn", "two bugs")


@pytest.mark.parametrize(
    "mistake, phrases",
    [
        ("no sigma", ["misses the factor sigma"]),
        ("sigma^2", ["sigma^2 where it needs sigma"]),
        ("no sqrt(D)", ["not divided by sqrt(D)", "is 64 here"]),
        ("by D", ["divides by D = 64"]),
        ("last dim", ["divides by sqrt(8), the last dimension", "x[0].numel()"]),
        ("row norms", ["norm over the last dimension only", "x.flatten(1)"]),
        ("row norms by row length", ["norm of each row of an image", "x.flatten(1)"]),
        ("clean", ["at the clean data"]),
        ("batch", ["one norm over the whole batch"]),
    ],
)
def test_6_5_explains_a_wrong_profile(capsys, mistake, phrases):
    answer = lambda f, x, s, g=None: score_norm_profile(f, x, s, g, mistake=mistake)  # noqa: E731
    assert_explains(capsys, checks.exercise_6_5, [answer, network_score], *phrases)


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (lambda m: network_score(m, ladder=COLLEAGUES_LADDER, divide=True),
         ["still has both of the colleague's bugs", "score_norm_profile"]),
        (lambda m: network_score(m, ladder=COLLEAGUES_LADDER),
         ["the model's score at another level", "not at sigma = 5", "level by level"]),
        (lambda m: network_score(m, divide=True), ["at the right level divided by sigma"]),
        (lambda m: network_score(m, ladder=COLLEAGUES_LADDER.flip(0)),
         ["a model with 7 levels", "shipped model's ladder", "read the ladder from the model"]),
        (lambda m: network_score(m, shift=1), ["an off-by-one", "level 1 instead of 0"]),
        (lambda m: m, ["raised ValueError", "labels must be an integer tensor"]),
        (lambda m: 42, ["must return a function"]),
    ],
)
def test_6_5_explains_a_wrong_network_score(capsys, answer, phrases):
    assert_explains(capsys, checks.exercise_6_5, [score_norm_profile, answer], *phrases)


def test_6_5_the_colleagues_bugs_break_the_bound_the_fix_keeps():
    """The exercise's premise, measured: the colleague's profile is far above 1 at the largest
    level, the fixed one is at most about 1 at every level and close to 1 at the largest."""
    from scorelab.data import load_digits
    from scorelab.ncsn import load_pretrained

    model, digits = load_pretrained(), load_digits("test")[:128]
    with torch.no_grad():
        fixed = score_norm_profile(network_score(model), digits, model.sigmas,
                                   torch.Generator().manual_seed(0))
        buggy = score_norm_profile(network_score(model, ladder=COLLEAGUES_LADDER, divide=True),
                                   digits, model.sigmas, torch.Generator().manual_seed(0))
    assert fixed.max() < 1.05 and fixed[0] > 0.95, fixed
    assert buggy[0] > 20, buggy


# ---------------------------------------------------------------- all of them


NEW_CHECKS = [
    (checks.exercise_4_3, 2),
    (checks.exercise_4_4, 3),
    (checks.exercise_4_5, 2),
    (checks.exercise_5_3, 2),
    (checks.exercise_5_4, 2),
    (checks.exercise_5_5, 2),
    (checks.exercise_6_3, 2),
    (checks.exercise_6_4, 2),
    (checks.exercise_6_5, 2),
]


@pytest.mark.parametrize("check, n_answers", NEW_CHECKS, ids=lambda c: getattr(c, "__name__", ""))
def test_an_unfilled_stub_is_not_done_yet(capsys, check, n_answers):
    out = run_check(capsys, check, *[stub] * n_answers)
    assert out.startswith("⏳") and "not done yet" in out


@pytest.mark.parametrize("check, n_answers", NEW_CHECKS, ids=lambda c: getattr(c, "__name__", ""))
def test_a_non_function_is_refused_in_words(capsys, check, n_answers):
    out = run_check(capsys, check, *[42] * n_answers)
    assert out.startswith("❌") and "pass your function itself" in out


HEADING = re.compile(r"^## Exercise (\d+)\.(\d+): .* (★+)$", re.MULTILINE)


@pytest.mark.parametrize(
    "name", ["04_denoising_score_matching", "05_sliced_score_matching", "06_ncsn"]
)
def test_solutions_mark_every_exercise(name):
    """Each exercise heading carries its metadata and stars; levels never fall within a chapter;
    each chapter has a derive, an implement and an investigate exercise, each with hint tiers."""
    cells = nbformat.read(ROOT / "solutions" / f"{name}.ipynb", as_version=4).cells
    marked = []
    for cell in cells:
        match = HEADING.search(cell.source) if cell.cell_type == "markdown" else None
        if match:
            meta = cell.metadata.get("exercise")
            assert meta, f"{name}: the heading of exercise {match[1]}.{match[2]} has no metadata"
            assert meta["id"] == f"{match[1]}.{match[2]}"
            assert meta["level"] == len(match[3]) and meta["level"] in (1, 2, 3)
            assert meta["kind"] in ("derive", "implement", "investigate", "debug")
            marked.append(meta)
    assert len(marked) >= 4
    assert [m["level"] for m in marked] == sorted(m["level"] for m in marked)
    assert {"derive", "implement", "investigate"} <= {m["kind"] for m in marked}
    for meta in marked:
        assert len(_core.HINTS[meta["id"]]) == 3, f"exercise {meta['id']}: idea, equation, checks"


def test_chapter_6_lists_the_step_size_exercise():
    """Chapter 6's text on the step size points to Exercise 6.3, which its table lists."""
    cells = nbformat.read(ROOT / "book" / "06_ncsn.ipynb", as_version=4).cells
    text = "\n".join(c.source for c in cells if c.cell_type == "markdown")
    assert "| 6.3 | the step size | derive | ★★★ |" in text
    assert "Exercise 6.3" in text.split("## Exercises")[0]


def test_6_1_sees_a_forward_that_hands_the_work_back_to_the_package(capsys):
    from scorelab.ncsn import ConditionalInstanceNorm2dPlus

    class Lazy(ConditionalInstanceNorm2dPlus):
        def forward(self, x, labels):
            return super().forward(x, labels)

    assert_explains(capsys, checks.exercise_6_1, Lazy, "super().forward")
    out = ConditionalInstanceNorm2dPlus(2, 2)(torch.ones(1, 2, 3, 3), torch.zeros(1, dtype=torch.long))
    assert out.shape == (1, 2, 3, 3)  # the package's forward is back after the check


def test_6_4_tries_a_second_ladder_so_a_constant_fails(capsys):
    assert_explains(capsys, exercise_6_4, lambda sigmas, n_steps: 3.13e-5,
                    "from 1 to 0.01 in 10 levels")


def other_draws_loss(kind):
    """SSM-VR with unbiased directions drawn otherwise than the exercise's code draws them."""
    def loss(model, x, n_projections=1, generator=None):
        shape = (n_projections, *x.shape)
        if kind == "signs":
            v = (torch.randint(0, 2, shape, generator=generator) * 2 - 1).to(x)
        else:  # Gaussian draws in another order, normalised to length sqrt(D)
            v = torch.randn((x.shape[1], n_projections, x.shape[0]), generator=generator)
            v = v.permute(1, 2, 0).to(x)
            v = v / v.norm(dim=-1, keepdim=True) * math.sqrt(x.shape[-1])
        x = x.detach().unsqueeze(0).expand_as(v).clone().requires_grad_(True)
        score = model(x.reshape(-1, x.shape[-1])).reshape(x.shape)
        jv = torch.autograd.grad((score * v).sum(), x, create_graph=True)[0]
        return ((jv * v).sum(-1) + 0.5 * (score**2).sum(-1)).mean(0)

    return loss


@pytest.mark.parametrize("kind", ["signs", "reordered"])
def test_5_4_names_unbiased_directions_drawn_another_way(capsys, kind):
    """Random signs from randint, or the sphere's directions from draws in another order,
    match no reference value; the check sees that they train the true score and says so."""
    assert_explains(capsys, exercise_5_4, [other_draws_loss(kind)],
                    "learns the true score", "change only their length")


def test_4_5_names_a_mean_of_per_point_ratios(capsys):
    """The text warns against it; the check names it when a student does it anyway."""
    from scorelab.densities import GaussianMixture

    def per_point(mixture, train, test, sigmas):
        n, values = len(train), []
        for s in sigmas:
            kde = GaussianMixture(torch.full((n,), 1 / n), train, torch.full((n,), s**2))
            true = mixture.score(test)
            ratios = ((kde.score(test) - true) ** 2).sum(1) / (true**2).sum(1)
            values.append(float(ratios.mean()))
        return values

    assert_explains(capsys, checks.exercise_4_5, [per_point, best_sigma()],
                    "a mean of per-point ratios", "ratio of means")


def test_5_5_names_directions_of_length_d(capsys):
    def length_d(matrix, n_draws, generator=None):
        dim = matrix.shape[0]
        draws = [torch.randn(n_draws, dim, generator=generator) for _ in range(2)]
        sphere = draws[0] / draws[0].norm(dim=1, keepdim=True) * dim
        quad = lambda v: ((v @ matrix) * v).sum(1)  # noqa: E731
        return (quad(sphere).std() / quad(draws[1]).std()).item()

    assert_explains(capsys, exercise_5_5, [length_d], "length D", "sqrt(D)")


# --- own work, own inputs and every argument used (chapter 5) --------------------------------


def packaged(vr=False, projection="gaussian"):
    def loss(model, x, n_projections=1, generator=None):
        from scorelab.training import sliced_score_matching_loss as package_loss

        return package_loss(model, x, n_projections=n_projections, variance_reduction=vr,
                            projection=projection, generator=generator)

    return loss


@pytest.mark.parametrize(
    "check, answer",
    [(checks.exercise_5_1, packaged()), (exercise_5_2, packaged(vr=True)),
     (exercise_5_4, packaged(vr=True, projection="sphere"))],
    ids=["5.1", "5.2", "5.4"],
)
def test_chapter_5_refuses_the_packages_loss(capsys, check, answer):
    assert_explains(capsys, check, [answer], "calls the package's sliced_score_matching_loss",
                    "write it yourself")


def grad_on_the_callers_x(answer):
    def loss(model, x, n_projections=1, generator=None):
        x.requires_grad_(True)  # the caller's tensor: the side effect 1.2 teaches to avoid
        return answer(model, x, n_projections=n_projections, generator=generator)

    return loss


@pytest.mark.parametrize(
    "check, answer",
    [(checks.exercise_5_1, sliced()), (exercise_5_2, sliced(vr=True)),
     (exercise_5_4, sphere_loss())],
    ids=["5.1", "5.2", "5.4"],
)
def test_chapter_5_names_requires_grad_switched_on_the_callers_x(capsys, check, answer):
    assert_explains(capsys, check, [grad_on_the_callers_x(answer)],
                    "switched on requires_grad", "x.detach().requires_grad_(True)")


def test_5_1_names_n_projections_ignored(capsys):
    one = sliced(draw="NMD")  # other draws than the reference's: the statistical check runs

    def ignores(model, x, n_projections=1, generator=None):
        return one(model, x, n_projections=1, generator=generator)

    assert_explains(capsys, checks.exercise_5_1, [ignores], "ignores n_projections")


@pytest.mark.parametrize("axis, what", [(0, "projections"), (1, "examples")])
def test_5_4_names_the_draws_normalised_over_the_wrong_axis(capsys, axis, what):
    def loss(model, x, n_projections=1, generator=None):
        v = torch.randn((n_projections, *x.shape), generator=generator).to(x)
        v = v / v.norm(dim=axis, keepdim=True) * math.sqrt(x.shape[-1])
        copies = x.detach().unsqueeze(0).expand_as(v).clone().requires_grad_(True)
        score = model(copies.reshape(-1, x.shape[-1])).reshape(copies.shape)
        jv = torch.autograd.grad((score * v).sum(), copies, create_graph=True)[0]
        return ((jv * v).sum(-1) + 0.5 * (score**2).sum(-1)).mean(0)

    assert_explains(capsys, exercise_5_4, [loss], f"dim={axis}", what, "dim=-1")


def test_5_4_names_a_trace_term_divided_by_d_as_well_as_the_inverse_length(capsys):
    def loss(model, x, n_projections=1, generator=None):  # unit vectors, trace term / D
        v = torch.randn((n_projections, *x.shape), generator=generator).to(x)
        v = v / v.norm(dim=-1, keepdim=True)
        copies = x.detach().unsqueeze(0).expand_as(v).clone().requires_grad_(True)
        score = model(copies.reshape(-1, x.shape[-1])).reshape(copies.shape)
        jv = torch.autograd.grad((score * v).sum(), copies, create_graph=True)[0]
        return ((jv * v).sum(-1) / x.shape[-1] + 0.5 * (score**2).sum(-1)).mean(0)

    assert_explains(capsys, exercise_5_4, [loss], "trace term divided by D",
                    "length 1/sqrt(D)")


def test_5_5_names_n_draws_ignored(capsys):
    simulation = spread_ratio()
    assert_explains(capsys, exercise_5_5,
                    [lambda matrix, n_draws, generator=None: simulation(matrix, 200, generator)],
                    "ignores n_draws")


# --- chapter 4: more named mistakes, and the package's loss refused ----------------------------


def two_draws(model, x, sigma, generator=None):
    z = torch.randn(x.shape, generator=generator)
    target = -torch.randn(x.shape, generator=generator) / sigma  # a second draw
    return 0.5 * ((model(x + sigma * z) - target) ** 2).sum(dim=1)


def unsquared(model, x, sigma, generator=None):
    z = torch.randn(x.shape, generator=generator)
    return (model(x + sigma * z) + z / sigma).norm(dim=1)


def noise_by_sigma_squared(model, x, sigma, generator=None):
    z = torch.randn(x.shape, generator=generator)
    return 0.5 * ((model(x + sigma**2 * z) + z / sigma) ** 2).sum(dim=1)


def difference_target(model, x, sigma, generator=None):
    z = torch.randn(x.shape, generator=generator)
    noisy = x + sigma * z
    return 0.5 * ((model(noisy) - (x - noisy)) ** 2).sum(dim=1)


def packaged_dsm(model, x, sigma, generator=None):
    from scorelab.training import dsm_loss as package_loss

    return package_loss(model, x, sigma, generator=generator)


@pytest.mark.parametrize("check", [checks.exercise_4_1, exercise_4_4], ids=["4.1", "4.4"])
@pytest.mark.parametrize(
    "answer, phrases",
    [
        (two_draws, ["second draw of the noise", "drawn once"]),
        (unsquared, ["not half its square"]),
        (noise_by_sigma_squared, ["noise is scaled by sigma^2"]),
        (difference_target, ["without the division by sigma^2"]),
        (packaged_dsm, ["calls the package's dsm_loss", "write it yourself"]),
    ],
    ids=["two draws", "unsquared", "sigma^2 z", "x - x~", "package"],
)
def test_chapter_4_names_more_mistakes(capsys, check, answer, phrases):
    assert_explains(capsys, check, [answer], *phrases)


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (lambda m, kappa, mu, tau: -1 / (2 * kappa) + (tau**2 + (mu - m) ** 2) / (2 * kappa**2),
         ["1/2 belongs to the squared score only"]),
        (lambda m, kappa, mu, tau: -1 / kappa + (tau + (mu - m) ** 2) / (2 * kappa**2),
         ["tau where the variance tau^2 belongs"]),
    ],
    ids=["half on both terms", "tau for tau^2"],
)
def test_5_3_names_more_slips(capsys, answer, phrases):
    assert_explains(capsys, exercise_5_3, [answer], *phrases)


def test_4_3_names_tau_plus_sigma(capsys):
    assert_explains(capsys, exercise_4_3,
                    [lambda x, mu, tau, sigma: -(x - mu) / (tau + sigma)], "divided by tau + sigma")


def test_6_5_names_a_profile_that_ignores_the_generator(capsys):
    def own_noise(score_fn, x, sigmas, generator=None):
        return score_norm_profile(score_fn, x, sigmas, None)

    assert_explains(capsys, checks.exercise_6_5, [own_noise, network_score],
                    "global random state", "generator=")


def test_6_3_and_6_4_refuse_the_packages_rules(capsys):
    from scorelab.noise import langevin_variance_ratio, step_size_for_ladder

    def ratio(eps, sigma_L, gamma, n_steps):
        if isinstance(eps, torch.Tensor):
            return torch.tensor([langevin_variance_ratio(2 * float(e), gamma, n_steps, sigma_L)
                                 for e in eps.flatten()], dtype=eps.dtype).reshape(eps.shape)
        return langevin_variance_ratio(2 * eps, gamma, n_steps, sigma_L)

    answers = [ratio, drift_to_noise]
    assert_explains(capsys, checks.exercise_6_3, answers, "calls the package's",
                    "langevin_variance_ratio")

    def epsilon(sigmas, n_steps):
        gamma = float(sigmas[-2] / sigmas[-1])
        return step_size_for_ladder(gamma, n_steps, float(sigmas[-1]))

    assert_explains(capsys, exercise_6_4, [epsilon], "calls the package's",
                    "step_size_for_ladder")


def test_6_5_sees_a_level_lookup_that_assumes_a_geometric_ladder(capsys, grading):
    def by_formula(model):
        sigmas = model.sigmas.cpu()
        first, last, n = float(sigmas[0]), float(sigmas[-1]), len(sigmas)

        def score_fn(x, sigma):
            level = round((n - 1) * math.log(first / sigma) / math.log(first / last))
            return model(x, torch.full((x.shape[0],), level, device=x.device))

        return score_fn

    assert_explains(capsys, checks.exercise_6_5, [score_norm_profile, by_formula],
                    "not geometric")


def test_4_1_and_6_2_refuse_the_packages_private_and_weighted_losses(capsys):
    from scorelab.training import _dsm_loss, sigma_weighted_dsm

    def private(model, x, sigma, generator=None):
        return _dsm_loss(model, x, sigma, generator)

    def weighted(model, x, sigma, generator=None):
        z = torch.randn(x.shape, generator=generator)
        sigmas = torch.full((len(x),), sigma)
        return sigma_weighted_dsm(model, x, sigmas, z) / sigma**2

    for answer in (private, weighted):
        assert_explains(capsys, checks.exercise_4_1, [answer], "calls the package's")

    def annealed(model, x, sigmas, labels, generator=None):
        z = torch.randn(x.shape, generator=generator)
        return sigma_weighted_dsm(lambda y: model(y, labels), x, sigmas[labels], z)

    assert_explains(capsys, checks.exercise_6_2, [annealed], "sigma_weighted_dsm")


# --- a student's tries of chapters 4-6 (second round) -------------------------------------------


def test_the_packages_private_losses_are_refused_too(capsys):
    from scorelab import training

    def weighted(model, x, sigma, generator=None):
        z = torch.randn(x.shape, generator=generator)
        return training._sigma_weighted_dsm(model, x, torch.full((len(x),), sigma), z) / sigma**2

    def trainer(model, x, n_projections=1, generator=None):
        return training.SlicedScoreMatching(model, n_projections).per_example_loss(x, generator)

    def private_annealed(model, x, sigmas, labels, generator=None):
        return training._annealed_dsm_loss(model, x, sigmas, labels, None, generator)

    assert_explains(capsys, checks.exercise_4_1, weighted, "calls the package's")
    assert_explains(capsys, checks.exercise_5_1, trainer, "calls the package's")
    assert_explains(capsys, checks.exercise_6_2, private_annealed, "calls the package's")


def test_a_reseeded_or_unused_generator_is_named(capsys):
    def reseeding(model, x, sigma, generator=None):
        torch.manual_seed(0)
        z = torch.randn(x.shape, generator=generator)
        return 0.5 * ((model(x + sigma * z) + z / sigma) ** 2).sum(dim=1)

    def no_generator(matrix, n_draws=20_000, generator=None):
        return spread_ratio()(matrix, n_draws, None)

    def seeded_profile(score_fn, x, sigmas, generator=None):
        torch.manual_seed(0)
        return score_norm_profile(score_fn, x, sigmas, None)

    assert_explains(capsys, checks.exercise_4_1, reseeding, "global random")
    assert_explains(capsys, exercise_5_5, no_generator, "global random")
    assert_explains(capsys, checks.exercise_6_5, (seeded_profile, network_score),
                    "global random")


def test_a_package_call_that_raises_is_refused_not_blamed_on_the_student(capsys):
    from scorelab.noise import langevin_variance_ratio

    def wrong_order(eps, sigma_L, gamma, n_steps):
        return langevin_variance_ratio(eps, sigma_L, gamma, n_steps)  # gamma and sigma_L swapped

    assert_explains(capsys, checks.exercise_6_3,
                    (wrong_order, drift_to_noise),
                    "calls the package's")


def test_4_3_refuses_the_packages_perturbed_density_for_a_derivation(capsys):
    from scorelab.densities import GaussianMixture

    def packaged(x, mu, tau, sigma):
        mixture = GaussianMixture(torch.tensor([1.0]), torch.tensor([[float(mu)]]),
                                  torch.tensor([float(tau) ** 2]))
        return float(mixture.perturbed(float(sigma)).score(torch.tensor([[float(x)]])))

    assert_explains(capsys, exercise_4_3, packaged, "calls the package's")


def test_5_3_checks_the_minimiser_and_names_its_slips(capsys):
    def objective(m, kappa, mu, tau):
        return -1 / kappa + (tau**2 + (mu - m) ** 2) / (2 * kappa**2)

    assert_passes(capsys, checks.exercise_5_3, objective, lambda mu, tau: (mu, tau**2))
    for wrong, phrase in [(lambda mu, tau: (mu, tau), "not with tau"),
                          (lambda mu, tau: (mu, 1 / tau**2), "precision"),
                          (lambda mu, tau: (mu, 2 * tau**2), "the 1/2 in front"),
                          (lambda mu, tau: (0.0, tau**2), "(mu - m)^2"),
                          (lambda mu, tau: tau**2, "a pair (m, kappa)"),
                          (lambda mu, tau: (mu, 3.0), "solve for kappa")]:
        assert_explains(capsys, checks.exercise_5_3, (objective, wrong), phrase)
    assert "not done yet" in run_check(capsys, checks.exercise_5_3, objective, stub)


def buggy_slope(sigma, tau):
    return -sigma / (tau**2 + sigma**2)


def same_slope_level(sigma, tau):
    return tau**2 / sigma


def test_4_4_checks_the_buggy_slope_and_names_its_slips(capsys):
    right = dsm()
    assert_passes(capsys, checks.exercise_4_4, right, buggy_slope, same_slope_level)
    for wrong, phrase in [(lambda s, t: -1 / (t**2 + s**2), "the optimum"),
                          (lambda s, t: s / (t**2 + s**2), "negative slope"),
                          (lambda s, t: -1 / (s * (t**2 + s**2)), "goes the other way"),
                          (lambda s, t: -s**2 / (t**2 + s**2), "not two"),
                          (lambda s, t: -s / t**2, "clean score's slope"),
                          (lambda s, t: -s / (t + s**2), "variances of data and noise add"),
                          (lambda s, t: -s / (1 + s**2), "tau = 1 only"),
                          (lambda s, t: -1.03 * s / (t**2 + s**2), "fits to samples"),
                          (lambda s, t: -s, "regression of -z")]:
        assert_explains(capsys, checks.exercise_4_4, (right, wrong, same_slope_level), phrase)
    assert "not done yet" in run_check(capsys, checks.exercise_4_4, right, stub, same_slope_level)


def test_4_4_checks_the_level_with_the_same_slope_and_names_its_slips(capsys):
    right = dsm()
    for wrong, phrase in [(lambda s, t: s, "second root"), (lambda s, t: 1 / s, "tau = 1 only"),
                          (lambda s, t: t / s, "not tau"), (lambda s, t: t, "roots meet"),
                          (lambda s, t: 1.02 * t**2 / s, "numerically"),
                          (lambda s, t: s + t, "quadratic")]:
        assert_explains(capsys, checks.exercise_4_4, (right, buggy_slope, wrong), phrase)
    assert "not done yet" in run_check(capsys, checks.exercise_4_4, right, buggy_slope, stub)


def test_5_2_checks_the_variance_gap_and_the_radius(capsys):
    vr = sliced(vr=True)

    def gap(a, s):
        return 0.5 * s.dot(s) ** 2 + 2 * s.dot(a @ s)

    check = checks.exercise_5_2
    answers = [vr, gap, lambda t: 2 * t]
    for k, wrong, phrase in [(1, lambda a, s: 0.5 * s.dot(s) ** 2, "correlated"),
                             (1, lambda a, s: 0.25 * s.dot(s) ** 2 + 2 * s.dot(a @ s), "E z^4"),
                             (1, lambda a, s: 0.5 * s.dot(s) ** 2 + 2 * a.trace() * s.dot(s),
                              "three pairings"),
                             (1, lambda a, s: -gap(a, s), "minus"),
                             (1, lambda a, s: 1.02 * gap(a, s), "simulation"),
                             (2, lambda t: 4 * t**2, "squared radius"),
                             (2, lambda t: t, "changes sign"),
                             (2, lambda t: 2.0, "tau = 1 only")]:
        tried = list(answers)
        tried[k] = wrong
        assert_explains(capsys, check, tried, phrase)


def test_5_3_accepts_arrays_and_names_a_numerical_minimum(capsys):
    import numpy as np

    def objective(m, kappa, mu, tau):
        return -1 / kappa + (tau**2 + (mu - m) ** 2) / (2 * kappa**2)

    for right in (lambda mu, tau: np.array([mu, tau**2]), lambda mu, tau: torch.tensor([mu, tau**2])):
        assert_passes(capsys, checks.exercise_5_3, objective, right)
    assert_explains(capsys, checks.exercise_5_3,
                    (objective, lambda mu, tau: (mu * (1 + 1e-4), tau**2)), "numerical minimum")
    assert "not done yet" in run_check(capsys, checks.exercise_5_3, objective, lambda mu, tau: ...)


def test_4_3_accepts_the_pair_of_factors_in_a_tensor_or_an_array(capsys):
    import numpy as np

    def optimal(x, mu, tau, sigma):
        return -(x - mu) / (tau**2 + sigma**2)

    def as_tensor(t, s):
        return torch.tensor([t**2 / (t**2 + s**2), 1 - s**2 / t**2])

    assert_passes(capsys, checks.exercise_4_3, optimal, as_tensor)
    assert_passes(capsys, checks.exercise_4_3, optimal, lambda t, s: as_tensor(t, s).numpy())
    assert_explains(capsys, checks.exercise_4_3, (optimal, lambda t, s: np.zeros(3)), "a pair")


def test_6_4_says_which_way_the_epsilon_should_move_without_giving_it(capsys):
    out = run_check(capsys, exercise_6_4, lambda s, t: ncsnv2_epsilon(s, t) / 1.3)
    assert "a larger epsilon comes closer to 1" in out and "3.13e-05" not in out


def test_6_3_names_a_measured_drift_to_noise_ratio(capsys):
    import random

    jitter = random.Random(3)

    def measured(eps, sigma_i, sigma_L):  # a Monte Carlo estimate, right to about 1 %
        return math.sqrt(eps) / (2 * sigma_L) * (1 + 0.01 * jitter.uniform(-1, 1))

    assert_explains(capsys, checks.exercise_6_3, (variance_ratio, measured),
                    "drift_to_noise", "looks like a simulation or a fit")


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (sphere_loss(lambda d: math.sqrt(8)), ["length sqrt(8)", "x.shape[-1]"]),
        (sphere_loss(lambda d: 1.0, norm_weight=lambda d: 1.0 / d),
         ["divided the norm term by D"]),
    ],
    ids=["hard-coded sqrt(8)", "norm term / D"],
)
def test_5_4_names_a_length_hard_coded_for_the_notebooks_dimension(capsys, answer, phrases):
    assert_explains(capsys, exercise_5_4, [answer], *phrases)


def test_5_4_names_a_loss_scaled_as_a_whole_and_a_trace_scaled_by_sqrt_d(capsys):
    def scaled(trace_factor, whole):
        def loss(model, x, n_projections=1, generator=None):
            v = torch.randn((n_projections, *x.shape), generator=generator).to(x)
            v = v / v.norm(dim=-1, keepdim=True)
            x = x.detach().unsqueeze(0).expand_as(v).clone().requires_grad_(True)
            score = model(x.reshape(-1, x.shape[-1])).reshape(x.shape)
            jv = torch.autograd.grad((score * v).sum(), x, create_graph=True)[0]
            factor = trace_factor(x.shape[-1])
            return whole(x.shape[-1]) * (factor * (jv * v).sum(-1)
                                         + 0.5 * (score**2).sum(-1)).mean(0)

        return loss

    assert_explains(capsys, exercise_5_4, [scaled(lambda d: 1.0, lambda d: d)],
                    "multiplied the whole buggy loss by D")
    assert_explains(capsys, exercise_5_4, [scaled(math.sqrt, lambda d: 1.0)],
                    "sqrt(D) times the unit vectors'")


def test_5_5_checks_the_exact_ratio_and_names_its_slips(capsys):
    simulation = spread_ratio()
    assert_passes(capsys, checks.exercise_5_5, simulation, exact_spread_ratio)

    def unsymmetrised(matrix):
        dim, trace = matrix.shape[0], torch.trace(matrix).item()
        return math.sqrt(dim / (dim + 2) * (1 - trace**2 / (dim * (matrix**2).sum().item())))

    def second_moment(matrix):
        dim = matrix.shape[0]
        sym = (matrix + matrix.T) / 2
        frobenius, trace = (sym**2).sum().item(), torch.trace(matrix).item()
        return math.sqrt(dim / (dim + 2) * (trace**2 + 2 * frobenius) / (2 * frobenius))

    for wrong, phrase in [
        (lambda m: exact_spread_ratio(m) ** 2, "ratio of the variances"),
        (lambda m: 1 / exact_spread_ratio(m), "Gaussian over sphere"),
        (unsymmetrised, "symmetric part"),
        (lambda m: exact_spread_ratio(m, gaussian_scale=1.0), "fourth moments"),
        (lambda m: math.sqrt(m.shape[0] / (m.shape[0] + 2)), "tr A = 0"),
        (second_moment, "second moment"),
        (lambda m: 1.01 * exact_spread_ratio(m), "simulation"),
        (lambda m: 0.5, "pairings"),
        (lambda m: spread_ratio()(m, 20_000, None), "no random numbers"),
    ]:
        assert_explains(capsys, checks.exercise_5_5, (simulation, wrong), phrase)
    assert "not done yet" in run_check(capsys, checks.exercise_5_5, simulation, stub)


def test_5_5_names_draws_outside_the_generator_and_root_mean_squares(capsys):
    import numpy as np

    def numpy_global(matrix, n_draws=20_000, generator=None):
        d, a = matrix.shape[0], matrix.double().numpy()
        g = np.random.standard_normal((n_draws, d))
        s = np.random.standard_normal((n_draws, d))
        s = s / np.linalg.norm(s, axis=1, keepdims=True) * math.sqrt(d)
        return float(np.einsum("ni,ij,nj->n", s, a, s).std() / np.einsum("ni,ij,nj->n", g, a, g).std())

    def own_seed(matrix, n_draws=20_000, generator=None):
        return spread_ratio()(matrix, n_draws, torch.Generator().manual_seed(0))

    def root_mean_squares(matrix, n_draws=20_000, generator=None):
        d = matrix.shape[0]
        g = torch.randn(n_draws, d, generator=generator)
        s = torch.randn(n_draws, d, generator=generator)
        s = s / s.norm(dim=1, keepdim=True) * math.sqrt(d)
        rms = [((v @ matrix) * v).sum(1).pow(2).mean().sqrt() for v in (s, g)]
        return (rms[0] / rms[1]).item()

    assert_explains(capsys, exercise_5_5, [numpy_global], "with the same seed", "global generator")
    assert_explains(capsys, exercise_5_5, [own_seed], "a seed of your own")
    assert_explains(capsys, exercise_5_5, [root_mean_squares], "root-mean-squares")


def test_5_5_names_the_trace_of_the_square_for_the_frobenius_norm(capsys):
    def trace_of_square(matrix):
        dim, trace = matrix.shape[0], torch.trace(matrix).item()
        return math.sqrt(dim / (dim + 2) * (1 - trace**2 / (dim * torch.trace(matrix @ matrix).item())))

    # the public matrices have tr(A^2) > tr(A)^2 / D, so the slip gives a number there
    assert_explains(capsys, checks.exercise_5_5, (spread_ratio(), trace_of_square), "not tr(A^2)")


def test_6_5_names_a_rebuilt_geometric_ladder_and_a_division_by_sigma_squared(capsys, grading):
    def rebuilt(model):
        sigmas = model.sigmas.cpu()
        ladder = torch.logspace(math.log10(sigmas[0]), math.log10(sigmas[-1]), len(sigmas))
        return network_score(model, ladder=ladder)

    def squared(model):
        plain = network_score(model)
        return lambda x, sigma: plain(x, sigma) / sigma**2

    assert_explains(capsys, checks.exercise_6_5, [score_norm_profile, rebuilt],
                    "do not rebuild it")
    assert_explains(capsys, checks.exercise_6_5, [score_norm_profile, squared],
                    "divided by sigma^2")
