"""The exercise checks: a right answer passes, each kind of wrong answer is named in words, nothing crashes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _checks_helpers import assert_explains, assert_passes, run_check, stub, with_answer
from scorelab import checks
from scorelab.checks import _core

exercise_1_1 = with_answer(checks.exercise_1_1, 3300**0.5, first=False)


def posterior_variance(x_noisy, score_fn, sigma, *, power=4, sign=1.0, summed=False):
    """4.2's second answer, and its typical slips: sigma^2 + sign sigma^power tr(J) / D."""
    with torch.enable_grad():
        x = x_noisy.detach().requires_grad_(True)
        score = score_fn(x)
        trace = sum(torch.autograd.grad(score[:, d].sum(), x, retain_graph=True)[0][:, d]
                    for d in range(x.shape[1]))
    mean = sigma**2 + sign * sigma**power * trace / x.shape[1]
    return (x.shape[1] * mean if summed else mean).detach()


exercise_4_2 = with_answer(checks.exercise_4_2, posterior_variance, "b", first=False)
exercise_5_2 = with_answer(checks.exercise_5_2,
                           lambda a, s: 0.5 * s.dot(s) ** 2 + 2 * s.dot(a @ s),
                           lambda t: 2 * t, first=False)
exercise_2_2 = with_answer(checks.exercise_2_2, lambda t: 4 * t, first=False)
exercise_3_4 = with_answer(checks.exercise_3_4, -0.1415, 0.5088, first=False)


def neighbour_kl(gamma, dim):
    return dim / 2 * (gamma**2 - 1 - 2 * math.log(gamma))


exercise_3_1 = with_answer(checks.exercise_3_1, neighbour_kl, first=True)


def evenly_spaced_levels(sigma_max, sigma_min, n_levels):
    gamma = (sigma_max / sigma_min) ** (1 / (n_levels - 1))
    return 1 + math.ceil((sigma_max - sigma_min) / (sigma_min * (gamma - 1)))


exercise_3_2 = with_answer(checks.exercise_3_2, evenly_spaced_levels, first=False)


def _all_checks():
    """Every check the package exports, found by name."""
    return [getattr(checks, name) for name in sorted(dir(checks)) if name.startswith("exercise_")]


@pytest.mark.parametrize("check", _all_checks(), ids=lambda c: c.exercise_number)
def test_an_unfilled_stub_is_not_done_yet(capsys, check):
    import inspect

    from scorelab.ncsn import ConditionalInstanceNorm2dPlus

    class StubNorm(ConditionalInstanceNorm2dPlus):
        forward = stub

    n_args = len(inspect.signature(check).parameters)
    unfilled = {"6.1": StubNorm, "7.6": None}  # 7.6 takes two numbers, None until answered
    answers = [unfilled.get(check.exercise_number, stub)] * n_args
    if check.exercise_number == "7.4":  # a prediction (a number), then the fixed loop
        answers = [..., stub]
    assert check(*answers) is None
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("⏳") and "not done yet" in out, out


def test_assert_all_passed_names_failed_and_missing(capsys):
    checks.exercise_3_2(stub)
    capsys.readouterr()
    with pytest.raises(AssertionError, match=r"not run: \['9.9'\]; failed: \['3.2'\]"):
        checks.assert_all_passed(["3.2", "9.9"])


# ---------------------------------------------------------------- chapter 1: densities and scores


def perturbed_covariance(weights, means, covs, sigma):
    mean = weights @ means
    offsets = means - mean
    within = (weights[:, None, None] * covs).sum(dim=0)
    return within + offsets.T @ (weights[:, None] * offsets) + sigma**2 * torch.eye(
        means.shape[1], dtype=means.dtype)


def _total(w, m, c, s, *, noise=None, between=True, weights_within=None):
    """The right answer, or one with a part changed (for the mistakes below)."""
    weights_within = w if weights_within is None else weights_within
    offsets = m - w @ m
    out = (weights_within[:, None, None] * c).sum(dim=0)
    if between:
        out = out + offsets.T @ (w[:, None] * offsets)
    eye = torch.eye(m.shape[1], dtype=m.dtype)
    return out + (s**2 * eye if noise is None else noise)


def test_1_1_accepts_the_solution(capsys, grading):
    assert_passes(capsys, exercise_1_1, perturbed_covariance)


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (lambda w, m, c, s: _total(w, m, c, s, between=False), ["law of total covariance"]),
        (lambda w, m, c, s: _total(w, m, c, s, between=False) + m.T @ (w[:, None] * m),
         ["second moment"]),
        (lambda w, m, c, s: _total(w, m, c, s, weights_within=w**2), ["pi_k^2"]),
        (lambda w, m, c, s: _total(w, m, c, s, noise=0.0), ["left out the noise"]),
        (lambda w, m, c, s: _total(w, m, c, s, noise=s * torch.eye(2, dtype=m.dtype)),
         ["added sigma I", "sigma^2 I"]),
        (lambda w, m, c, s: _total(w, m, c, s, noise=s**2), ["every entry", "diagonal only"]),
        (
            lambda w, m, c, s: _total(w, m, c, s) if s < 3 else _total(w, m, c, s, noise=0.0) + s,
            ["right for small sigma", "sigma of order one", "wrong for large sigma"],
        ),
        (
            lambda w, m, c, s: _total(w, m, c, s) * (1.0 if len(w) == 1 else 1.1),
            ["right on one component", "wrong on two components and on three components"],
        ),
        (lambda w, m, c, s: torch.diag(_total(w, m, c, s)), ["has shape (2,)", "expected (2, 2)"]),
        (lambda w, m, c, s: _total(w, m, c, s).tolist(), ["should return a number", "list"]),
        (lambda c, s: c + s**2 * torch.eye(2), ["takes 2 positional arguments but 4 were given"]),
    ],
)
def test_1_1_explains_wrong_answers(capsys, answer, phrases):
    assert_explains(capsys, exercise_1_1, answer, *phrases)


def test_1_1_tries_a_hidden_3d_mixture_while_grading(capsys, grading):
    assert_explains(capsys, exercise_1_1,
                    lambda w, m, c, s: _total(w, m, c[:, :2, :2], s)[:2, :2] if m.shape[1] == 2
                    else torch.zeros(3, 3, dtype=m.dtype), "on a hidden 3-D mixture")


def gmm_score(x, weights, means, variances):
    diff = x[:, None, :] - means  # (N, K, D)
    log_normal = -0.5 * (diff**2).sum(-1) / variances - 0.5 * x.shape[1] * torch.log(
        2 * torch.pi * variances
    )
    responsibilities = torch.softmax(torch.log(weights) + log_normal, dim=1)
    return (responsibilities[..., None] * -diff / variances[:, None]).sum(dim=1)


def gmm_score_naive(x, weights, means, variances):
    """Responsibilities as ratios of densities: right near the modes, 0/0 far away."""
    diff = x[:, None, :] - means
    dens = (weights * torch.exp(-0.5 * (diff**2).sum(-1) / variances)
            / (2 * torch.pi * variances) ** (x.shape[1] / 2))
    return ((dens / dens.sum(1, keepdim=True))[..., None] * -diff / variances[:, None]).sum(1)


def test_1_3_accepts_the_solution(capsys, grading):
    assert_passes(capsys, checks.exercise_1_3, gmm_score)


def test_1_3_names_responsibilities_without_the_normalising_constant(capsys):
    def unnormalised(x, weights, means, variances):
        diff = x[:, None, :] - means  # (N, K, D)
        log_joint = torch.log(weights) - 0.5 * (diff**2).sum(-1) / variances
        return (torch.softmax(log_joint, dim=1)[..., None] * -diff / variances[:, None]).sum(1)

    assert_explains(capsys, checks.exercise_1_3, unnormalised, "normalising constant")


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (lambda x, w, m, v: -gmm_score(x, w, m, v), ["wrong sign"]),
        (lambda x, w, m, v: gmm_score(x, w, m, v) * v[0], ["forgot to divide by the variance"]),
        (gmm_score_naive, ["NaN or inf far from", "softmax"]),
        (lambda x, w, m, v: gmm_score(x, w, m, v).T, ["wrong shape", "(2, 64)", "transposed"]),
        (lambda x, w, m, v: gmm_score(x, w, m, v).sum(1), ["wrong shape", "(64,)"]),
        (lambda x, w, m, v: gmm_score(x, w, m, v).double(), ["dtype torch.float64"]),
        (lambda x, w, m, v: gmm_score(x, w, m, v).tolist(), ["returned a list"]),
        (
            lambda x, w, m, v: (w[None, :, None] * -(x[:, None] - m) / v[:, None]).sum(1),
            ["responsibility"],
        ),
        (
            lambda x, w, m, v: gmm_score(x, torch.ones_like(w) / len(w), m, v),
            ["ignore the mixture weights"],
        ),
        (lambda x, w, m, v: gmm_score(x, w, m, v) * 1.5, ["reference times 1.5"]),
        (lambda x, w, m, v: x @ torch.ones(3, 3), ["RuntimeError", "shapes cannot be multiplied"]),
    ],
)
def test_1_3_explains_wrong_answers(capsys, answer, phrases):
    assert_explains(capsys, checks.exercise_1_3, answer, *phrases)


def make_gmm_score(*, half=0.5, sign=-1.0, normaliser_dim=None, softmax_dim=1):
    """gmm_score with one slip in log N: the factor of the quadratic (1/2), its sign, the D of
    the normaliser (None: the points' own), or the axis of the softmax."""

    def slipped(x, weights, means, variances):
        diff = x[:, None, :] - means  # (N, K, D)
        dim = x.shape[1] if normaliser_dim is None else normaliser_dim
        log_normal = sign * half * (diff**2).sum(-1) / variances - 0.5 * dim * torch.log(
            2 * torch.pi * variances)
        responsibilities = torch.softmax(torch.log(weights) + log_normal, dim=softmax_dim)
        return (responsibilities[..., None] * -diff / variances[:, None]).sum(dim=1)

    return slipped


def _gmm_score_writing_into_x(x, weights, means, variances):
    out = gmm_score(x, weights, means, variances)
    x.zero_()
    return out


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (make_gmm_score(normaliser_dim=1), ["1-D normalising constant", "-(D/2) log(2 pi v_k)"]),
        (make_gmm_score(half=1.0), ["misses its 1/2"]),
        (make_gmm_score(softmax_dim=0), ["softmax runs over the points", "dim=1"]),
        (make_gmm_score(sign=1.0), ["quadratic term of log N has the wrong sign"]),
        (_gmm_score_writing_into_x, ["gmm_score(x, ...) changed the tensor it was given"]),
    ],
)
def test_1_3_names_slips_in_the_log_density(capsys, answer, phrases):
    assert_explains(capsys, checks.exercise_1_3, answer, *phrases)


def test_1_3_names_the_1d_normaliser_that_only_unequal_variances_show(capsys):
    """With equal variances the normaliser cancels in the softmax: the slip shows only on the
    unequal mixture, and the check must not pass it because of the first."""
    x = 3.0 * torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    w, m = torch.tensor([0.3, 0.7]), torch.tensor([[-2.0, 0.0], [2.0, 1.0]])
    v = torch.tensor([2.0, 2.0])
    assert torch.allclose(make_gmm_score(normaliser_dim=1)(x, w, m, v), gmm_score(x, w, m, v),
                          atol=1e-5)
    assert_explains(capsys, checks.exercise_1_3, make_gmm_score(normaliser_dim=1), "1-D")


def test_1_3_refuses_a_non_function(capsys):
    assert_explains(capsys, checks.exercise_1_3, torch.zeros(3), "pass your function itself")


def autograd_score(log_prob_fn, x):
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        return torch.autograd.grad(log_prob_fn(x).sum(), x)[0]


def test_1_2_accepts_the_solution(capsys, grading):
    assert_passes(capsys, checks.exercise_1_2, autograd_score)


def test_1_2_wants_the_score_under_no_grad_too(capsys):
    def chapters_version(log_prob_fn, x):
        x = x.detach().requires_grad_(True)
        return torch.autograd.grad(log_prob_fn(x).sum(), x)[0]

    assert_explains(capsys, checks.exercise_1_2, chapters_version, "torch.no_grad()",
                    "torch.enable_grad()")


def _in_place(log_prob_fn, x):
    x.requires_grad_(True)
    return torch.autograd.grad(log_prob_fn(x).sum(), x)[0]


def _no_sum(log_prob_fn, x):
    x = x.detach().requires_grad_(True)
    log_prob_fn(x).backward()
    return x.grad


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (lambda f, x: -autograd_score(f, x), ["wrong sign"]),
        (lambda f, x: f(x), ["looks like the log-probabilities"]),
        (_in_place, ["requires_grad", "caller's tensor"]),
        (_no_sum, ["RuntimeError", "sum the outputs"]),
        (lambda f, x: autograd_score(f, x).requires_grad_(True), ["autograd graph"]),
        (lambda f, x: autograd_score(lambda y: f(y).mean(), x),
         ["1/N (= 0.01562) times the reference", "averaged", "sum them"]),
        (lambda f, x: autograd_score(lambda y: f(y).exp(), x),
         ["gradient of the density p(x), not of log p(x)"]),
        (lambda f, x: torch.func.vmap(torch.func.grad(lambda xi: f(xi[None])[0]))(x),
         ["torch.func.vmap cannot trace", "log_p.sum()"]),
    ],
)
def test_1_2_explains_wrong_answers(capsys, answer, phrases):
    assert_explains(capsys, checks.exercise_1_2, answer, *phrases)


def make_banana_score(term=lambda b, x0, x1, y1: -2 * b * x0 * y1, offset=lambda a: a**2):
    """The banana's score with first component -x0 / a^2 + term; the right term is -2 b x0 y1,
    the right offset of u is b a^2."""

    def banana_score(x, curvature=0.5, scale=1.0):
        y1 = x[:, 1] + curvature * (x[:, 0] ** 2 - offset(scale))
        s0 = -x[:, 0] / scale**2 + term(curvature, x[:, 0], x[:, 1], y1)
        return torch.stack([s0, -y1], dim=1)

    return banana_score


def colleagues_banana_score(x, curvature=0.5, scale=1.0):
    """The exercise's starting point: it writes u into x[:, 1], and its offset is b a."""
    x1, u = x[:, 0], x[:, 1]
    u += curvature * (x1**2 - scale)
    score_1 = -x1 / scale**2 - 2 * curvature * x1 * u
    return torch.stack([score_1, -u], dim=1)


def test_1_4_accepts_the_fix(capsys, grading):
    assert_passes(capsys, checks.exercise_1_4, make_banana_score())


def test_1_4_accepts_a_fix_that_copies_x_first(capsys):
    def banana_score(x, curvature=0.5, scale=1.0):
        x = x.clone()
        x1, u = x[:, 0], x[:, 1]
        u += curvature * (x1**2 - scale**2)
        return torch.stack([-x1 / scale**2 - 2 * curvature * x1 * u, -u], dim=1)

    assert_passes(capsys, checks.exercise_1_4, banana_score)


def test_1_4_the_colleagues_version_is_wrong_only_through_its_input_at_scale_1():
    """The exercise's premise: at a = 1 the formula is right (autograd first agrees to float
    precision), and the gap measured the other way round comes from the changed points."""
    from scorelab.densities import Banana

    banana = Banana()
    x = banana.sample(500, generator=torch.Generator().manual_seed(0))
    leaf = x.clone().requires_grad_(True)
    (autograd,) = torch.autograd.grad(banana.log_prob(leaf).sum(), leaf)
    before = x.clone()
    assert torch.allclose(colleagues_banana_score(x), autograd, atol=1e-5)
    assert not torch.equal(x, before)  # ... but x[:, 1] now holds u
    assert torch.equal(x[:, 0], before[:, 0])


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (colleagues_banana_score, ["changed the points it was given", "x[:, 1] differs"]),
        (
            make_banana_score(offset=lambda a: a),
            ["scale=2.0", "although the default banana (a = 1) agrees"],
        ),
        (make_banana_score(lambda b, x0, x1, y1: 0 * x0), ["lacks the chain-rule term"]),
        (make_banana_score(lambda b, x0, x1, y1: 2 * b * x0 * y1), ["wrong sign"]),
        (make_banana_score(lambda b, x0, x1, y1: -b * x0 * y1), ["without its factor 2"]),
        (make_banana_score(lambda b, x0, x1, y1: -2 * b * x0 * x1), ["uses x_2"]),
        (
            lambda x, curvature=0.5, scale=1.0: make_banana_score()(x),  # ignores b and a
            ["curvature=0.2, scale=2.0", "differs from the reference"],
        ),
    ],
)
def test_1_4_explains_wrong_answers(capsys, answer, phrases):
    assert_explains(capsys, checks.exercise_1_4, answer, *phrases)


def merging_sigma(mixture, step=0.01):
    low, high = mixture.means.min().item(), mixture.means.max().item()
    x = torch.linspace(low - 5, high + 5, 4001)[:, None]
    for sigma in torch.arange(step, 10.0, step).tolist():
        score = mixture.perturbed(sigma).score(x)[:, 0]
        if int(((score[:-1] > 0) & (score[1:] <= 0)).sum()) == 1:
            return sigma
    raise ValueError("no merge")


def _equal_rule(mixture):
    gap = (mixture.means[1, 0] - mixture.means[0, 0]).abs().item()
    return math.sqrt(gap**2 / 4 - mixture.covariances.mean().item())


def test_1_5_accepts_the_solution(capsys, grading):
    assert_passes(capsys, checks.exercise_1_5, merging_sigma)


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (lambda m: merging_sigma(m) ** 2, ["the square of the merging noise level"]),
        (_equal_rule, ["equal-weights rule"]),
        (lambda m: merging_sigma(m, step=0.5), ["too large", "refine the sigma grid"]),
        (lambda m: "1.7", ["should be a number", "str"]),
    ],
)
def test_1_5_explains_wrong_answers(capsys, answer, phrases):
    assert_explains(capsys, checks.exercise_1_5, answer, *phrases)


def test_1_5_hidden_cases_catch_an_answer_learnt_by_rote(capsys, monkeypatch):
    """Right on the two public mixtures only: it passes for the student, fails when graded."""
    from scorelab.checks import _core

    def by_rote(mixture):
        return 3**0.5 if abs(mixture.weights[0].item() - 0.5) < 1e-6 else 1.1406

    assert_passes(capsys, checks.exercise_1_5, by_rote)
    monkeypatch.setattr(_core, "GRADING", True)
    assert_explains(capsys, checks.exercise_1_5, by_rote, "hidden mixture")


# ---------------------------------------------------------------- chapter 2: Langevin dynamics


def make_step(drift: float = 0.5, noise: float = 0.5, *, randn=None):
    """A Langevin step x + drift * alpha * s + alpha**noise * z; the right one is (0.5, 0.5)."""

    def langevin_step(x, score_fn, step_size, generator=None):
        z = randn(x) if randn else torch.randn(x.shape, generator=generator)
        return x + drift * step_size * score_fn(x) + step_size**noise * z

    return langevin_step


MIXED_POWER = 0.5


def test_2_1_accepts_the_solution(capsys, grading):
    assert_passes(capsys, checks.exercise_2_1, make_step(), MIXED_POWER)


def _in_place_step(x, score_fn, step_size, generator=None):
    x += step_size / 2 * score_fn(x) + math.sqrt(step_size) * torch.randn(
        x.shape, generator=generator
    )
    return x


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (make_step(drift=1.0), ["drift is alpha * score", "authors' code convention"]),
        (make_step(drift=-0.5), ["drift has the wrong sign"]),
        (make_step(noise=1.0), ["noise is alpha * z"]),
        (
            lambda x, s, a, generator=None: (
                x + a / 2 * s(x) + math.sqrt(2 * a) * torch.randn(x.shape, generator=generator)
            ),
            ["sqrt(2 alpha)"],
        ),
        (lambda x, s, a, generator=None: x + a / 2 * s(x), ["adds no noise"]),
        (make_step(randn=torch.randn_like), ["a draw without generator=",
                                             "Draw every random number from the generator"]),
        (
            lambda x, s, a, generator=None: (
                x + a / 2 * s(x) - math.sqrt(a) * torch.randn(x.shape, generator=generator)
            ),
            ["noise enters with a minus sign", "+ sqrt(alpha) * z"],
        ),
        (_in_place_step, ["in place"]),
        (
            lambda x, s, a, generator=None: (
                lambda y: y + a / 2 * s(y)
            )(x + math.sqrt(a) * torch.randn(x.shape, generator=generator)),
            ["evaluated after the noise was added"],
        ),
        (
            lambda x, s, a, generator=None: (
                x + a / 2 * s(x) + math.sqrt(a) * torch.randn(x.shape[::-1], generator=generator).T
            ),
            ["not of the form"],
        ),
    ],
)
def test_2_1_explains_wrong_steps(capsys, answer, phrases):
    assert_explains(capsys, checks.exercise_2_1, (answer, MIXED_POWER), *phrases)


@pytest.mark.parametrize(
    "mixed_power, phrases",
    [
        (1, ["mixed_power = 1 is not the power", "twice its noise variance"]),
        (2.0, ["below 1"]),
        (math.sqrt(0.5), ["standard deviations"]),
        (math.sqrt(2), ["below 1", "not its standard deviation"]),
        (0.25, ["twice the course's, not four times"]),
        (-0.5, ["negative power"]),
        (-1, ["negative power"]),
        (0, ["p^0 is flat"]),
        (50, ["percentage"]),
        (0.52, ["looks like a measurement", "sampling noise"]),
        (0.47, ["looks like a measurement", "comes out low"]),
        (3.0, ["of which diffusion is the mixed step an Euler step", 'checks.hint("2.1")']),
    ],
)
def test_2_1_explains_wrong_mixed_powers(capsys, mixed_power, phrases):
    assert_explains(capsys, checks.exercise_2_1, (make_step(), mixed_power), *phrases)


def test_2_1_reads_the_power_from_a_one_element_array_or_tensor(capsys, grading):
    for power in (np.array([0.5]), np.float32(0.5), torch.tensor([0.5]), torch.tensor(0.5)):
        assert_passes(capsys, checks.exercise_2_1, make_step(), power)
    assert_explains(capsys, checks.exercise_2_1, (make_step(), np.array([0.5, 0.5])),
                    "should be a number")


def test_2_1_is_not_done_until_the_power_is_set(capsys):
    for unset in (..., None):
        out = run_check(capsys, checks.exercise_2_1, make_step(), unset)
        assert out.startswith("⏳") and "not done yet" in out


def test_2_2_accepts_the_solution(capsys, grading):
    assert_passes(capsys, exercise_2_2, lambda a, t: t / (1 - a / (4 * t)))


def test_formula_checks_pass_python_floats_as_the_exercise_text_does(capsys, grading):
    def answer(alpha, target_variance):
        assert type(alpha) is float and type(target_variance) is float, (alpha, target_variance)
        return target_variance / (1 - alpha / (4 * target_variance))

    assert_passes(capsys, exercise_2_2, answer)


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (lambda a, t: t, ["tau^2 for every step size"]),
        (lambda a, t: 1 / (1 - a / 4), ["tau^2 = 1 only"]),
        (lambda a, t: t / (1 - a / (2 * t)), ["authors' convention"]),
        (lambda a, t: math.sqrt(t / (1 - a / (4 * t))), ["standard deviation"]),
        (lambda a, t: (1 - a / (4 * t)) / t, ["reciprocal"]),
        (lambda a, t: 1 / (t * (1 - a * t / 4)), ["multiplied by tau^2"]),
        (lambda a, t: 2.0 * t, ["dropped the square"]),
        (lambda a, t: t / (1 - a / 4), ["tau^2 times the chapter's answer"]),
        (
            lambda a, t: t * (1 + a / (4 * t)),
            ["right for small steps", "wrong for steps of order tau^2 and for steps near the "
             "largest stable one"],
        ),
        (lambda a, t: torch.ones(2), ["single number", "tensor of shape (2,)"]),
        (lambda a: 1 / (1 - a / 4), ["takes 1 positional argument but 2 were given"]),
        (lambda a, t: torch.sqrt(t) ** 2 / (1 - a / (4 * t)), ["use math.sqrt", "Python floats"]),
    ],
)
def test_2_2_explains_wrong_answers(capsys, answer, phrases):
    assert_explains(capsys, exercise_2_2, answer, *phrases)


def variance_answer(law):
    """A 'measurement' that follows law(step_size), with a little noise from the generator and
    from the number of particles."""
    def answer(step_size, n_particles, generator=None):
        value = law(step_size)
        if isinstance(value, float) and math.isfinite(value):
            value *= 1 + 1e-4 * torch.randn(1, generator=generator).item() + 1e-9 * n_particles
        return value

    return answer


def langevin_variance_along(score_fn, step_size, n_particles, generator=None, *, steps=200):
    """2.3's measurement with a given score: -tanh(x / 2) is the logistic's."""
    from scorelab.langevin import langevin_dynamics

    x = langevin_dynamics(score_fn, torch.zeros(n_particles, 1), step_size, steps,
                          generator=generator, progress=False)
    return x.var().item()


def langevin_variance(step_size, n_particles, generator=None):
    return langevin_variance_along(lambda x: -torch.tanh(x / 2), step_size, n_particles, generator)


LOGISTIC = checks.ch2.LOGISTIC_VARIANCE
CHAIN = checks.ch2.logistic_chain_variance


def test_2_3_the_grid_agrees_with_a_simulation():
    """The check's stationary variance, computed on a grid, against 10^6 simulated particles."""
    for step_size in (0.3, 1.5):
        simulated = langevin_variance(step_size, 1_000_000, torch.Generator().manual_seed(5))
        assert simulated / CHAIN(step_size) == pytest.approx(1.0, abs=0.01)


def test_2_3_the_grid_matches_the_gaussian_rule_to_first_order():
    """For small steps the logistic's bias is (alpha / 4) Cov(x^2, s' + s^2 / 2) / (pi^2 / 3)."""
    x = torch.linspace(-60, 60, 200_001, dtype=torch.float64)
    density = torch.exp(-x.abs()) / (1 + torch.exp(-x.abs())) ** 2
    density = density / density.sum()
    integrand = 0.5 - torch.cosh(x / 2) ** -2  # s' + s^2 / 2 for s = -tanh(x / 2)
    covariance = (density * x**2 * integrand).sum() - LOGISTIC * (density * integrand).sum()
    slope = covariance.item() / 4 / LOGISTIC
    for step_size in (0.2, 0.3):
        assert CHAIN(step_size) / LOGISTIC - 1 == pytest.approx(slope * step_size, rel=0.05)


def test_2_3_accepts_the_solution(capsys, grading):
    assert_passes(capsys, checks.exercise_2_3, langevin_variance, 0.91)


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (variance_answer(lambda a: math.sqrt(CHAIN(a))), ["standard deviations"]),
        (variance_answer(lambda a: CHAIN(a) / LOGISTIC), ["divided by pi^2 / 3"]),
        (variance_answer(lambda a: LOGISTIC), ["stays at pi^2 / 3"]),
        (variance_answer(lambda a: CHAIN(2 * a)), ["authors' step convention"]),
        (variance_answer(lambda a: 1 / (1 - a / 4)), ["on N(0, 1)", "-tanh(x / 2)"]),
        (lambda a, n, generator=None: langevin_variance_along(
            lambda x: -x / LOGISTIC, a, n, generator), ["Gaussian of the logistic's variance"]),
        (variance_answer(lambda a: torch.ones(3)), ["single number", "(3,)"]),
        (variance_answer(lambda a: "1.0"), ["should be a number", "str"]),
        (variance_answer(lambda a: float("nan")), ["returned nan", "diverged"]),
        (variance_answer(lambda a: 1 + a), ["do not match the logistic chain's"]),
        (lambda a, n, generator=None: langevin_variance_along(
            lambda x: -torch.tanh(x), a, n, generator), ["do not match the logistic chain's"]),
        (lambda a, n, generator=None: langevin_variance_along(
            lambda x: -torch.tanh(x / 2), a, n, generator, steps=5), ["run the 200 steps"]),
        (lambda a, n, generator=None: langevin_variance(a, 2_000, generator),
         ["ignores n_particles"]),
        (lambda a, n, generator=None: 0.0, ["never moved"]),
        (lambda a, n, generator=None: langevin_variance_along(
            lambda x: torch.tanh(x / 2), a, n, generator), ["runs away"]),
        (lambda a, n, generator=None: langevin_variance_along(
            lambda x: -torch.tanh(x / 2), a, 5_000, generator) + 1e-9 * n,
         ["do not match the logistic chain's"]),
        (lambda a, n, generator=None: CHAIN(a), ["whatever the generator's seed", "formula"]),
        (lambda a, n, generator=None: langevin_variance(a, n), ["with the same seed"]),
        (lambda a, generator=None: 1.0, ["multiple values for argument 'generator'"]),
    ],
)
def test_2_3_explains_wrong_measurements(capsys, answer, phrases):
    assert_explains(capsys, checks.exercise_2_3, (answer, 0.91), *phrases)


@pytest.mark.parametrize(
    "alpha_10, phrases",
    [
        (1.2, ["Gaussian of the logistic's variance", "exercise 2.2"]),
        (1.196, ["Gaussian of the logistic's variance"]),
        (0.36, ["N(0, 1)"]),
        (1.77, ["standard deviation"]),
        (0.46, ["authors' convention"]),
        (0.97, ["too large"]),  # just outside the tolerance, and no named slip
        (0.7, ["too small"]),
        (2.5, ["too large"]),
        (float("nan"), ["not a finite number"]),
    ],
)
def test_2_3_explains_wrong_step_sizes(capsys, alpha_10, phrases):
    assert_explains(capsys, checks.exercise_2_3, (langevin_variance, alpha_10), *phrases)


def test_2_3_an_ellipsis_is_not_done_yet(capsys):
    out = run_check(capsys, checks.exercise_2_3, langevin_variance, ...)
    assert out.startswith("⏳") and "not done yet" in out


def make_sampler(drift=0.5, noise=math.sqrt, *, randn=None):
    def langevin_sampler(score_fn, x0, step_size, n_steps, generator=None):
        x = x0.clone()
        for _ in range(n_steps):
            z = randn(x) if randn else torch.randn(x.shape, generator=generator)
            x = x + drift * step_size * score_fn(x) + noise(step_size) * z
        return x

    return langevin_sampler


def test_2_4_accepts_the_fix(capsys, grading):
    assert_passes(capsys, checks.exercise_2_4, make_sampler())


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (make_sampler(noise=lambda a: a), ["still the bug", "draws what the colleague's does"]),
        (make_sampler(noise=lambda a: math.sqrt(2 * a)), ["sqrt(2 alpha)", "mixed"]),
        (make_sampler(drift=1.0, noise=lambda a: a), ["changed the drift"]),
        (make_sampler(noise=lambda a: 0.0), ["no noise"]),
        (make_sampler(randn=torch.randn_like), ["global random state", "without generator="]),
        (make_sampler(drift=1.0, noise=lambda a: math.sqrt(2 * a)),
         ["authors' convention", "2 alpha", "change only the noise line"]),
        (make_sampler(noise=lambda a: math.sqrt(a / 2)), ["does not reproduce", "step by step"]),
        (lambda f, x0, a, n, generator=None: x0.add_(make_sampler()(f, x0, a, n, generator) - x0),
         ["changed the tensor it was given"]),
    ],
)
def test_2_4_explains_wrong_fixes(capsys, answer, phrases):
    assert_explains(capsys, checks.exercise_2_4, answer, *phrases)


def make_mala_log_accept(*, variance=1.0, mean_scale=0.5, back_score="y", clamp=True,
                         proposal=True, flip=False):
    """Exercise 2.5's answer, with one of its known mistakes switched on."""
    def mala_log_accept(log_prob_fn, score_fn, x, y, step_size):
        def log_q(to, start, score):
            mean = start + mean_scale * step_size * score
            return -((to - mean) ** 2).sum(1) / (2 * variance * step_size)

        back = score_fn(y) if back_score == "y" else score_fn(x)
        log_r = log_prob_fn(y) - log_prob_fn(x)
        if proposal:
            log_r = log_r + log_q(x, y, back) - log_q(y, x, score_fn(x))
        log_r = -log_r if flip else log_r
        return torch.clamp(log_r, max=0.0) if clamp else log_r

    return mala_log_accept


def mala_with_normal_densities(log_prob_fn, score_fn, x, y, step_size):
    """A right answer written another way: torch.distributions, constants included."""
    scale = math.sqrt(step_size)
    forward = torch.distributions.Normal(x + 0.5 * step_size * score_fn(x), scale)
    backward = torch.distributions.Normal(y + 0.5 * step_size * score_fn(y), scale)
    log_r = (log_prob_fn(y) + backward.log_prob(x).sum(1)
             - log_prob_fn(x) - forward.log_prob(y).sum(1))
    return torch.minimum(log_r, torch.zeros_like(log_r))


def test_2_5_accepts_the_solution(capsys, grading):
    assert_passes(capsys, checks.exercise_2_5, make_mala_log_accept())
    assert_passes(capsys, checks.exercise_2_5, mala_with_normal_densities)


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (make_mala_log_accept(proposal=False), ["left out the proposal's densities"]),
        (make_mala_log_accept(flip=True), ["upside down"]),
        (make_mala_log_accept(variance=0.5), ["variance is alpha / 2"]),
        (make_mala_log_accept(variance=2.0), ["twice the variance alpha"]),
        (make_mala_log_accept(mean_scale=-0.5), ["mean has the wrong sign"]),
        (make_mala_log_accept(mean_scale=1.0), ["lacks the 1/2"]),
        (make_mala_log_accept(back_score="x"), ["score at x"]),
        (make_mala_log_accept(clamp=False), ["at most 1", "min(0, log r)"]),
        (lambda *args: torch.exp(make_mala_log_accept()(*args)), ["not its logarithm"]),
        (lambda *args: make_mala_log_accept()(*args)[:, None], ["shape"]),
        (lambda lp, sf, x, y, a: make_mala_log_accept()(lp, sf, x.mul_(1.0), y.add_(1.0), a),
         ["changed the tensor it was given"]),
    ],
)
def test_2_5_explains_wrong_answers(capsys, answer, phrases):
    assert_explains(capsys, checks.exercise_2_5, answer, *phrases)


def test_2_5_catches_an_acceptance_that_is_right_only_where_it_is_checked(capsys):
    """Right on the check's proposals, wrong in a chain: the variance test sees it."""
    right = make_mala_log_accept()

    def only_for_small_steps(log_prob_fn, score_fn, x, y, step_size):
        if step_size < 1.0:
            return right(log_prob_fn, score_fn, x, y, step_size)
        return torch.zeros(len(x))  # accept everything: plain Langevin at step 1.0

    assert_explains(capsys, checks.exercise_2_5, only_for_small_steps, "variance")


# ---------------------------------------------------------------- chapter 3: annealing


def common_ratio(sigma_max, sigma_min, n_levels):
    return (sigma_max / sigma_min) ** (1 / (n_levels - 1))


def test_3_1_accepts_the_solution(capsys, grading):
    assert_passes(capsys, exercise_3_1, common_ratio)


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (lambda h, lo, n: (h / lo) ** (1 / n), ["L-th root", "one for each gap"]),
        (lambda h, lo, n: (lo / h) ** (1 / (n - 1)), ["below 1"]),
        (lambda h, lo, n: (h - lo) / (n - 1), ["evenly spaced ladder"]),
        (lambda h, lo, n: h / lo / (n - 1), ["(L - 1)-th root"]),
        (
            lambda h, lo, n: common_ratio(h, lo, n) if n > 10 else (h / lo) ** (1 / n),
            ["right for long ladders", "wrong for short ladders"],
        ),
    ],
)
def test_3_1_explains_wrong_answers(capsys, answer, phrases):
    assert_explains(capsys, exercise_3_1, answer, *phrases)


def test_3_1_accepts_the_divergence_in_any_honest_form(capsys, grading):
    forms = [
        neighbour_kl,
        lambda g, d: d * (g**2 - 1) / 2 - d * math.log(g),
        lambda g, d: float(d * 0.5 * (torch.tensor(g, dtype=torch.float64) ** 2 - 1
                                      - torch.log(torch.tensor(g, dtype=torch.float64) ** 2))),
        lambda g, d: sum(0.5 * (g**2 - 1 - math.log(g**2)) for _ in range(d)),
    ]
    for form in forms:
        assert_passes(capsys, checks.exercise_3_1, form, lambda a, b, n: (a / b) ** (1 / (n - 1)))


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (lambda g, d: d / 2 * (1 / g**2 - 1 + 2 * math.log(g)), ["the other way round"]),
        (lambda g, d: d * (g**2 - 1 - 2 * math.log(g)), ["twice the divergence"]),
        (lambda g, d: d / 2 * (g**2 - 1 - math.log(g)), ["2 log(gamma), belongs"]),
        (lambda g, d: 0.5 * (g**2 - 1 - 2 * math.log(g)), ["one dimension's divergence"]),
        (lambda g, d: d / 2 * (g - 1 - math.log(g)), ["ratio of the variances"]),
        (lambda g, d: d * (g - 1) ** 2, ["leading order"]),
    ],
)
def test_3_1_names_wrong_divergences(capsys, answer, phrases):
    """Each slip by name; a negative value or a nonzero one at gamma = 1 by the property it
    breaks (below)."""
    right_ratio = lambda a, b, n: (a / b) ** (1 / (n - 1))  # noqa: E731
    assert_explains(capsys, checks.exercise_3_1, (answer, right_ratio), *phrases)


def geometric_sigmas(sigma_max, sigma_min, n_levels):
    return torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), n_levels))


def test_3_2_accepts_the_solution(capsys, grading):
    assert_passes(capsys, exercise_3_2, geometric_sigmas)
    assert_passes(capsys, checks.exercise_3_2, geometric_sigmas,
                  lambda a, b, n: float(evenly_spaced_levels(a, b, n)))


def _top_count(a, b, n):  # keeps the top hand-over within gamma
    gamma = (a / b) ** (1 / (n - 1))
    return 1 + math.ceil((a - b) / (a * (1 - 1 / gamma)))


def test_3_2_names_a_strict_inequality_at_a_tie(capsys, grading):
    def strict(a, b, n):  # a ratio strictly below gamma: one level too many at a tie
        gamma, count = (a / b) ** (1 / (n - 1)), 2
        while 1 + (a - b) / (count - 1) / b >= gamma:
            count += 1
        return count

    assert_explains(capsys, checks.exercise_3_2, (geometric_sigmas, strict), "strictly smaller",
                    "(4, 1, 3) = 5")


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (lambda a, b, n: evenly_spaced_levels(a, b, n) - 1, ["one level short", "above"]),
        (lambda a, b, n: evenly_spaced_levels(a, b, n) + 3, ["enough, but not the fewest"]),
        (lambda a, b, n: evenly_spaced_levels(a, b, n) // 2, ["too few", "hardest hand-over"]),
        (lambda a, b, n: n, ["geometric ladder's own number"]),
        (_top_count, ["top hand-over", "largest where the levels are smallest"]),
        (lambda a, b, n: evenly_spaced_levels(a, b, n) - 0.5, ["whole number"]),
        (lambda a, b, n: 1, ["at least two levels"]),
    ],
)
def test_3_2_names_wrong_level_counts(capsys, answer, phrases):
    assert_explains(capsys, checks.exercise_3_2, (geometric_sigmas, answer), *phrases)


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (lambda a, b, n: geometric_sigmas(a, b, n).flip(0), ["is increasing"]),
        (lambda a, b, n: torch.linspace(a, b, n), ["evenly spaced (linspace)"]),
        (lambda a, b, n: a * (b / a) ** (torch.arange(n) / n), ["stops short of sigma_min"]),
        (lambda a, b, n: geometric_sigmas(a, b, n + 1), ["wrong shape"]),
        (lambda a, b, n: geometric_sigmas(a, b, n).tolist(), ["returned a list"]),
        (lambda a, b, n: geometric_sigmas(a, b, n).double(),
         ["dtype torch.float64", "return float32, as the exercise asks"]),
        (lambda a, b, n: torch.tensor([a * ((b / a) ** (1 / (n - 1))) ** i
                                       for i in range(1, n + 1)]),  # i = 1, ..., L
         ["shifted one level down", "i runs from 0"]),
        (lambda a, b, n: torch.logspace(math.log(a), math.log(b), n),
         ["torch.logspace", "powers of 10", "base=math.e"]),
        (lambda a, b, n: geometric_sigmas(a, b, n) ** 2, ["differs from the reference"]),
    ],
)
def test_3_2_explains_wrong_answers(capsys, answer, phrases):
    assert_explains(capsys, exercise_3_2, answer, *phrases)


def test_3_3_accepts_the_solution(capsys, grading):
    assert_passes(capsys, checks.exercise_3_3,
                  lambda eps, s, m, t: eps * (t + s**2) / (t + m**2))


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (lambda a, s, m, t: a * (s / m) ** 2, ["Algorithm 1's", "not sigma_i^2"]),
        (lambda a, s, m, t: a * (t**2 + s**2) / (t**2 + m**2), ["squared tau2"]),
        (lambda a, s, m, t: a * (t**0.5 + s) ** 2 / (t**0.5 + m) ** 2,
         ["added standard deviations"]),
        (lambda a, s, m, t: a * (t + s) / (t + m), ["a standard deviation, to tau^2"]),
        (lambda a, s, m, t: a * ((t + s**2) / (t + m**2)) ** 0.5, ["grow like the variance"]),
        (lambda a, s, m, t: a * (t + m**2) / (t + s**2), ["upside down"]),
        (lambda a, s, m, t: a * (t + s**2), ["not normalised"]),
        (lambda a, s, m, t: 2 * a * (t + s**2) / (t + m**2), ["wrong at 9 of 9 test points"]),
        (
            lambda a, s, m, t: a * (t + s**2) / (t + m**2) if m**2 > 100 * t else a * (s / m),
            ["right when every level is far above the data's spread", "and at the last level",
             "wrong when the levels straddle the data's spread"],
        ),
        (lambda a, s, m: a * (s / m) ** 2, ["takes 3 positional arguments but 4 were given"]),
        (lambda a, s, m, t: [a], ["should be a number", "list"]),
    ],
)
def test_3_3_explains_wrong_answers(capsys, answer, phrases):
    assert_explains(capsys, checks.exercise_3_3, answer, *phrases)


def plain_langevin_share(x0, generator=None, *, count=lambda x: x.sum(dim=1) > 0):
    from scorelab.densities import ncsn_toy_mixture
    from scorelab.langevin import langevin_dynamics

    mixture = ncsn_toy_mixture()
    x = langevin_dynamics(mixture.score, x0, 0.1, 300, generator=generator, progress=False)
    return count(x).float().mean().item()


def test_3_4_accepts_the_solution(capsys, grading):
    assert_passes(capsys, exercise_3_4, plain_langevin_share)


def test_3_4_a_share_counted_at_the_start_fails_across_the_gap(capsys):
    """Counting the start's sides without sampling agrees on boxes, not on a line just below
    x + y = 0, which lies in the heavy mode's basin (its edge is at x + y = -0.14)."""
    answer = lambda x0, generator=None: (x0.sum(dim=1) > 0).float().mean().item()  # noqa: E731
    assert_explains(capsys, exercise_3_4, (answer,), "on the line x_1 + x_2 = -0.1",
                    "you report 0.000")


@pytest.mark.parametrize(
    "answers, phrases",
    [
        (((lambda x0, generator=None: 0.8),), ["the true weight"]),
        (
            (lambda x0, generator=None: 100 * plain_langevin_share(x0, generator),),
            ["looks like a percentage"],
        ),
        (
            (lambda x0, generator=None: 1 - plain_langevin_share(x0, generator),),
            ["share of the (-5, -5) mode"],
        ),
        (
            (
                lambda x0, generator=None: plain_langevin_share(
                    x0, generator, count=lambda x: (x - 5).norm(dim=1) < 1
                ),
            ),
            ["plain Langevin from that start puts"],
        ),
    ],
)
def test_3_4_explains_wrong_answers(capsys, answers, phrases):
    assert_explains(capsys, exercise_3_4, answers, *phrases)


def test_3_4_a_constant_answer_fails_on_the_lopsided_start(capsys):
    assert_explains(
        capsys, exercise_3_4, (lambda x0, generator=None: 0.5,), "[-8, 2] x [-8, 8]"
    )


def test_3_4_hidden_starts_catch_an_answer_tuned_to_the_public_ones(capsys, monkeypatch):
    from scorelab.checks import _core

    tuned = {0.474: 0.48, 0.3285: 0.34, 0.0: 0.62}  # the share at the start -> the answer

    def memorised(x0, generator=None):
        start = round((x0.sum(dim=1) > 0).float().mean().item(), 4)
        return tuned.get(start, 0.5)

    assert_passes(capsys, exercise_3_4, memorised)
    monkeypatch.setattr(_core, "GRADING", True)
    assert_explains(capsys, exercise_3_4, (memorised,), "hidden start")


def make_annealed(*, reverse=False, exponent=2, noise=True, randn=None, divide=True,
                  steps_short=0, in_place=False, drift=0.5, noise_factor=1.0,
                  levels=slice(None), one_draw_per_level=False, float_sigmas=True):
    """The annealed sampler of exercise 3.5: right by default, else with one slip (a step
    drift * alpha * s + sqrt(noise_factor * alpha) * z, some levels only, one draw per level,
    steps_short steps fewer per level (negative: more), sigma passed as a 0-d tensor...)."""

    def annealed_langevin(score_fn, x0, sigmas, step_size, n_steps_each, generator=None):
        x = x0 if in_place else x0.clone()
        ladder = sigmas.flip(0) if reverse else sigmas
        for sigma in (ladder.tolist() if float_sigmas else list(ladder))[levels]:
            alpha = step_size * (float(sigma) / (sigmas[-1].item() if divide else 1.0)) ** exponent
            z = None
            for _ in range(n_steps_each - steps_short):
                if z is None or not one_draw_per_level:
                    z = randn(x) if randn else torch.randn(x.shape, generator=generator)
                step = drift * alpha * score_fn(x, sigma) + (
                    math.sqrt(noise_factor * alpha) * z if noise else 0)
                if in_place:
                    x += step
                else:
                    x = x + step
        return x

    return annealed_langevin


def test_3_5_accepts_the_solution(capsys, grading):
    assert_passes(capsys, checks.exercise_3_5, make_annealed())


def test_3_5_accepts_correct_variants(capsys, grading):
    """Float64 inside and the step computed from tensors stay within the check's tolerance of
    the reference, draw for draw."""
    def in_float64(score_fn, x0, sigmas, step_size, n_steps_each, generator=None):
        x, ladder = x0.double(), sigmas.double()
        for sigma in ladder.tolist():
            alpha = step_size * (sigma / ladder[-1].item()) ** 2
            for _ in range(n_steps_each):
                z = torch.randn(x0.shape, generator=generator).double()
                x = x + alpha / 2 * score_fn(x.float(), sigma).double() + math.sqrt(alpha) * z
        return x.float()

    def tensor_steps(score_fn, x0, sigmas, step_size, n_steps_each, generator=None):
        x, alphas = x0.clone(), step_size * (sigmas / sigmas[-1]) ** 2
        for sigma, alpha in zip(sigmas.tolist(), alphas.tolist()):
            for _ in range(n_steps_each):
                x = x + 0.5 * alpha * score_fn(x, sigma) + alpha**0.5 * torch.randn(
                    x.shape, generator=generator)
        return x

    for answer in (in_float64, tensor_steps):
        assert_passes(capsys, checks.exercise_3_5, answer)


def test_3_5_refuses_a_sampler_that_ignores_the_generator(capsys):
    """Its weights are right, but the text prescribes the draws: the check compares draw for draw."""
    assert_explains(
        capsys, checks.exercise_3_5, make_annealed(randn=lambda x: torch.randn(x.shape).to(x)),
        "global random state", "a draw without generator=")


def _ignores_n_steps_each(score_fn, x0, sigmas, step_size, n_steps_each, generator=None):
    return make_annealed()(score_fn, x0, sigmas, step_size, 100, generator=generator)


def _every_other_level(score_fn, x0, sigmas, step_size, n_steps_each, generator=None):
    ladder = torch.cat([sigmas[:-1:2], sigmas[-1:]])
    x = x0.clone()
    for sigma in ladder.tolist():
        alpha = step_size * (sigma / sigmas[-1].item()) ** 2
        for _ in range(n_steps_each):
            z = torch.randn(x.shape, generator=generator)
            x = x + alpha / 2 * score_fn(x, sigma) + math.sqrt(alpha) * z
    return x


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (make_annealed(drift=1.0, noise_factor=2.0), ["authors' code convention", "2 alpha_i"]),
        (lambda f, x0, s, a, n, generator=None: make_annealed()(f, x0, s, 2 * a, n, generator),
         ["twice Algorithm 1's step"]),  # a doubled step is the authors' convention
        (make_annealed(noise_factor=2.0), ["must not be mixed"]),
        (make_annealed(steps_short=-1), ["one step more than n_steps_each"]),
        (make_annealed(exponent=1), ["grows like sigma_i;", "sigma_i^2"]),
        (make_annealed(one_draw_per_level=True), ["one noise vector per level"]),
        (make_annealed(levels=slice(1, None)), ["skip the first level"]),
        (make_annealed(levels=slice(None, -1)), ["skip the last level"]),
        (make_annealed(float_sigmas=False),
         ["pass sigma as a Python float: iterate over sigmas.tolist()"]),
        (_ignores_n_steps_each, ["draw for draw", "exactly n_steps_each"]),
        (_every_other_level, ["draw for draw", "every level of the ladder once"]),
    ],
)
def test_3_5_names_the_slips_that_statistics_miss(capsys, answer, phrases):
    """Each of these gave weights and a spread close enough to the reference's to pass before."""
    assert_explains(capsys, checks.exercise_3_5, answer, *phrases)


def test_3_5_hidden_cases_compare_draw_for_draw_too(capsys, grading):
    for answer in (make_annealed(drift=1.0, noise_factor=2.0), make_annealed(steps_short=-1),
                   make_annealed(levels=slice(1, None))):
        assert_explains(capsys, checks.exercise_3_5, answer, "not yet right")


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (make_annealed(exponent=0), ["the same at every level"]),
        (make_annealed(noise=False), ["collapsed", "add the noise"]),
        (make_annealed(exponent=-2, reverse=True), ["weight of the (5, 5) mode"]),
        (lambda f, x0, s, a, n, generator=None: x0[:, :1], ["wrong shape"]),
        (lambda f, x0, s, a, n, generator=None: x0 * float("nan"), ["diverged"]),
        (make_annealed(divide=False), ["without the division by sigma_L^2", "sigma_L = 0.5"]),
        (make_annealed(steps_short=1), ["one step fewer"]),
        (make_annealed(in_place=True), ["changed the tensor it was given"]),
    ],
)
def test_3_5_explains_wrong_answers(capsys, answer, phrases):
    assert_explains(capsys, checks.exercise_3_5, answer, *phrases)


def make_seeded(*, restart=False, power=2, level_seeds=False):
    """The seeded sampler of exercise 3.6: right by default; the colleague's version has
    restart=True (a new generator at every level) and power=1 (a step growing like sigma);
    level_seeds restarts level i from seed + i instead."""

    def annealed_langevin_seeded(score_fn, x0, sigmas, step_size, n_steps_each, seed=0):
        generator, x = torch.Generator().manual_seed(seed), x0.clone()
        for level, sigma in enumerate(sigmas.tolist()):
            if restart:
                generator = torch.Generator().manual_seed(seed + level * level_seeds)
            alpha = step_size * (sigma / sigmas[-1].item()) ** power
            for _ in range(n_steps_each):
                z = torch.randn(x.shape, generator=generator)
                x = x + alpha / 2 * score_fn(x, sigma) + math.sqrt(alpha) * z
        return x

    return annealed_langevin_seeded


def test_3_6_accepts_the_fix(capsys, grading):
    assert_passes(capsys, checks.exercise_3_6, make_seeded())


def test_3_6_refuses_the_global_generator_seeded_once(capsys):
    """Draw for draw it is the reference (the global generator seeded with seed gives the same
    stream), but it reseeds the caller's global random state, and the text asks for a generator."""
    def seeded_globally(score_fn, x0, sigmas, step_size, n_steps_each, seed=0):
        torch.manual_seed(seed)
        x = x0.clone()
        for sigma in sigmas.tolist():
            alpha = step_size * (sigma / sigmas[-1].item()) ** 2
            for _ in range(n_steps_each):
                x = x + alpha / 2 * score_fn(x, sigma) + math.sqrt(alpha) * torch.randn(x.shape)
        return x

    assert_explains(capsys, checks.exercise_3_6, seeded_globally, "global random state",
                    "torch.manual_seed", "torch.Generator seeded with seed")


def test_3_6_leaves_the_callers_global_random_state_alone(capsys):
    torch.manual_seed(1234)
    before = torch.random.get_rng_state()
    assert_passes(capsys, checks.exercise_3_6, make_seeded())
    assert torch.equal(torch.random.get_rng_state(), before)


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (make_seeded(restart=True, power=1), ["behaves like your colleague's version"]),
        (make_seeded(restart=True), ["Algorithm 1's step now", "a seed fixes where"]),
        (make_seeded(power=1), ["one noise stream now", "grows like sigma_i;"]),
        (make_seeded(restart=True, level_seeds=True), ["a seed of its own", "one generator"]),
        (lambda f, x0, s, a, n, seed=0: x0, ["differs from the reference"]),
        (lambda f, x0, s, a, n, seed=0: x0[:, 0], ["shape"]),
    ],
)
def test_3_6_explains_wrong_answers(capsys, answer, phrases):
    assert_explains(capsys, checks.exercise_3_6, answer, *phrases)


def test_3_6_restarting_the_noise_biases_the_weights_beyond_the_seeds_spread():
    """The exercise's premise, measured (its answer quotes five seeds; three suffice here): with
    Algorithm 1's step, restarting the stream at every level lowers the weight of (5, 5)."""
    from scorelab.densities import ncsn_toy_mixture

    mixture = ncsn_toy_mixture()
    ladder = torch.logspace(math.log10(20.0), 0.0, 10)
    start = 16 * torch.rand(10_000, 2, generator=torch.Generator().manual_seed(0)) - 8

    def weights(sampler):
        return torch.tensor([
            (sampler(lambda x, s: mixture.perturbed(s).score(x), start, ladder, 0.1, 100,
                     seed=seed).sum(dim=1) > 0).float().mean().item()
            for seed in range(3)
        ])

    restarted, fixed = weights(make_seeded(restart=True)), weights(make_seeded())
    assert restarted.max() < fixed.min(), (restarted, fixed)
    assert 0.015 < fixed.mean() - restarted.mean() < 0.04, (restarted, fixed)


# ---------------------------------------------------------------- chapter 4: denoising score matching


def dsm_loss(
    model, x, sigma, generator=None, *, target=lambda z, s: -z / s, weight=1.0, clean=False
):
    z = torch.randn(x.shape, generator=generator)
    score = model(x if clean else x + sigma * z)
    return weight * 0.5 * ((score - target(z, sigma)) ** 2).sum(dim=1)


def dsm_loss_with_noise_in_float64(model, x, sigma, generator=None):
    z = torch.randn(x.shape, generator=generator, dtype=torch.float64).to(x.dtype)
    return 0.5 * ((model(x + sigma * z) + z / sigma) ** 2).sum(dim=1)


def test_4_1_accepts_the_solution(capsys):
    assert_passes(capsys, checks.exercise_4_1, dsm_loss)


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (
            lambda m, x, s, generator=None: dsm_loss(m, x, s, generator, target=lambda z, s: z / s),
            ["wrong sign"],
        ),
        (
            lambda m, x, s, generator=None: dsm_loss(m, x, s, generator, target=lambda z, s: -z),
            ["target is -z;"],
        ),
        (
            lambda m, x, s, generator=None: dsm_loss(m, x, s, generator, weight=s**2),
            ["is sigma^2 (= 0.09) times the reference"],
        ),
        (
            lambda m, x, s, generator=None: dsm_loss(m, x, s, generator, weight=2.0),
            ["the 1/2 in front"],
        ),
        (lambda m, x, s, generator=None: dsm_loss(m, x, s, generator, clean=True), ["clean x"]),
        (
            lambda m, x, s, generator=None: dsm_loss(m, x, s, generator).mean(),
            ["wrong shape", "()"],
        ),
        (
            lambda m, x, s, generator=None: dsm_loss(m, x, s, generator).mean().item(),
            ["Python float", ".item()"],
        ),
        (lambda m, x, s, generator=None: dsm_loss(m, x, s, generator).detach(), ["no gradient"]),
        (lambda m, x, s, generator=None: dsm_loss(m, x, s, generator) / 3, ["divided by D"]),
        (dsm_loss_with_noise_in_float64, ["drawn in float64"]),
        (
            lambda m, x, s, generator=None: dsm_loss(m, x, s, None),
            ["global random state", "generator you are given"],
        ),
    ],
)
def test_4_1_explains_wrong_answers(capsys, answer, phrases):
    assert_explains(capsys, checks.exercise_4_1, answer, *phrases)


def test_4_2_accepts_the_solution(capsys):
    assert_passes(
        capsys, exercise_4_2, lambda x, score_fn, sigma: x + sigma**2 * score_fn(x)
    )


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (lambda x, f, s: x + s * f(x), ["multiplied the score by sigma"]),
        (lambda x, f, s: x - s**2 * f(x), ["add it"]),
        (lambda x, f, s: x + s**2 * f(x).sum(), ["differs from the reference"]),
        (lambda x, f, s: (x + s**2 * f(x)).numpy(), ["numpy array"]),
        (lambda x, f, s: x.add_(s**2 * f(x)), ["changed the tensor it was given"]),
        (lambda x, f, s: x + 0.5 * s**2 * f(x), ["half of sigma^2 * s(x~)"]),
    ],
)
def test_4_2_explains_wrong_answers(capsys, answer, phrases):
    assert_explains(capsys, exercise_4_2, answer, *phrases)


def _denoise(x, score_fn, sigma):
    return x + sigma**2 * score_fn(x)


def test_4_2_accepts_a_float64_computation_and_the_letter_in_brackets(capsys, grading):
    def in_float64(x, score_fn, sigma):
        score_64 = lambda y: score_fn(y.float()).double()  # noqa: E731
        return posterior_variance(x.double(), score_64, sigma).float()

    assert_passes(capsys, checks.exercise_4_2, _denoise, in_float64, "(b)")


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (lambda x, f, s: torch.full((len(x),), s**2), ["sigma^2 alone"]),
        (lambda x, f, s: posterior_variance(x, f, s, sign=-1.0), ["sign of the second term"]),
        (lambda x, f, s: posterior_variance(x, f, s, power=2), ["needs sigma^4"]),
        (lambda x, f, s: posterior_variance(x, f, s, summed=True), ["mean over the D"]),
        (lambda x, f, s: s**2 + s**4 * f(x).square().sum(1) / 2, ["square of the score"]),
        (lambda x, f, s: posterior_variance(x.requires_grad_(True), f, s), ["requires_grad"]),
        (lambda x, f, s: posterior_variance(x, f, s)[:, None], ["shape"]),
        (lambda x, f, s: posterior_variance(x, f, s) / s**2, ["divided by sigma^2"]),
        (lambda x, f, s: posterior_variance(x, f, s) - s**2, ["leaves out sigma^2 I"]),
        (lambda x, f, s: s**2 + (posterior_variance(x, f, s) - s**2) * x.shape[1],
         ["sums the second term"]),
    ],
    ids=["sigma^2", "sign", "sigma^2 power", "summed", "squared score", "requires_grad",
         "shape", "over sigma^2", "no sigma^2 I", "second term summed"],
)
def test_4_2_names_wrong_posterior_variances(capsys, answer, phrases):
    assert_explains(capsys, checks.exercise_4_2, (_denoise, answer, "b"), *phrases)


def test_4_2_posterior_variance_works_under_no_grad_only_with_enable_grad(capsys):
    def without_enable_grad(x, score_fn, sigma):
        x = x.detach().requires_grad_(True)
        score = score_fn(x)
        trace = sum(torch.autograd.grad(score[:, d].sum(), x, retain_graph=True)[0][:, d]
                    for d in range(x.shape[1]))
        return sigma**2 + sigma**4 * trace / x.shape[1]

    out = run_check(capsys, checks.exercise_4_2, _denoise, without_enable_grad, "b")
    assert out.startswith("❌") and "under torch.no_grad()" in out, out
    assert "torch.enable_grad()" in out and "your code raised" not in out, out


@pytest.mark.parametrize("letter, phrase", [("a", "near a mode"), ("c", "just beyond a mode"),
                                            ("d", "Does it anywhere?"), ("e", "one of the letters")])
def test_4_2_explains_each_wrong_letter(capsys, letter, phrase):
    assert_explains(capsys, checks.exercise_4_2, (_denoise, posterior_variance, letter), phrase)


def test_4_2_waits_for_every_part(capsys):
    out = run_check(capsys, checks.exercise_4_2, _denoise, posterior_variance, ...)
    assert out.startswith("⏳"), out


# ---------------------------------------------------------------- chapter 5: sliced score matching


def sliced_loss(
    model,
    x,
    n_projections=1,
    generator=None,
    *,
    vr=False,
    trace_sign=1.0,
    half=0.5,
    reduce="mean",
    create_graph=True,
    per_projection_draws=False,
    detach_second=False,
    average_dims=False,
):
    if per_projection_draws:
        v = torch.stack([torch.randn(x.shape, generator=generator) for _ in range(n_projections)])
        v = v[torch.randperm(n_projections, generator=generator)] if n_projections > 1 else v
    else:
        v = torch.randn((n_projections, *x.shape), generator=generator)  # (M, N, D)
    x = x.detach().unsqueeze(0).expand_as(v).clone().requires_grad_(True)  # (M, N, D)
    score = model(x.reshape(-1, x.shape[-1])).reshape(x.shape)
    jv = torch.autograd.grad((score * v).sum(), x, create_graph=create_graph)[0]
    trace = (jv * v).sum(-1)
    norm = half * (score**2).sum(-1) if vr else half * (score * v).sum(-1) ** 2
    if average_dims:
        trace, norm = trace / x.shape[-1], norm / x.shape[-1]
    loss = trace_sign * trace + (norm.detach() if detach_second else norm)  # (M, N)
    return loss.mean(0) if reduce == "mean" else loss.sum(0)


def ssm(**options):
    return lambda model, x, n_projections=1, generator=None: sliced_loss(
        model, x, n_projections, generator, **options
    )


@pytest.mark.parametrize("check, vr", [(checks.exercise_5_1, False), (exercise_5_2, True)])
def test_5_accepts_the_solutions(capsys, check, vr):
    assert_passes(capsys, check, ssm(vr=vr))


@pytest.mark.parametrize("check, vr", [(checks.exercise_5_1, False), (exercise_5_2, True)])
def test_5_accepts_directions_drawn_in_another_order(capsys, check, vr):
    assert_passes(capsys, check, ssm(vr=vr, per_projection_draws=True))


@pytest.mark.parametrize(
    "check, vr, options, phrases",
    [
        (checks.exercise_5_1, False, {"vr": True}, ["SSM-VR term"]),
        (exercise_5_2, True, {"vr": False}, ["plain SSM term"]),
        (checks.exercise_5_1, False, {"trace_sign": -1.0}, ["trace term has the wrong sign"]),
        (exercise_5_2, True, {"half": 1.0}, ["lacks its 1/2"]),
        (checks.exercise_5_1, False, {"reduce": "sum"}, ["number of projections"]),
        (exercise_5_2, True, {"create_graph": False}, ["create_graph=True"]),
        (checks.exercise_5_1, False, {"trace_sign": 0.0}, ["trace term", "missing"]),
        (checks.exercise_5_1, False, {"detach_second": True}, ["second term carries no gradient"]),
        (exercise_5_2, True, {"average_dims": True},
         ["divided by D, the dimension", "do not average over them"]),
        (checks.exercise_5_1, False, {"reduce": "sum"},
         ["M, the number of projections (= 3) times", "do not sum them"]),
    ],
)
def test_5_explains_wrong_answers(capsys, check, vr, options, phrases):
    assert_explains(capsys, check, ssm(**{"vr": vr, **options}), *phrases)


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (
            lambda m, x, n_projections=1, generator=None: sliced_loss(
                m, x, n_projections, generator
            ).sum(),
            ["wrong shape"],
        ),
        (
            lambda m, x, n_projections=1, generator=None: (
                sliced_loss(m, x, n_projections, generator).mean().item()
            ),
            ["Python float"],
        ),
        (
            lambda m, x, n_projections=1, generator=None: sliced_loss(m, x, n_projections, None),
            ["global random state", "generator you are given"],
        ),
        (
            lambda m, x, n_projections=1, generator=None: (
                sliced_loss(m, x, n_projections, generator) + 0.1 * x[:, 0] ** 2
            ),
            ["approach exact score matching"],
        ),
    ],
)
def test_5_1_explains_other_wrong_answers(capsys, answer, phrases):
    assert_explains(capsys, checks.exercise_5_1, answer, *phrases)


# ---------------------------------------------------------------- chapter 6: NCSN


def make_norm(
    *,
    correction="inside",
    spread_unbiased=True,
    pixel_unbiased=False,
    order=("gamma", "delta", "beta"),
    dims=(2, 3),
    shift=True,
    eta="inside",
    cut=(),
):
    from scorelab.ncsn import ConditionalInstanceNorm2dPlus

    def kept(name, value):  # a statistic as written, or cut from the graph
        return value.detach() if name in cut else value

    class Norm(ConditionalInstanceNorm2dPlus):
        def forward(self, x, labels):
            c = self.num_features
            means = kept("mean", x.mean(dim=(2, 3)))  # (N, C)
            spread = means.var(dim=1, keepdim=True, unbiased=spread_unbiased)
            spread_eta = 0.0 if eta == "none in v" else self.eps
            corrected = ((means - means.mean(dim=1, keepdim=True)) / torch.sqrt(spread + spread_eta))[
                ..., None, None
            ]
            variance = kept("var", x.var(dim=dims, unbiased=pixel_unbiased, keepdim=True))
            pixel_eta = 0.0 if eta == "none in pixels" else self.eps
            scale = variance.sqrt() + self.eps if eta == "outside" else torch.sqrt(variance + pixel_eta)
            h = (x - kept("mean", x.mean(dim=dims, keepdim=True))) / scale
            chunks = self.embed(labels)[..., None, None].split(c, dim=1)  # each (N, C, 1, 1)
            read = dict(zip(order[: len(chunks)], chunks))
            gamma, alpha = read["gamma"], read["delta"]
            if correction == "inside":
                out = gamma * (h + alpha * corrected)
            elif correction == "outside":
                out = gamma * h + alpha * corrected
            else:
                out = gamma * h
            if self.bias and shift:
                out = out + read["beta"]
            return out

    return Norm


def test_6_1_accepts_the_solution(capsys):
    assert_passes(capsys, checks.exercise_6_1, make_norm())


@pytest.mark.parametrize(
    "options, phrases",
    [
        ({"correction": None}, ["mean correction", "missing"]),
        ({"correction": "outside"}, ["after scaling by gamma"]),
        ({"spread_unbiased": False}, ["biased variance", "divided by C - 1"]),
        ({"pixel_unbiased": True}, ["unbiased=False"]),
        ({"order": ("delta", "gamma", "beta")}, ["read the embedding row as delta, gamma, beta",
                                                  "it holds gamma (first C entries), then delta"]),
        ({"order": ("beta", "gamma", "delta")}, ["read the embedding row as beta, gamma, delta"]),
        ({"order": ("gamma", "beta", "delta")}, ["read the embedding row as gamma, beta, delta"]),
        ({"dims": (1, 2, 3)}, ["layer norm"]),
        ({"shift": False}, ["beta is missing"]),
        ({"eta": "outside"}, ["your eta sits outside the square root"]),
        ({"eta": "none in v"}, ["spread of the channel means has no eta"]),
        ({"eta": "none in pixels"}, ["pixel variance has no eta"]),
        ({"cut": ("mean",)}, ["pixel means are cut from the graph", "gradient with respect to x"]),
        ({"cut": ("var",)}, ["pixel variances are cut from the graph"]),
        ({"cut": ("mean", "var")}, ["pixel means and variances are cut from the graph"]),
    ],
)
def test_6_1_explains_wrong_answers(capsys, options, phrases):
    assert_explains(capsys, checks.exercise_6_1, make_norm(**options), *phrases)


def per_channel(values, x):
    return torch.tensor(values, dtype=x.dtype).reshape(1, -1, 1, 1)


def test_6_1_part_1_alone_says_so_and_part_2_completes_it(capsys):
    out = run_check(capsys, checks.exercise_6_1, make_norm())
    assert out.startswith("✅ Exercise 6.1: part 1 is right") and "Part 2" in out, out
    assert_passes(capsys, checks.exercise_6_1, make_norm(), lambda x: 3 * x - 2,
                  lambda x: x * per_channel([1.0, 2.0, 3.0, 4.0], x))
    per_example = torch.tensor([1.0, 2.0, 0.5, 4.0]).reshape(-1, 1, 1, 1)
    assert_passes(capsys, checks.exercise_6_1, make_norm(), lambda x: per_example * x + 1,
                  lambda x: x + per_channel([1.0, 0.0, 0.0, 0.0], x))


@pytest.mark.parametrize(
    "invisible, delta_only, phrases",
    [
        (lambda x: x, lambda x: x + 1, ["invisible_change(x) barely differs"]),
        (lambda x: -x, lambda x: x + 1, ["even plain instance norm", "mind the sign"]),
        (lambda x: 1e-4 * x, lambda x: x + 1, ["eta = 1e-5"]),
        (lambda x: x.flip(-1), lambda x: x + 1, ["even plain instance norm"]),
        (lambda x: x + per_channel([0.0, 1.0, 2.0, 3.0], x), lambda x: x + 1,
         ["the delta term can", "delta_only_change's kind"]),
        (lambda x: 2 * x, lambda x: x + 5, ["delta_only_change(x): neither layer"]),
        (lambda x: 2 * x, lambda x: x * per_channel([-1.0, 1.0, 1.0, 1.0], x),
         ["delta_only_change(x): even plain instance norm"]),
        (lambda x: x.mul_(2), lambda x: x + 1, ["in place"]),
        (lambda x: 2 * x, None, ["pass delta_only_change too"]),
    ],
)
def test_6_1_part_2_names_what_the_layer_sees(capsys, invisible, delta_only, phrases):
    assert_explains(capsys, checks.exercise_6_1, (make_norm(), invisible, delta_only), *phrases)


def test_a_normalisation_that_assumes_a_shift_is_told_about_bias_false(capsys):
    base = make_norm()

    class AlwaysThree(base):
        def forward(self, x, labels):  # right with bias=True, where base adds beta itself
            beta = self.embed(labels)[:, 2 * self.num_features :, None, None]  # (N, C, 1, 1)?
            out = super().forward(x, labels)
            return out if self.bias else out + beta  # no beta without bias: (N, 0, 1, 1)

    assert_explains(capsys, checks.exercise_6_1, AlwaysThree, "works with bias=True",
                    "only gamma and delta")


def test_6_1_names_the_one_pass_variance_that_round_off_breaks(capsys):
    base = make_norm()

    class OnePass(base):
        def forward(self, x, labels):
            c = self.num_features
            means = x.mean(dim=(2, 3))  # (N, C)
            spread = means.var(dim=1, keepdim=True)
            corrected = ((means - means.mean(dim=1, keepdim=True))
                         / torch.sqrt(spread + self.eps))[..., None, None]
            mu = x.mean(dim=(2, 3), keepdim=True)
            variance = (x**2).mean(dim=(2, 3), keepdim=True) - mu**2  # E[x^2] - E[x]^2
            h = (x - mu) / torch.sqrt(variance + self.eps)
            params = self.embed(labels)[..., None, None]
            out = params[:, :c] * (h + params[:, c : 2 * c] * corrected)
            return out + params[:, 2 * c :] if self.bias else out

    assert_explains(capsys, checks.exercise_6_1, OnePass, "round-off", "from the deviations")


def test_6_1_refuses_an_instance(capsys):
    assert_explains(capsys, checks.exercise_6_1, make_norm()(4, 3), "pass your class itself")


def annealed_dsm_loss(
    model,
    x,
    sigmas,
    labels,
    generator=None,
    *,
    weight=lambda s: s**2,
    target_sign=-1.0,
    flat_sigma=False,
    target_power=1,
    model_gets="labels",
):
    sigma = sigmas[labels]
    sigma = sigma[:, None] if flat_sigma else sigma.reshape(-1, *[1] * (x.ndim - 1))
    z = torch.randn(x.shape, generator=generator)
    score = model(x + sigma * z, labels if model_gets == "labels" else sigmas[labels])
    return (
        (0.5 * weight(sigma) * (score - target_sign * z / sigma**target_power) ** 2)
        .reshape(len(x), -1)
        .sum(dim=1)
    )


def adsm(**options):
    return lambda model, x, sigmas, labels, generator=None: annealed_dsm_loss(
        model, x, sigmas, labels, generator, **options
    )


def test_6_2_accepts_the_solution(capsys):
    assert_passes(capsys, checks.exercise_6_2, adsm())


@pytest.mark.parametrize(
    "options, phrases",
    [
        ({"weight": lambda s: 1.0}, ["no lambda(sigma) = sigma^2 weighting"]),
        ({"weight": lambda s: s}, ["the weighting is sigma;"]),
        ({"weight": lambda s: 1 / s**2}, ["1 / sigma^2"]),
        ({"target_sign": 1.0}, ["wrong sign"]),
        ({"flat_sigma": True}, ["right on points (N, D)", "images", "(N, 1, ..., 1)"]),
        ({"weight": lambda s: 2 * s**2}, ["the 1/2 in front"]),
        ({"target_power": 2}, ["the target is -z / sigma^2"]),
        ({"target_power": 0}, ["the target is -z:", "weighted form"]),
        ({"model_gets": "sigmas"}, ["noise levels (floats, such as sigmas[labels])",
                                    "level indices"]),
    ],
)
def test_6_2_explains_wrong_answers(capsys, options, phrases):
    assert_explains(capsys, checks.exercise_6_2, adsm(**options), *phrases)


def dsm_floor(tau, sigma, dim):
    return 0.5 * dim * tau**2 / (tau**2 + sigma**2)


def test_6_2_part_1_alone_says_so_and_part_2_completes_it(capsys):
    out = run_check(capsys, checks.exercise_6_2, adsm())
    assert out.startswith("✅ Exercise 6.2: part 1 is right") and "Part 2" in out, out
    out = run_check(capsys, checks.exercise_6_2, adsm(), dsm_floor, 17.0)
    assert out.startswith("✅") and "E|x - E[x | x~]|^2 / (2 sigma^2)" in out, out


def test_6_2_part_2_is_checked_after_the_loss(capsys):
    assert_explains(capsys, checks.exercise_6_2, (adsm(target_sign=1.0), dsm_floor, 17.0),
                    "wrong sign")
    assert_explains(capsys, checks.exercise_6_2, (adsm(), dsm_floor, None),
                    "pass your mixture_limit too")
    run_check(capsys, checks.exercise_6_2, adsm(), dsm_floor, ...)  # not done yet
    assert checks.results["6.2"] is False


@pytest.mark.parametrize(
    "floor, phrase",
    [
        (lambda tau, sigma, dim: 0.5 * dim * ((1 - sigma**2 / tau**2) ** 2 + sigma**2 / tau**2),
         "loss of the clean score"),
        (lambda tau, sigma, dim: 0.5 * dim * sigma**2 / (tau**2 + sigma**2),
         "the part of D / 2 that the exact score removes"),
        (lambda tau, sigma, dim: 0.5 * dim * (tau**2 + 2 * sigma**2) / (tau**2 + sigma**2),
         "sign of the cross term"),
        (lambda tau, sigma, dim: dsm_floor(tau, sigma, dim) / sigma**2, "unweighted loss"),
        (lambda tau, sigma, dim: 2 * dsm_floor(tau, sigma, dim), "the 1/2 in front"),
        (lambda tau, sigma, dim: dsm_floor(tau, sigma, 1), "one coordinate's share"),
        (lambda tau, sigma, dim: 0.5 * dim * tau / (tau + sigma), "do not add"),
        (lambda tau, sigma, dim: 0.5 * dim, "a score of 0"),
        (lambda tau, sigma, dim: 0.0, "still leaves a loss"),
        (lambda tau, sigma, dim: sigma**2 * dsm_floor(tau, sigma, dim), "in units of sigma^2"),
        (lambda tau, sigma, dim: dsm_floor(tau, sigma, dim) if sigma < tau else 0.0,
         "right for small noise"),
        (lambda tau, sigma, dim: 1.01 * dsm_floor(tau, sigma, dim), "simulation or a fit"),
    ],
)
def test_6_2_names_a_wrong_floor(capsys, floor, phrase):
    assert_explains(capsys, checks.exercise_6_2, (adsm(), floor, 17.0), "dsm_floor", phrase)


@pytest.mark.parametrize(
    "limit, phrase",
    [(1.0, "one mode alone"), (16.0, "between the modes alone"), (34.0, "has a 1/2"),
     (8.5, "one coordinate's share"), (9.0, "10 sqrt(2) apart"), (26.0, "0.8 * 0.2"),
     (0.0, "does not vanish"), (15.7, "at a finite"), (16.94, "not from a measurement"),
     (16.5, "2 over both"), (20.0, "is not the limit"),
     (float("inf"), "finite number"), ("17", "should be a number")],
)
def test_6_2_names_a_wrong_mixture_limit(capsys, limit, phrase):
    assert_explains(capsys, checks.exercise_6_2, (adsm(), dsm_floor, limit), phrase)


def test_6_2_explains_a_batch_mean(capsys):
    assert_explains(
        capsys,
        checks.exercise_6_2,
        lambda *args, **kwargs: adsm()(*args, **kwargs).mean(),
        "wrong shape",
    )


def test_a_check_leaves_the_global_random_state_alone(capsys):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    checks.exercise_6_1(
        make_norm()
    )  # builds modules whose initialisation draws from the global RNG
    capsys.readouterr()
    assert torch.equal(torch.rand(3), expected)


def test_hint_prints_the_tiers_in_order_then_repeats_the_last(capsys):
    from scorelab.checks import _core

    _core.register_hints("99.1", "the idea", "the equation", "a skeleton")
    try:
        for _ in range(4):
            _core.hint("99.1")
        lines = capsys.readouterr().out.splitlines()
        assert [line.split(": ", 1)[1] for line in lines] == [
            "the idea", "the equation", "a skeleton", "a skeleton"]
        assert "the last hint" in lines[-1] and "Hint 1 of 3" in lines[0]
        with pytest.raises(ValueError, match="number must be one of"):
            _core.hint("99.9")
    finally:
        _core.HINTS.pop("99.1")
        _core._hints_shown.pop("99.1", None)


def test_hidden_cases_only_while_grading(monkeypatch):
    from scorelab.checks import _core

    monkeypatch.setattr(_core, "GRADING", False)
    assert _core.cases([1, 2], [3]) == [1, 2]
    monkeypatch.setattr(_core, "GRADING", True)
    assert _core.cases([1, 2], [3]) == [1, 2, 3]


def test_5_1_explains_a_model_called_on_stacked_copies(capsys):
    def unflattened(model, x, n_projections=1, generator=None):
        v = torch.randn((n_projections, *x.shape), generator=generator)
        copies = x.detach().unsqueeze(0).expand_as(v).clone().requires_grad_(True)
        score = model(copies)  # (M, N, D) into a network that takes (N, D)
        jv = torch.autograd.grad((score * v).sum(), copies, create_graph=True)[0]
        return ((jv * v).sum(-1) + 0.5 * (score * v).sum(-1) ** 2).mean(0)

    assert_explains(capsys, checks.exercise_5_1, unflattened, "x.reshape(-1, D)")


def test_a_formula_right_up_to_float32_round_off_is_told_so(capsys):
    def in_float32(alpha, target_variance):
        a, t = torch.tensor(alpha), torch.tensor(target_variance)
        return t / (1 - (1 - a / (2 * t)) ** 2) * a / t  # the right algebra, in float32

    assert_explains(capsys, exercise_2_2, in_float32, "round-off", "float64")


# --- chapter 1: more named mistakes, and the package's answer refused ------------------------


def _unweighted_spread(w, m, c, s):
    offsets = m - m.mean(dim=0)
    return _total(w, m, c, s, between=False) + offsets.T @ offsets / len(w)


def _spread_about_the_plain_mean(w, m, c, s):
    offsets = m - m.mean(dim=0)
    return _total(w, m, c, s, between=False) + offsets.T @ (w[:, None] * offsets)


@pytest.mark.parametrize(
    "answer, phrases",
    [(_unweighted_spread, ["unweighted average over the components"]),
     (_spread_about_the_plain_mean, ["plain average of the means"])],
)
def test_1_1_names_an_unweighted_spread_of_the_means(capsys, answer, phrases):
    assert_explains(capsys, exercise_1_1, answer, *phrases)


def test_1_3_refuses_the_packages_mixture(capsys):
    from scorelab.densities import GaussianMixture

    def packaged(x, weights, means, variances):
        return GaussianMixture(weights, means, variances).score(x)

    def by_autograd(x, weights, means, variances):
        mixture = GaussianMixture(weights, means, variances)
        leaf = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            return torch.autograd.grad(mixture.log_prob(leaf).sum(), leaf)[0]

    for answer in (packaged, by_autograd):
        assert_explains(capsys, checks.exercise_1_3, answer, "calls the package's GaussianMixture",
                        "write it yourself")


def test_1_4_refuses_the_packages_banana_and_names_a_variance_written_as_a(capsys):
    from scorelab.densities import Banana

    def packaged(x, curvature=0.5, scale=1.0):
        return Banana(curvature=curvature, scale=scale).score(x)

    def by_autograd(x, curvature=0.5, scale=1.0):
        leaf = x.detach().clone().requires_grad_(True)
        log_p = Banana(curvature=curvature, scale=scale).log_prob(leaf).sum()
        return torch.autograd.grad(log_p, leaf)[0]

    for answer in (packaged, by_autograd):
        assert_explains(capsys, checks.exercise_1_4, answer, "calls the package's Banana",
                        "fix the colleague's closed-form score")
    over_a = make_banana_score()

    def first_column_over_a(x, curvature=0.5, scale=1.0):
        out = over_a(x, curvature, scale)
        return torch.stack([out[:, 0] + x[:, 0] / scale**2 - x[:, 0] / scale, out[:, 1]], dim=1)

    assert_explains(capsys, checks.exercise_1_4, first_column_over_a, "written -x_1 / a",
                    "divides by a^2")


# --- the package's own answer refused (chapters 2, 3 and 6) -----------------------------------


def test_2_4_refuses_the_packages_sampler(capsys):
    from scorelab.langevin import langevin_dynamics

    def packaged(score_fn, x0, step_size, n_steps, generator=None):
        return langevin_dynamics(score_fn, x0, step_size, n_steps, generator=generator,
                                 progress=False)

    assert_explains(capsys, checks.exercise_2_4, packaged,
                    "calls the package's langevin_dynamics", "write it yourself")


def test_3_2_refuses_the_packages_ladder(capsys):
    from scorelab.noise import geometric_sigmas

    assert_explains(capsys, exercise_3_2, lambda a, b, n: geometric_sigmas(a, b, n),
                    "calls the package's geometric_sigmas")


def test_3_5_and_3_6_refuse_the_packages_sampler(capsys):
    from scorelab.langevin import annealed_langevin_dynamics

    def packaged(score_fn, x0, sigmas, step_size, n_steps_each, generator=None):
        return annealed_langevin_dynamics(score_fn, x0, sigmas, step_size, n_steps_each,
                                          generator=generator, progress=False)

    def seeded(score_fn, x0, sigmas, step_size, n_steps_each, seed=0):
        return packaged(score_fn, x0, sigmas, step_size, n_steps_each,
                        generator=torch.Generator().manual_seed(seed))

    assert_explains(capsys, checks.exercise_3_5, packaged,
                    "calls the package's annealed_langevin_dynamics")
    assert_explains(capsys, checks.exercise_3_6, seeded,
                    "calls the package's annealed_langevin_dynamics")


def test_6_2_refuses_the_packages_loss(capsys):
    from scorelab.training import annealed_dsm_loss as package_loss

    def packaged(model, x, sigmas, labels, generator=None):
        return package_loss(model, x, sigmas, labels=labels, generator=generator)

    assert_explains(capsys, checks.exercise_6_2, packaged, "calls the package's annealed_dsm_loss")


def test_2_1_names_step_size_ignored_and_the_global_generator_reseeded(capsys):
    def fixed_step(x, score_fn, step_size, generator=None):
        return x + 0.05 * score_fn(x) + math.sqrt(0.1) * torch.randn(x.shape, generator=generator)

    assert_explains(capsys, checks.exercise_2_1, (fixed_step, lambda a: a / 2),
                    "ignores step_size")
    step = make_step()

    def reseeding(x, score_fn, step_size, generator=None):
        torch.manual_seed(0)
        return step(x, score_fn, step_size, generator=generator)

    assert_explains(capsys, checks.exercise_2_1, (reseeding, lambda a: a / 2),
                    "changed torch's global random state")


@pytest.mark.parametrize("power, phrase", [(1, "divides by sigma_L, not by sigma_L^2"),
                                           (0, "leaves out the division by sigma_L^2")])
def test_3_6_tries_a_ladder_that_ends_below_one(capsys, power, phrase):
    def seeded(score_fn, x0, sigmas, step_size, n_steps_each, seed=0):
        generator, x = torch.Generator().manual_seed(seed), x0.clone()
        for sigma in sigmas.tolist():
            alpha = step_size * sigma**2 / sigmas[-1].item() ** power
            for _ in range(n_steps_each):
                z = torch.randn(x.shape, generator=generator)
                x = x + alpha / 2 * score_fn(x, sigma) + math.sqrt(alpha) * z
        return x

    assert_explains(capsys, checks.exercise_3_6, seeded, phrase)


def test_3_1_refuses_the_packages_ladder(capsys):
    from scorelab.noise import geometric_sigmas

    def from_the_ladder(sigma_max, sigma_min, n_levels):
        ladder = geometric_sigmas(sigma_max, sigma_min, n_levels)
        return (ladder[0] / ladder[1]).item()

    assert_explains(capsys, exercise_3_1, from_the_ladder,
                    "calls the package's geometric_sigmas")


@pytest.mark.parametrize(
    "options, phrase",
    [({"drift": 1.0}, "without the 1/2"), ({"reverse": True}, "from the smallest sigma"),
     ({"exponent": 0}, "the same at every level")],
)
def test_3_5_names_more_slips(capsys, options, phrase):
    assert_explains(capsys, checks.exercise_3_5, make_annealed(**options), phrase)


def _adsm_variant(kind):
    def loss(model, x, sigmas, labels, generator=None):
        shape = (-1, *[1] * (x.ndim - 1))
        sigma = (sigmas.flip(0) if kind == "flipped" else sigmas)[labels].reshape(shape)
        z = torch.randn(x.shape, generator=generator)
        target = {"second draw": -torch.randn(x.shape, generator=generator) / sigma,
                  "sigma z": -sigma * z}.get(kind, -z / sigma)
        noisy = x + (sigma**2 if kind == "sigma^2 z" else sigma) * z
        score = model(noisy, labels)
        return (0.5 * sigma**2 * (score - target) ** 2).reshape(len(x), -1).sum(dim=1)

    return loss


@pytest.mark.parametrize(
    "kind, phrase",
    [("second draw", "second draw of the noise"), ("flipped", "sigmas[L - 1 - labels[n]]"),
     ("sigma^2 z", "noise is scaled by sigma^2"), ("sigma z", "the target is -sigma z")],
)
def test_6_2_names_more_slips(capsys, kind, phrase):
    assert_explains(capsys, checks.exercise_6_2, _adsm_variant(kind), phrase)


@pytest.mark.parametrize("steps_off", [-1, 1])
def test_2_4_names_a_step_too_few_or_too_many(capsys, steps_off):
    right = make_sampler()

    def off_by_one(score_fn, x0, step_size, n_steps, generator=None):
        return right(score_fn, x0, step_size, n_steps + steps_off, generator=generator)

    assert_explains(capsys, checks.exercise_2_4, off_by_one, "where n_steps = 200 was asked")


@pytest.mark.parametrize(
    "answer, phrase",
    [(lambda a, b, n: (a / b) ** (1.0 / (n + 1)), "(L + 1)-th root"),
     (lambda a, b, n: math.log(a / b) / (n - 1), "a step of log sigma")],
)
def test_3_1_names_more_slips(capsys, answer, phrase):
    assert_explains(capsys, exercise_3_1, answer, phrase)


@pytest.mark.parametrize(
    "answer, phrase",
    [(lambda a, t: t**2 / (1 - a / (4 * t**2)), "squared target_variance"),
     (lambda a, t: 1 / (1 - a / (4 * t)), "v / tau^2"),
     (lambda a, t: t / (2 - a / t), "conventions mixed")],
)
def test_2_2_names_more_slips(capsys, answer, phrase):
    assert_explains(capsys, exercise_2_2, answer, phrase)


def test_6_1_names_batch_statistics_and_ignored_labels(capsys):
    assert_explains(capsys, checks.exercise_6_1, make_norm(dims=(0, 2, 3)), "batch norm")
    base = make_norm()

    class LevelZero(base):
        def forward(self, x, labels):
            return super().forward(x, torch.zeros_like(labels))

    assert_explains(capsys, checks.exercise_6_1, LevelZero, "ignores labels")


# --- a student's tries of chapters 1-3 (second round) -------------------------------------------


def test_1_3_a_normalising_constant_written_for_two_dimensions_fails_on_the_3d_mixture(capsys):
    def two_dimensional(x, weights, means, variances):
        diff = x[:, None, :] - means[None]
        log_joint = (torch.log(weights) - 0.5 * (diff**2).sum(-1) / variances
                     - torch.log(2 * torch.pi * variances))  # -(D/2) log(2 pi v) with D = 2
        r = torch.softmax(log_joint, dim=1)[..., None]
        return (r * -diff / variances[None, :, None]).sum(1)

    assert_explains(capsys, checks.exercise_1_3, two_dimensional, "written for D = 2",
                    "D = 3")


def test_1_1_and_1_4_refuse_the_packages_mixture_and_perturbed_banana(capsys):
    from scorelab.densities import Banana, GaussianMixture

    def packaged(weights, means, covs, sigma):
        return GaussianMixture(weights, means, covs).perturbed(sigma).covariance.double()

    assert_explains(capsys, exercise_1_1, packaged, "calls the package's",
                    "GaussianMixture")

    def nearly_clean(x, curvature=0.5, scale=1.0):
        return Banana(curvature, scale).perturbed_score(x, 1e-6)

    assert_explains(capsys, checks.exercise_1_4, nearly_clean, "calls the package's Banana")


def test_3_6_names_a_sampler_that_writes_into_x0(capsys):
    def in_place(score_fn, x0, sigmas, step_size, n_steps_each, seed=0):
        generator, x = torch.Generator().manual_seed(seed), x0
        for sigma in sigmas.tolist():
            alpha = step_size * (sigma / sigmas[-1].item()) ** 2
            for _ in range(n_steps_each):
                z = torch.randn(x.shape, generator=generator)
                x += alpha / 2 * score_fn(x, sigma) + math.sqrt(alpha) * z
        return x

    assert_explains(capsys, checks.exercise_3_6, in_place, "changed the tensor it was given")


def test_3_5_accepts_a_ladder_recomputed_in_float64(capsys):
    def recomputed(score_fn, x0, sigmas, step_size, n_steps_each, generator=None):
        first, last, n = sigmas[0].item(), sigmas[-1].item(), len(sigmas)
        ladder = [first * (last / first) ** (i / (n - 1)) for i in range(n)]
        x = x0.clone()
        for sigma in ladder:
            alpha = step_size * (sigma / ladder[-1]) ** 2
            for _ in range(n_steps_each):
                z = torch.randn(x.shape, generator=generator)
                x = x + alpha / 2 * score_fn(x, sigma) + math.sqrt(alpha) * z
        return x

    assert_passes(capsys, checks.exercise_3_5, recomputed)


def test_3_4_names_a_count_in_place_of_a_share(capsys):
    def count(x0, generator=None):
        return plain_langevin_share(x0, generator) * len(x0)

    assert_explains(capsys, exercise_3_4, (count,), "a number of samples")


def test_a_missing_return_is_named_and_a_0d_array_is_a_number(capsys):
    def forgot_return(x, weights, means, variances):
        gmm_score(x, weights, means, variances)

    assert_explains(capsys, checks.exercise_1_3, forgot_return, "return statement missing")
    assert _core.to_float(np.array(2.5), what="answer") == 2.5


def test_2_2_checks_the_largest_stable_step_and_names_its_slips(capsys):
    def right(alpha, target_variance):
        return target_variance / (1 - alpha / (4 * target_variance))

    assert_passes(capsys, checks.exercise_2_2, right, lambda t: 4 * t)
    for wrong, phrase in [(lambda t: 2 * t, "overshoots"), (lambda t: 4.0, "tau^2 = 1 only"),
                          (lambda t: 4 * math.sqrt(t), "not the standard deviation"),
                          (lambda t: t, "denominator"), (lambda t: 4.05 * t, "did you scan"),
                          (lambda t: 10 * t, "below 1")]:
        assert_explains(capsys, checks.exercise_2_2, (right, wrong), phrase)
    assert "not done yet" in run_check(capsys, checks.exercise_2_2, right, stub)


def test_3_4_checks_the_basin_edge_and_names_its_slips(capsys):
    import math

    share = plain_langevin_share
    assert_passes(capsys, checks.exercise_3_4, share, -0.14146, 0.5088)
    for edge, phrase in [(0.0, "equal weights"), (0.1415, "the sign"),
                         (-math.log(4) / 10, "responsibilities are equal"),
                         (-math.log(4), "factor 10"), (-0.3, "solve for c numerically"),
                         (-0.0707, "of the edge point"), (10.0, "a mode")]:
        assert_explains(capsys, checks.exercise_3_4, (share, edge, 0.5088), phrase)
    assert "not done yet" in run_check(capsys, checks.exercise_3_4, share, ..., 0.5088)


def test_3_4_checks_the_predicted_share_and_names_its_slips(capsys):
    share = plain_langevin_share
    first_order_twin = (16 + 0.14146) ** 2 / 512  # differs by c^2 / 256: accepted too
    assert_passes(capsys, checks.exercise_3_4, share, -0.14146, first_order_twin)
    for predicted, phrase in [(0.5, "line x_1 + x_2 = 0"), (0.8, "the true weight"),
                              (0.4912, "(-5, -5) basin"), (0.2, "light mode's weight"),
                              (0.515, "close to what sampling gives"),
                              (0.75, "law of x_1 + x_2"), (float("nan"), "predicted_share"),
                              (0.51, "three decimals"), (50.88, "not a share")]:
        assert_explains(capsys, checks.exercise_3_4, (share, -0.14146, predicted), phrase)
    assert "not done yet" in run_check(capsys, checks.exercise_3_4, share, -0.14146, ...)


def test_1_1_checks_the_sigma_of_one_percent_and_names_its_slips(capsys):
    def right(weights, means, covs, sigma):
        mean = weights @ means
        offsets = means - mean
        within = (weights[:, None, None] * covs).sum(dim=0)
        between = offsets.T @ (weights[:, None] * offsets)
        return within + between + sigma**2 * torch.eye(means.shape[1], dtype=means.dtype)

    assert_passes(capsys, checks.exercise_1_1, right, 57.4)
    for wrong, phrase in [(1650**0.5, "standard deviations"), (40.0, "eigenvalue is 32"),
                          (3200**0.5, "33 in all"), (10.0, "across the line"),
                          (330**0.5, "0.01"), (50.0, "still above 1 %"),
                          (100.0, "smaller sigma already"), (3300.0, "that is sigma^2"),
                          (3267**0.5, "against the perturbed variance")]:
        assert_explains(capsys, checks.exercise_1_1, (right, wrong), phrase)
    assert "not done yet" in run_check(capsys, checks.exercise_1_1, right, ...)


def test_4_3_checks_the_shrink_factors_and_names_their_slips(capsys):
    def optimal(x, mu, tau, sigma):
        return -(x - mu) / (tau**2 + sigma**2)

    def right(t, s):
        return t**2 / (t**2 + s**2), 1 - s**2 / t**2

    assert_passes(capsys, checks.exercise_4_3, optimal, right)
    for wrong, phrase in [(lambda t, s: right(t, s)[::-1], "swapped"),
                          (lambda t, s: (1 - right(t, s)[0], right(t, s)[1]), "removes"),
                          (lambda t, s: (right(t, s)[0], s**2 / t**2), "removes"),
                          (lambda t, s: (t / (t + s), right(t, s)[1]), "perturbed density"),
                          (lambda t, s: (right(t, s)[0], 1 - s / t), "N(mu, tau^2) itself"),
                          (lambda t, s: right(t, s)[0], "a pair")]:
        assert_explains(capsys, checks.exercise_4_3, (optimal, wrong), phrase)
    assert "not done yet" in run_check(capsys, checks.exercise_4_3, optimal, stub)


@pytest.mark.parametrize(
    "answer, phrase",
    [(lambda g, d: d / 2 * (g - 1 - 2 * math.log(g)), "never negative"),
     (lambda g, d: d / 2 * (g**2 - 2 * math.log(g)), "divergence of a law from itself is 0")],
    ids=["negative", "not zero at gamma = 1"],
)
def test_3_1_says_which_property_of_a_divergence_fails(capsys, answer, phrase):
    right_ratio = lambda a, b, n: (a / b) ** (1 / (n - 1))  # noqa: E731
    assert_explains(capsys, checks.exercise_3_1, (answer, right_ratio), phrase)
