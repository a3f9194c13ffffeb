"""Checks for the exercises of chapter 1: densities, their scores, and what noise does to them.

1.1 (derive) the covariance of a mixture plus independent noise; 1.2 (implement) scores by
autograd; 1.3 (implement) the Gaussian-mixture score, stable far from the modes; 1.4 (debug)
a colleague's banana score that writes into its input and has a where a^2 belongs;
1.5 (investigate) the noise level at which a 1-D mixture's two modes merge.
"""

from __future__ import annotations

import math

import torch

from scorelab.checks._core import (Mismatch, answer_number, call_student, call_under_no_grad,
                                   cases, diagnose,
                                   exercise, expect_derived, expect_finite, expect_tensor,
                                   expect_untouched, package_refused, refuse_calls,
                                   register_hints, to_float, without_package)
from scorelab.checks._formulas import by_regime, check_formula, random_values


def _mixtures():
    """Test mixtures: equal variances (so a missing 1/v_k is a constant factor), unequal, and
    (while grading) a hidden one with four components."""
    equal = (
        torch.tensor([0.3, 0.7]),
        torch.tensor([[-2.0, 0.0], [2.0, 1.0]]),
        torch.tensor([2.0, 2.0]),
    )
    unequal = (
        torch.tensor([0.5, 0.2, 0.3]),
        torch.tensor([[0.0, 0.0], [3.0, -1.0], [-2.0, 2.5]]),
        torch.tensor([0.5, 1.0, 2.0]),
    )
    hidden = (
        torch.tensor([0.1, 0.4, 0.2, 0.3]),
        torch.tensor([[1.0, 1.0], [-3.0, 0.5], [0.0, -2.0], [4.0, 3.0]]),
        torch.tensor([0.3, 1.5, 0.8, 1.0]),
    )
    in_3d = (  # unequal variances in D = 3: a normalising constant written for D = 2 shows
        torch.tensor([0.3, 0.7]),
        torch.tensor([[0.0, 0.0, 0.0], [2.0, -1.0, 1.0]]),
        torch.tensor([0.5, 2.0]),
    )
    named = cases([("equal", equal), ("unequal", unequal), ("in 3-D", in_3d)],
                  [("a hidden mixture", hidden)])
    return dict(named)


_MIXTURE_NAMES = {"equal": "the mixture with equal variances",
                  "unequal": "the mixture with unequal variances", "in 3-D": "a mixture in 3-D"}


def _points(generator_seed: int = 1, dim: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(generator_seed)
    return 3.0 * torch.randn(64, dim, generator=generator)  # (64, D) around the modes


FAR_POINTS = torch.tensor([[40.0, 40.0], [-60.0, 25.0], [0.0, -80.0]])  # (3, 2) far in the tails


def _component_terms(x, weights, means, variances):
    """log(pi_k N(x; mu_k, var_k I)) (N, K) and the component scores -(x - mu_k)/var_k (N, K, D)."""
    diff = x[:, None, :] - means[None]  # (N, K, D)
    dim = x.shape[1]
    log_normal = -0.5 * (diff**2).sum(-1) / variances - 0.5 * dim * torch.log(
        2 * torch.pi * variances
    )
    return torch.log(weights) + log_normal, -diff / variances[None, :, None]


def _mutants(x, weights, means, variances) -> dict[str, torch.Tensor]:
    """The values that the usual mistakes produce, keyed by the explanation of each mistake."""
    log_joint, scores = _component_terms(x, weights, means, variances)
    resp = torch.softmax(log_joint, dim=1)[..., None]  # (N, K, 1)
    resp_unweighted = torch.softmax(log_joint - torch.log(weights), dim=1)[..., None]
    diff = x[:, None, :] - means[None]
    density = torch.exp(torch.logsumexp(log_joint, dim=1))[:, None]  # (N, 1)
    dim = x.shape[1]
    quadratic = (diff**2).sum(-1) / variances  # (N, K), |x - mu_k|^2 / v_k
    normaliser = torch.log(2 * torch.pi * variances)  # (K,), log(2 pi v_k)

    def with_log_joint(wrong_log_joint, over=1):  # the score with these responsibilities
        return (torch.softmax(wrong_log_joint, dim=over)[..., None] * scores).sum(1)

    log_weights = torch.log(weights)
    written_for_2d = {} if dim == 2 else {
        f"the normalising constant is written for D = 2, -log(2 pi v_k); in D = {dim} "
        f"dimensions N(x; mu_k, v_k I) has -(D/2) log(2 pi v_k).": with_log_joint(
            log_weights - 0.5 * quadratic - normaliser)}
    return {
        **written_for_2d,
        "the responsibilities use the 1-D normalising constant, -(1/2) log(2 pi v_k); in D "
        "dimensions N(x; mu_k, v_k I) has -(D/2) log(2 pi v_k) (invisible when all variances "
        "are equal, wrong when they differ).": with_log_joint(
            log_weights - 0.5 * quadratic - 0.5 * normaliser),
        "the exponent of each Gaussian misses its 1/2: log N(x; mu_k, v_k I) = "
        "-|x - mu_k|^2 / (2 v_k) - (D/2) log(2 pi v_k).": with_log_joint(
            log_weights - quadratic - 0.5 * dim * normaliser),
        "the quadratic term of log N has the wrong sign: log N(x; mu_k, v_k I) = "
        "-|x - mu_k|^2 / (2 v_k) - (D/2) log(2 pi v_k) falls away from the mean.": with_log_joint(
            log_weights + 0.5 * quadratic - 0.5 * dim * normaliser),
        "the softmax runs over the points (dim=0): each point's responsibilities must sum to 1 "
        "over the K components, a softmax over dim=1 of the (N, K) log-joint.": with_log_joint(
            log_joint, over=0),
        "the responsibilities ignore the mixture weights pi_k: r_k(x) is proportional to "
        "pi_k N(x; mu_k, v_k I), not to N(x; mu_k, v_k I) alone.": (
            resp_unweighted * scores
        ).sum(1),
        "you weighted each component's score by its mixture weight pi_k; weight it by the "
        "responsibility r_k(x) = pi_k N_k(x) / sum_j pi_j N_j(x), which depends on x.": (
            weights[None, :, None] * scores
        ).sum(1),
        "you forgot to divide by the variance: the score of N(mu_k, v_k I) is "
        "-(x - mu_k) / v_k.": (resp * -diff).sum(1),
        "you divided by the standard deviation sqrt(v_k); the score of N(mu_k, v_k I) divides "
        "by the variance v_k.": (resp * -diff / variances.sqrt()[None, :, None]).sum(1),
        "this is the gradient of the density p(x), not of log p(x): divide it by p(x).": density
        * (resp * scores).sum(1),
        "the responsibilities miss the normalising constant of each Gaussian, "
        "-(D/2) log(2 pi v_k): invisible when all variances are equal, wrong when they differ.":
            (torch.softmax(log_joint + 0.5 * x.shape[1] * torch.log(2 * torch.pi * variances),
                           dim=1)[..., None] * scores).sum(1),
    }


def _reference(x, weights, means, variances) -> torch.Tensor:
    from scorelab.densities import GaussianMixture

    return GaussianMixture(weights, means, variances).score(x)


def _own_gmm_score(gmm_score, x, weights, means, variances):
    """The student's gmm_score, refused when it hands the work to the package's mixture."""
    from scorelab.densities import GaussianMixture

    with package_refused(GaussianMixture.score, GaussianMixture.log_prob,
                         GaussianMixture.responsibilities, what="gmm_score"):
        return call_student(gmm_score, x, weights, means, variances, what="gmm_score")


@exercise(
    "1.3", "your gmm_score matches the closed-form score, near the modes and far in the tails."
)
def exercise_1_3(gmm_score) -> None:
    """Check ``gmm_score(x (N, D), weights (K,), means (K, D), variances (K,)) -> (N, D)``."""
    for name, (weights, means, variances) in _mixtures().items():
        x = _points(dim=means.shape[1])
        given = x.clone()
        got = _own_gmm_score(gmm_score, given, weights, means, variances)
        expect_untouched(given, x, call="gmm_score(x, ...)")
        got = expect_tensor(got, what="gmm_score(x, ...)", shape=tuple(x.shape))
        expect_finite(got, what="gmm_score(x, ...)", where=" near the modes")
        factors = {"the variance v_k": (
            2.0, "divide each component's (mu_k - x) by its variance v_k.",
            "each component's (mu_k - x) is divided by its variance v_k twice.")
        } if name == "equal" else None
        diagnose(
            got,
            _reference(x, weights, means, variances),
            what=f"gmm_score on {_MIXTURE_NAMES.get(name, name)}",
            mutants=_mutants(x, weights, means, variances),
            factors=factors,
        )
    weights, means, variances = _mixtures()["unequal"]
    given = FAR_POINTS.clone()
    far = _own_gmm_score(gmm_score, given, weights, means, variances)
    expect_untouched(given, FAR_POINTS, call="gmm_score(x, ...)")
    far = expect_tensor(far, what="gmm_score(x, ...)", shape=tuple(FAR_POINTS.shape))
    if not torch.isfinite(far).all():
        raise Mismatch(
            "right near the modes, but NaN or inf far from them (e.g. at x = (40, 40)): "
            "exp(log N) underflows to 0 there and the responsibilities become 0/0. Compute them "
            "from log-probabilities, with torch.softmax (or torch.logsumexp)."
        )
    diagnose(
        far,
        _reference(FAR_POINTS, weights, means, variances),
        what="gmm_score far from the modes",
        rtol=1e-4,
        atol=1e-3,
    )


def _log_prob_fns():
    from scorelab.densities import Banana, GaussianMixture

    weights, means, variances = _mixtures()["unequal"]
    named = cases(
        [
            ("a Gaussian mixture", GaussianMixture(weights, means, variances)),
            ("the banana", Banana()),
        ],
        [("a hidden, more twisted banana", Banana(curvature=1.3, scale=0.7))],
    )
    return dict(named)


@exercise(
    "1.2", "your autograd_score agrees with the closed-form scores of the mixture and the banana, "
    "also under torch.no_grad(), where the samplers call it."
)
def exercise_1_2(autograd_score) -> None:
    """Check ``autograd_score(log_prob_fn, x (N, D)) -> (N, D)``, the gradient of log_prob_fn."""
    x = _points(2)
    for name, density in _log_prob_fns().items():
        given = x.clone()
        got = call_student(autograd_score, density.log_prob, given, what="autograd_score")
        if isinstance(got, torch.Tensor) and got.shape == x.shape[:1]:
            raise Mismatch(
                f"on {name}, autograd_score returned shape {tuple(got.shape)}: that looks like the "
                "log-probabilities themselves; return their gradient with respect to x, shape (N, D)."
            )
        got = expect_tensor(got, what=f"autograd_score on {name}", shape=tuple(x.shape))
        if given.requires_grad or given.grad is not None:
            raise Mismatch(
                "your function switched on requires_grad (or stored .grad) on the caller's "
                "tensor; work on a copy: x = x.detach().requires_grad_(True)."
            )
        if got.requires_grad:
            raise Mismatch(
                "the score still carries the autograd graph (requires_grad=True); "
                "return it detached (torch.autograd.grad(...)[0].detach())."
            )
        expect_finite(got, what=f"autograd_score on {name}")
        score, n = density.score(x), x.shape[0]
        diagnose(
            got, score, what=f"autograd_score on {name}",
            mutants={
                "this is the gradient of the density p(x), not of log p(x): differentiate the "
                "log-probabilities themselves (their sum), not their exp.":
                    density.log_prob(x).exp()[:, None] * score,
            },
            factors={"1/N": (
                1.0 / n, f"you averaged the N = {n} log-probabilities before differentiating; "
                "sum them: the gradient of the sum with respect to row n is the score at x_n, "
                "while the mean divides every score by N.", "")},
        )
    _check_under_no_grad(autograd_score, x)


def _check_under_no_grad(autograd_score, x: torch.Tensor) -> None:
    """The samplers call score functions under torch.no_grad(): autograd_score must work there."""
    from scorelab.densities import Banana

    density = Banana()
    got = call_under_no_grad(autograd_score, density.log_prob, x.clone(), what="autograd_score")
    got = expect_tensor(got, what="autograd_score under torch.no_grad()", shape=tuple(x.shape))
    diagnose(got, density.score(x), what="autograd_score under torch.no_grad()")


# ---------------------------------------------------------------- 1.1 (derive) a noisy mixture's covariance


def _covariance_mixtures() -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(weights, means, covs) in float64: one correlated component, two diagonal components,
    three correlated ones; while grading, a hidden 3-D mixture."""
    def mixture(weights, means, covs):
        return tuple(torch.tensor(v, dtype=torch.float64) for v in (weights, means, covs))

    named = cases(
        [
            ("one component", mixture([1.0], [[1.0, -2.0]], [[[2.0, 0.8], [0.8, 1.0]]])),
            ("two components", mixture([0.3, 0.7], [[-2.0, 0.0], [2.0, 1.0]],
                                       [[[1.0, 0.0], [0.0, 0.5]], [[0.5, 0.0], [0.0, 2.0]]])),
            ("three components", mixture([0.5, 0.2, 0.3], [[0.0, 0.0], [3.0, -1.0], [-2.0, 2.5]],
                                         [[[1.0, 0.6], [0.6, 1.0]], [[0.5, 0.0], [0.0, 1.5]],
                                          [[0.4, -0.1], [-0.1, 0.4]]])),
        ],
        [
            ("a hidden 3-D mixture", mixture(
                [0.6, 0.4], [[1.0, 0.0, -1.0], [-1.5, 2.0, 0.5]],
                [[[1.5, 0.3, -0.2], [0.3, 0.7, 0.1], [-0.2, 0.1, 2.5]], torch.eye(3).tolist()])),
        ],
    )
    return dict(named)


def _within(weights, covs):  # E[Cov(x | k)], (D, D)
    return (weights[:, None, None] * covs).sum(dim=0)


def _between(weights, means):  # Cov(E[x | k]), (D, D)
    offsets = means - weights @ means
    return offsets.T @ (weights[:, None] * offsets)


def _unweighted_between(means):  # the plain average of (mu_k - mean)(mu_k - mean)^T, (D, D)
    offsets = means - means.mean(dim=0)
    return offsets.T @ offsets / means.shape[0]


def _between_about(weights, means, centre):  # sum_k pi_k (mu_k - centre)(...)^T, (D, D)
    offsets = means - centre
    return offsets.T @ (weights[:, None] * offsets)


def _noise(means, variance):  # variance * I, (D, D)
    return variance * torch.eye(means.shape[1], dtype=torch.float64)


@exercise(
    "1.1",
    "your perturbed_covariance is sum_k pi_k Sigma_k + sum_k pi_k (mu_k - mu)(mu_k - mu)^T "
    "+ sigma^2 I: the components' spread, their means' spread and the noise; the gap, "
    "33 / sigma^2 along (1, 1), falls below 1 % from sigma = sqrt(3300) = 57.4 on.",
)
def exercise_1_1(perturbed_covariance, sigma_one_percent) -> None:
    """Check ``perturbed_covariance(weights (K,), means (K, D), covs (K, D, D), sigma) -> (D, D)``
    at random sigmas, small to large, on mixtures of one to three components, then the number
    ``sigma_one_percent``: the sigma from which the toy mixture's gap is below 1 %."""
    sigma_ranges = {
        "for small sigma (below 0.3)": (0.01, 0.3),
        "for sigma of order one": (0.5, 2.0),
        "for large sigma (above 3)": (3.0, 20.0),
    }
    from scorelab.densities import GaussianMixture

    perturbed_covariance = without_package(
        perturbed_covariance, GaussianMixture.covariance.fget, GaussianMixture.perturbed,
        what="perturbed_covariance")
    mixtures = _covariance_mixtures()
    points, sigma_regimes = by_regime({
        regime: [
            {"weights": w, "means": m, "covs": c, "sigma": s}
            for w, m, c in mixtures.values()
            for s in cases(random_values(low, high, 2, seed=10 + index),
                           random_values(low, high, 2, seed=100 + index))
        ]
        for index, (regime, (low, high)) in enumerate(sigma_ranges.items())
    })
    mixture_regimes = [
        (f"on {name}", lambda p, weights=w: p["weights"] is weights)
        for name, (w, _, _) in mixtures.items()
    ]
    check_formula(
        perturbed_covariance,
        lambda weights, means, covs, sigma: (_within(weights, covs) + _between(weights, means)
                                             + _noise(means, sigma**2)),
        points,
        what="perturbed_covariance",
        regimes=[sigma_regimes, mixture_regimes],
        rtol=1e-5,
        atol=1e-8,
        mutants=[
            ("you averaged the components' covariances but left out how their means spread: "
             "Cov(x) = E[Cov(x | k)] + Cov(E[x | k]), the law of total covariance.",
             lambda weights, means, covs, sigma: _within(weights, covs)
             + _noise(means, sigma**2)),
            ("you computed the second moment E[x x^T] about 0, not the covariance: measure the "
             "means' spread about the mixture's mean sum_k pi_k mu_k.",
             lambda weights, means, covs, sigma: _within(weights, covs)
             + means.T @ (weights[:, None] * means) + _noise(means, sigma**2)),
            ("the means' spread is an unweighted average over the components: weight each "
             "(mu_k - mu)(mu_k - mu)^T by pi_k, the probability that a draw comes from "
             "component k (and take mu = sum_k pi_k mu_k).",
             lambda weights, means, covs, sigma: _within(weights, covs)
             + _unweighted_between(means) + _noise(means, sigma**2)),
            ("the means' spread is measured about the plain average of the means; the mixture's "
             "mean is the weighted one, mu = sum_k pi_k mu_k.",
             lambda weights, means, covs, sigma: _within(weights, covs)
             + _between_about(weights, means, means.mean(dim=0)) + _noise(means, sigma**2)),
            ("you weighted the components by pi_k^2, as for a weighted sum of independent "
             "vectors; a mixture draws one component, so each enters with weight pi_k.",
             lambda weights, means, covs, sigma: _within(weights**2, covs)
             + _between(weights, means) + _noise(means, sigma**2)),
            ("you left out the noise: sigma z, independent of x, adds its covariance sigma^2 I.",
             lambda weights, means, covs, sigma: _within(weights, covs)
             + _between(weights, means)),
            ("you added sigma I; the noise sigma z has covariance sigma^2 I (the two agree only "
             "at sigma = 1).",
             lambda weights, means, covs, sigma: _within(weights, covs)
             + _between(weights, means) + _noise(means, sigma)),
            ("you added sigma^2 to every entry; the noise is independent across coordinates, "
             "so it adds sigma^2 on the diagonal only.",
             lambda weights, means, covs, sigma: _within(weights, covs)
             + _between(weights, means) + sigma**2),
        ],
    )
    _expect_sigma_one_percent(sigma_one_percent)


def _expect_sigma_one_percent(sigma_one_percent) -> None:
    """The toy mixture's covariance exceeds sigma^2 I by 33 along (1, 1): below 1 % from
    sigma = sqrt(3300) on."""
    got = answer_number(sigma_one_percent, what="sigma_one_percent")
    threshold = math.sqrt(3300.0)
    where = ("the gap is still above 1 % there" if got < threshold else
             "the gap falls below 1 % at a smaller sigma already: give the threshold")
    expect_derived(
        got, threshold, call="sigma_one_percent", wrong="is not the threshold",
        slips={
            math.sqrt(1650.0): "that compares standard deviations (sqrt(sigma^2 + 33) / sigma "
            "- 1); the question compares the covariance with sigma^2 I.",
            40.0: "16 is each entry of the means' spread; along (1, 1) its eigenvalue is 32, "
            "and the components' own variance adds 1.",
            math.sqrt(3200.0): "the components' own covariance I adds 1 along (1, 1) as well: "
            "33 in all.",
            10.0: "that is the gap across the line of the modes (eigenvalue 1); the largest gap "
            "is along it, (1, 1).",
            math.sqrt(330.0): "1 % is 0.01: the gap 33 / sigma^2 must fall below 0.01.",
            3300.0: "that is sigma^2; enter sigma itself.",
            math.sqrt(3267.0): "that measures the gap against the perturbed variance, "
            "(lambda - sigma^2) / lambda; the question's relative gap is against sigma^2, "
            "(lambda - sigma^2) / sigma^2.",
        },
        otherwise=f"{where}. Use the eigenvalues your function prints: by how much does the "
        "larger one exceed sigma^2, and when is that below 1 % of sigma^2?",
        tolerance=0.005)


# ---------------------------------------------------------------- 1.4 (debug) a colleague's banana


def _banana_parts():
    """The package's Banana.score, .log_prob and ._untwist: the closed form, what autograd
    differentiates to check it, and the twist both use."""
    from scorelab.densities import Banana

    return (Banana.score, Banana.log_prob, Banana._untwist, Banana.perturbed,
            Banana.perturbed_score)


_BANANA_REFUSED = (
    "your banana_score calls the package's Banana (its score, log_prob, _untwist or perturbed "
    "score): the "
    "exercise asks you to fix the colleague's closed-form score itself. The check compares it "
    "with autograd's gradient of Banana.log_prob, so a score taken from the package would only "
    "compare the package with itself."
)


def _banana_cases():
    from scorelab.densities import Banana

    return cases(
        [Banana(), Banana(curvature=0.2, scale=2.0)],
        [Banana(curvature=1.2, scale=0.8), Banana(curvature=0.05, scale=3.0)],
    )


def _expect_input_untouched(given: torch.Tensor, original: torch.Tensor, call: str) -> None:
    """Mismatch if the student's function wrote into the points it was given."""
    if torch.equal(given, original):
        return
    columns = range(original.shape[1])
    changed = [f"x[:, {j}]" for j in columns if not torch.equal(given[:, j], original[:, j])]
    moved = (given - original).abs().max().item()
    verb = "differs" if len(changed) == 1 else "differ"
    raise Mismatch(
        f"{call} changed the points it was given: after the call, {' and '.join(changed)} "
        f"{verb} from before by up to {moved:.3g}. A function that writes into its input "
        "makes every later use of x (the comparison with autograd here, a sampler's next "
        "step elsewhere) see other points. Find the line that writes into x."
    )


@exercise(
    "1.4",
    "your banana_score leaves its input alone and agrees with autograd at every curvature and "
    "scale tried, not only at a = 1.",
)
def exercise_1_4(banana_score) -> None:
    """Check ``banana_score(x (N, 2), curvature, scale) -> (N, 2)``: it must not write into x,
    and must equal autograd's gradient of log p for several (b, a)."""
    for banana in _banana_cases():
        b, a = banana.curvature, banana.scale
        x = banana.sample(256, generator=torch.Generator().manual_seed(3))  # (256, 2)
        call = f"banana_score(x, curvature={b}, scale={a})"
        given = x.clone()
        with refuse_calls(_banana_parts(), _BANANA_REFUSED):
            got = call_student(banana_score, given, b, a, what="banana_score")
        _expect_input_untouched(given, x, call)
        got = expect_tensor(got, what=call, shape=(256, 2))
        expect_finite(got, what=call)
        # the symptom: the closed form disagrees with the gradient autograd takes of log p
        leaf = x.clone().requires_grad_(True)
        (autograd,) = torch.autograd.grad(banana.log_prob(leaf).sum(), leaf)
        x1 = x[:, 0]
        u = x[:, 1] + b * (x1**2 - a**2)
        u_offset_a = x[:, 1] + b * (x1**2 - a)  # the colleague's offset b a

        def score(first, second=u):
            return torch.stack([first, -second], dim=1)

        mutants = {
            f"{call} differs from autograd although the default banana (a = 1) agrees: "
            "somewhere a power of a is wrong (a and a^2 are equal only at a = 1). Compare "
            "every a in your function with the chapter's formula.": score(
                -x1 / a**2 - 2 * b * x1 * u_offset_a, u_offset_a
            ),
            f"{call}: the first column's -x_1 / a^2 is written -x_1 / a; the Gaussian "
            "factor exp(-x_1^2 / (2 a^2)) has variance a^2, so its score divides by a^2.": score(
                -x1 / a - 2 * b * x1 * u
            ),
            f"{call} lacks the chain-rule term: d/dx_1 of -u^2 / 2 is -u * du/dx_1 "
            "= -2 b x_1 u, since u depends on x_1. Without it the score is right only where "
            "x_1 = 0 or u = 0.": score(-x1 / a**2),
            f"{call} has the chain-rule term with the wrong sign: u grows with x_1^2, and the "
            "derivative of -u^2 / 2 is minus u times that growth.": score(
                -x1 / a**2 + 2 * b * x1 * u
            ),
            f"{call} has the chain-rule term without its factor 2: du/dx_1 = 2 b x_1.": score(
                -x1 / a**2 - b * x1 * u
            ),
            f"{call} uses x_2 in the chain-rule term where it needs u = x_2 + b (x_1^2 - a^2).": score(
                -x1 / a**2 - 2 * b * x1 * x[:, 1]
            ),
        }
        diagnose(got, autograd, what=call, mutants=mutants, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- 1.5 (investigate) when modes merge


def _mixture_1d(weights, means, variances):
    from scorelab.densities import GaussianMixture

    return GaussianMixture(weights, [[m] for m in means], variances)


def _n_modes(mixture, sigma: float, grid: torch.Tensor) -> int:
    """Number of local maxima of the perturbed density on ``grid``: score sign changes + to -."""
    score = mixture.perturbed(sigma).score(grid)[:, 0]  # (G,)
    return int(((score[:-1] > 0) & (score[1:] <= 0)).sum())


def merging_sigma_reference(mixture, low: float = 1e-3, high: float = 50.0) -> float:
    """The smallest sigma at which ``mixture`` (1-D) convolved with N(0, sigma^2) has one mode.

    In one dimension Gaussian smoothing never creates a mode (scale-space causality), so the
    number of modes falls monotonically with sigma and bisection finds the merging point.
    """
    means = mixture.means[:, 0]
    grid = torch.linspace(
        means.min().item() - 5, means.max().item() + 5, 4001, dtype=torch.float64
    )[:, None]
    if _n_modes(mixture, low, grid) <= 1:
        return low
    for _ in range(30):  # relative precision (high / low)^(2^-30), far below the tolerance
        mid = math.sqrt(low * high)
        if _n_modes(mixture, mid, grid) <= 1:
            high = mid
        else:
            low = mid
    return high


def _merging_cases():
    return cases(
        [
            ("the symmetric mixture 0.5 N(-2, 1) + 0.5 N(2, 1)", ([0.5, 0.5], [-2.0, 2.0], [1.0, 1.0])),
            ("the mixture 0.8 N(-2, 0.5) + 0.2 N(2, 0.5)", ([0.8, 0.2], [-2.0, 2.0], [0.5, 0.5])),
        ],
        [
            ("a hidden mixture 0.3 N(-1, 0.3) + 0.7 N(3, 1.5)", ([0.3, 0.7], [-1.0, 3.0], [0.3, 1.5])),
            ("a hidden mixture 0.6 N(0, 0.2) + 0.4 N(5, 2)", ([0.6, 0.4], [0.0, 5.0], [0.2, 2.0])),
        ],
    )


#: Relative tolerance of 3 %: a scan of sigma with steps of 1 % (or bisection) lands well inside.
MERGE_RTOL = 0.03


@exercise(
    "1.5",
    "your merging_sigma finds where the two modes merge, for equal and unequal weights alike.",
)
def exercise_1_5(merging_sigma) -> None:
    """Check ``merging_sigma(mixture) -> float`` on 1-D two-component mixtures."""
    for name, (weights, means, variances) in _merging_cases():
        mixture = _mixture_1d(weights, means, variances)
        got = to_float(
            call_student(merging_sigma, mixture, what="merging_sigma"),
            what=f"merging_sigma on {name}",
        )
        expected = merging_sigma_reference(mixture)
        if math.isfinite(got) and abs(got - expected) <= MERGE_RTOL * expected:
            continue
        if not math.isfinite(got):
            raise Mismatch(f"on {name} your sigma is {got}, not a finite number: does your "
                           "search ever find a sigma with a single mode?")
        gap = abs(means[1] - means[0])
        equal_rule = math.sqrt(max(gap**2 / 4 - sum(variances) / 2, 0.0))
        if math.isclose(got, expected**2, rel_tol=MERGE_RTOL):
            raise Mismatch(
                f"on {name} you returned {got:.4g}, the square of the merging noise level "
                f"{expected:.4g}: return sigma, not the variance sigma^2."
            )
        if weights[0] != weights[1] and math.isclose(got, equal_rule, rel_tol=MERGE_RTOL):
            raise Mismatch(
                f"on {name} you returned {got:.4g}, what the equal-weights rule "
                "(gap / 2)^2 = v + sigma^2 gives; with unequal weights the smaller mode is "
                f"absorbed at a different sigma ({expected:.3g}). Measure it: count the sign "
                "changes of the perturbed score along a fine grid of x for each sigma."
            )
        direction = "too large" if got > expected else "too small"
        raise Mismatch(
            f"on {name} your sigma is {got:.4g}, {direction}; the modes merge at "
            f"{expected:.4g} (within {100 * MERGE_RTOL:.0f} % passes). Count the modes as the "
            "places where the perturbed score changes sign from + to - on a fine grid of x "
            "wide enough to hold both means, and refine the sigma grid near the change."
        )


# ---------------------------------------------------------------- hints (checks.hint("1.k"))

register_hints(
    "1.1",
    "A draw of x first picks component k (with probability pi_k), then draws from it. Work out"
    " the covariance of x given k, and the mean of x given k, then combine them.",
    "Cov(x) = E[Cov(x | k)] + Cov(E[x | k]) (the law of total covariance). The noise is "
    "independent of x, so covariances add; Cov(c z) = c^2 Cov(z) for a number c.",
    "Check your function where you know the answer: one component gives Sigma_1 + sigma^2 I; "
    "two point masses (Sigma_k = 0) at +m and -m with equal weights give m m^T + sigma^2 I; "
    "with unequal weights the same point masses are off-centre, and the result must not change"
    " if you shift both means by the same vector. For sigma_one_percent: the excess over "
    "sigma^2 I is the data's own covariance, which does not grow with sigma. In which "
    "direction is it largest? Your function gives it at sigma = 0.",
)
register_hints(
    "1.2",
    "Autograd differentiates a scalar. The sum over points of log p(x_n) has, as its "
    "gradient with respect to row n, exactly the score at x_n.",
    "Which tensor should autograd track: the caller's points (which may already belong to a "
    "graph, and must not change) or a copy of them? Which scalar do you differentiate, and "
    "with respect to what? Prefer the call that returns a gradient to the one that stores it "
    "on the tensors.",
    "Check yours the way the samplers use it: called inside a no-grad block, where autograd "
    "records nothing, it must still return the score. Recording can be switched back on for a "
    "block of your function.",
)
register_hints(
    "1.3",
    "Far from the modes every N(x; mu_k, v_k I) underflows to 0, but r_k does not. Write log "
    "r_k instead: a difference of logarithms, none of them tiny.",
    "Write log N(x; mu, v I) for a point of D coordinates: which term depends on D, and what "
    "is it in 1-D? Turning log-weights into weights that sum to one is what turns a "
    "classifier's logits into probabilities: which torch function does it without an exp that "
    "underflows?",
    "Check the shapes as you go: (N, K, D) for x against every mean, (N, K) for the log-joint,"
    " the softmax over the K axis, and a sum over K that leaves (N, D). If the check finds NaN"
    " far from the modes, an exp of a log-density comes before the softmax.",
)
register_hints(
    "1.4",
    "Experiment before you read the formula: call banana_score twice on the same points and "
    "compare the two answers; then compare the points themselves before and after one call.",
    "Once you have seen the points change, find the line that writes into a tensor instead of "
    "making a new one. Does x[:, 1] make a new tensor, or look into x's memory? Test it on a "
    "small tensor. Once x stays as it was, try a banana whose scale is not 1: at a = 1 some "
    "mistakes cancel.",
    "Checks to run on your fix: keep a copy of the points, call banana_score once and test "
    "that the points equal the copy; call it twice and compare the answers; then compare it "
    "with autograd_score on a banana with curvature 0.2 and scale 2, where a and a^2 differ, "
    "and see which column disagrees.",
)
register_hints(
    "1.5",
    "A mode is a point where the score crosses zero going from positive to negative. Count "
    "those crossings along a line of x for a range of noise levels.",
    "The perturbed mixture is mixture.perturbed(sigma); its score on a column of points "
    "x (G, 1) gives s (G, 1), whose column s[:, 0] is (G,). A mode sits between neighbours "
    "with s[i] > 0 >= s[i + 1].",
    "Too small a sigma: your x grid is too coarse to separate two crossings close together, "
    "or too narrow to hold both modes. Too large: your sigma grid is too coarse near the "
    "answer (3 % needs steps of about 1 % there), or bisect between the last sigma with two "
    "modes and the first with one.",
)
