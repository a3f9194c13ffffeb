"""Checks for the exercises of chapter 4: the denoising score-matching loss, Tweedie's denoiser,
the optimal DSM score of a Gaussian (derive), a DSM loss with sigma in place of sigma^2 (debug),
and the noise level that best estimates the clean score from a finite sample (investigate)."""

from __future__ import annotations

import math

import numpy as np
import torch

from scorelab.checks._core import (Mismatch, call_student, call_under_no_grad, cases,
                                   check_choice, diagnose, exercise, expect_derived,
                                   expect_untouched,
                                   expect_finite, expect_loss, expect_same_draws, expect_tensor,
                                   global_rng_untouched, is_close, package_refused,
                                   register_hints, to_float, without_package)
from scorelab.checks._formulas import check_formula, points_with_special

SIGMA = 0.3  # sigma, sigma^2, 2 and the dimension 3 are all different factors
SEED = 5


def _linear_model(dim: int = 3) -> torch.nn.Module:
    """A small differentiable score model with fixed weights, so every loss value is reproducible."""
    torch_generator = torch.Generator().manual_seed(0)
    model = torch.nn.Linear(dim, dim)
    with torch.no_grad():
        model.weight.copy_(-torch.eye(dim) + 0.3 * torch.randn(dim, dim, generator=torch_generator))
        model.bias.copy_(0.5 * torch.randn(dim, generator=torch_generator))
    return model


def _data(n: int = 200, dim: int = 3) -> torch.Tensor:
    return 2.0 * torch.randn(n, dim, generator=torch.Generator().manual_seed(9))  # (N, D)


def _dsm_mutants(model, x: torch.Tensor, sigma: float) -> dict[str, torch.Tensor]:
    """Per-example values of the usual mistakes, with the noise the reference draws."""
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(SEED))
    noisy = model(x + sigma * z)

    def half_sq(v):
        return 0.5 * (v**2).sum(dim=1)

    return {
        "the target has the wrong sign: the kernel's score at x~ = x + sigma z is -(x~ - x) / sigma^2 = "
        "-z / sigma, so the loss is 1/2 || s(x~) + z / sigma ||^2.": half_sq(noisy - z / sigma),
        "the target is -z; it should be -z / sigma, the score of N(x~; x, sigma^2 I) at x~ = x + sigma z.": half_sq(
            noisy + z
        ),
        "the target is -z / sigma^2; since x~ - x = sigma z, the kernel's score -(x~ - x) / sigma^2 is "
        "-z / sigma.": half_sq(noisy + z / sigma**2),
        "the model is evaluated at the clean x; evaluate it at the noisy x~ = x + sigma z.": half_sq(
            model(x) + z / sigma
        ),
        "the noise is added without its scale: perturb with x~ = x + sigma * z.": half_sq(
            model(x + z) + z / sigma
        ),
        "the noise has shape (N, 1), one draw shared by every coordinate of a point: draw "
        "z = torch.randn(x.shape, generator=generator).": _with_noise(
            model, x, sigma, torch.randn(x.shape[0], 1, generator=_seeded()).expand_as(x)
        ),
        "the target uses a second draw of the noise: the z of the target must be the very z "
        "that perturbed x (x~ = x + sigma z), drawn once.": _with_two_draws(model, x, sigma),
        "the target uses the first draw of the noise and the input a second one: draw z once, "
        "and use it in both x~ = x + sigma z and the target -z / sigma.":
            _with_two_draws(model, x, sigma, swapped=True),
        "you took the norm || s(x~) + z / sigma ||, not half its square: the loss is "
        "1/2 || s(x~) + z / sigma ||^2.": (noisy + z / sigma).norm(dim=1),
        "you took half the norm, not half its square: the loss is 1/2 || s(x~) + z / sigma ||^2.":
            0.5 * (noisy + z / sigma).norm(dim=1),
        "the noise is scaled by sigma^2: sigma is the standard deviation of the perturbation, "
        "x~ = x + sigma z.": half_sq(model(x + sigma**2 * z) + z / sigma),
        "the target is -z / sqrt(sigma); the kernel's score at x~ = x + sigma z is -z / sigma.":
            half_sq(noisy + z / math.sqrt(sigma)),
        "the target is x - x~ = -sigma z without the division by sigma^2: the kernel's score "
        "is (x - x~) / sigma^2 = -z / sigma.": half_sq(noisy + sigma * z),
        "the formula is right but the noise was drawn in float64: the check compares draw for "
        "draw with z = torch.randn(x.shape, generator=generator), in x's dtype.": _with_noise(
            model, x, sigma,
            torch.randn(x.shape, generator=_seeded(), dtype=torch.float64).to(x.dtype),
        ),
    }


def _package_losses():
    """The package's DSM losses, which a student's own loss may not call."""
    from scorelab.training import _dsm_loss, _sigma_weighted_dsm, dsm_loss, sigma_weighted_dsm

    return dsm_loss, _dsm_loss, sigma_weighted_dsm, _sigma_weighted_dsm


def _seeded() -> torch.Generator:
    return torch.Generator().manual_seed(SEED)


def _with_two_draws(model, x: torch.Tensor, sigma: float, *, swapped: bool = False):
    """The DSM loss (N,) with two noise draws from the seed: the first perturbs x and the
    second enters the target (``swapped``: the other way round)."""
    generator = _seeded()
    first, second = (torch.randn(x.shape, generator=generator) for _ in range(2))
    at, target = (second, first) if swapped else (first, second)
    return 0.5 * ((model(x + sigma * at) + target / sigma) ** 2).sum(dim=1)


def _with_noise(model, x: torch.Tensor, sigma: float, z: torch.Tensor) -> torch.Tensor:
    """The DSM loss (N,) with the noise ``z`` (N, D) given."""
    return 0.5 * ((model(x + sigma * z) + z / sigma) ** 2).sum(dim=1)


@exercise(
    "4.1",
    "your dsm_loss is 1/2 || s(x + sigma z) + z / sigma ||^2 per example, and gradients flow.",
)
def exercise_4_1(dsm_loss) -> None:
    """Check ``dsm_loss(model, x (N, D), sigma, generator) -> (N,)``."""
    from scorelab.training import dsm_loss as reference_loss

    model, x = _linear_model(), _data()

    def run():
        given = x.clone()
        with package_refused(*_package_losses(), what="dsm_loss"), \
                global_rng_untouched("dsm_loss"):
            loss = call_student(
                dsm_loss, model, given, SIGMA, generator=torch.Generator().manual_seed(SEED),
                what="dsm_loss",
            )
        expect_untouched(given, x, call="dsm_loss(model, x, sigma)")
        return loss

    got = expect_loss(run(), name="dsm_loss", what="dsm_loss(model, x, sigma)", n=x.shape[0])
    expected = reference_loss(model, x, SIGMA, generator=torch.Generator().manual_seed(SEED))
    if is_close(got, expected):
        return
    expect_same_draws(run, got)
    with torch.no_grad():
        mutants = _dsm_mutants(model, x, SIGMA)
    diagnose(
        got.detach(),
        expected.detach(),
        what="dsm_loss",
        mutants=mutants,
        factors={
            "sigma^2": SIGMA**2,
            "sigma": SIGMA,
            "2": (2.0, "the 1/2 in front of the squared norm is missing.",
                  "the 1/2 in front of the squared norm is there twice."),
            "D": (float(x.shape[1]), "",
                  "sum the squares over the dimensions, do not average them."),
        },
    )


_MIXTURE_42 = ([0.4, 0.6], [[-2.0, 0.0], [2.0, 1.0]], [0.3, 0.5])  # weights, means, variances


def _mixture_42():
    from scorelab.densities import GaussianMixture

    weights, means, variances = (torch.tensor(v) for v in _MIXTURE_42)
    return GaussianMixture(weights, means, variances)


def _exact_posterior_variance(x_noisy: torch.Tensor, sigma: float) -> torch.Tensor:
    """(1/D) tr Cov[x | x~] (N,) for the mixture of ``_MIXTURE_42``, in closed form (float64):
    given x~ the clean point is a mixture of the components' Gaussian posteriors, with means
    mu_k + v_k / (v_k + sigma^2) (x~ - mu_k), variances v_k sigma^2 / (v_k + sigma^2) and the
    perturbed mixture's responsibilities as weights."""
    means, variances = (torch.tensor(v, dtype=torch.float64) for v in _MIXTURE_42[1:])
    x = x_noisy.double()
    weights = _mixture_42().perturbed(sigma).responsibilities(x_noisy).double()  # (N, K)
    shrink = variances / (variances + sigma**2)  # (K,)
    component_means = means[:, None] + shrink[:, None, None] * (x[None] - means[:, None])  # (K, N, D)
    mean = torch.einsum("nk,knd->nd", weights, component_means)
    second = (weights * (x.shape[1] * sigma**2 * shrink
                         + component_means.square().sum(-1).T)).sum(1)  # E|x|^2 given x~
    return (second - mean.square().sum(1)) / x.shape[1]


def _expect_denoise(denoise) -> None:
    sigma = 0.7
    perturbed = _mixture_42().perturbed(sigma)
    x_noisy = perturbed.sample(300, generator=torch.Generator().manual_seed(2))  # (N, 2)
    given = x_noisy.clone()
    got = call_student(denoise, given, perturbed.score, sigma, what="denoise")
    expect_untouched(given, x_noisy, call="denoise(x_noisy, score_fn, sigma)")
    got = expect_tensor(got, what="denoise(x_noisy, score_fn, sigma)", shape=tuple(x_noisy.shape))
    expect_finite(got, what="denoise(x_noisy, score_fn, sigma)")
    score = perturbed.score(x_noisy)
    mutants = {
        "you multiplied the score by sigma; Tweedie's formula uses the variance sigma^2.": x_noisy
        + sigma * score,
        "you subtracted sigma^2 * score; the score points towards the data, so add it: x~ + sigma^2 s(x~).": x_noisy
        - sigma**2 * score,
        "you returned sigma^2 * s(x~) alone; the denoised point is x~ + sigma^2 * s(x~).": sigma**2
        * score,
        "you divided the score by sigma^2; Tweedie's formula multiplies it by sigma^2.": x_noisy
        + score / sigma**2,
        "you took half of sigma^2 * s(x~), like the drift of a Langevin step of size sigma^2; "
        "Tweedie's formula adds all of it: x~ + sigma^2 s(x~).": x_noisy + 0.5 * sigma**2 * score,
    }
    diagnose(got, x_noisy + sigma**2 * score, what="denoise", mutants=mutants)


def _valley_and_samples(sigma: float) -> torch.Tensor:
    """Points (N, 2): samples of the perturbed mixture and the segment between its means."""
    samples = _mixture_42().perturbed(sigma).sample(200, generator=torch.Generator().manual_seed(3))
    u = torch.linspace(0.0, 1.0, 41)[:, None]
    means = torch.tensor(_MIXTURE_42[1])
    return torch.cat([samples, means[0] + u * (means[1] - means[0])])


def _trace_of_jacobian(score_fn, x: torch.Tensor) -> torch.Tensor:
    """tr of the score's Jacobian (N,): the exact divergence the SDE's log-likelihood uses."""
    from scorelab.sde import _divergence

    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        return _divergence(score_fn(x), x, probes=None).detach()


def _expect_posterior_variance(posterior_variance) -> None:
    for sigma in cases(public=[0.5, 1.5], hidden=[0.2, 3.0]):
        perturbed = _mixture_42().perturbed(sigma)
        points = _valley_and_samples(sigma)
        given = points.clone()
        call = f"posterior_variance(x_noisy, score_fn, sigma={sigma:g})"
        got = call_student(posterior_variance, given, perturbed.score, sigma,
                           what="posterior_variance")
        expect_untouched(given, points, call=call)
        got = expect_tensor(got, what=call, shape=(len(points),))
        expect_finite(got, what=call)
        want = _exact_posterior_variance(points, sigma).float()
        trace = _trace_of_jacobian(perturbed.score, points).detach()
        dim = points.shape[1]
        mutants = {
            "that is sigma^2 alone, the noise's variance: the posterior variance differs from it "
            "by the derivative of the score (differentiate Tweedie's formula once more).":
            torch.full_like(want, sigma**2),
            "the sign of the second term is flipped: where log p_sigma curves down (near a mode) "
            "the posterior variance is below sigma^2.": sigma**2 - sigma**4 * trace / dim,
            "the second term has sigma^2 where it needs sigma^4: one sigma^2 from Tweedie's "
            "formula, one from differentiating the posterior mean.": sigma**2 + sigma**2 * trace / dim,
            "that is the trace of the covariance, summed over the coordinates: return its mean "
            "over the D coordinates.": dim * sigma**2 + sigma**4 * trace,
            "that uses the square of the score where its derivative belongs.":
            sigma**2 + sigma**4 * perturbed.score(points).square().sum(1) / dim,
            "that is the covariance divided by sigma^2: the derivative of the posterior mean is "
            "Cov[x | x~] / sigma^2, so multiply back.": 1.0 + sigma**2 * trace / dim,
            "that leaves out sigma^2 I, the derivative of x~ itself in Tweedie's formula.":
            sigma**4 * trace / dim,
            "that averages sigma^2 I over the coordinates but sums the second term: divide the "
            "whole trace by D.": sigma**2 + sigma**4 * trace,
        }
        diagnose(got, want, what=call, mutants=mutants, rtol=1e-3, atol=1e-5)
    _expect_under_no_grad(posterior_variance)


def _expect_under_no_grad(posterior_variance) -> None:
    """The samplers call score functions, and a denoiser's uncertainty with them, under
    torch.no_grad(): posterior_variance must work there."""
    sigma = 0.5
    points = _valley_and_samples(sigma)
    got = call_under_no_grad(posterior_variance, points.clone(),
                             _mixture_42().perturbed(sigma).score, sigma,
                             what="posterior_variance", after=", as in exercise 1.2")
    got = expect_tensor(got, what="posterior_variance under torch.no_grad()",
                        shape=(len(points),))
    diagnose(got, _exact_posterior_variance(points, sigma).float(),
             what="posterior_variance under torch.no_grad()", rtol=1e-3, atol=1e-5)


EXCEEDS_OPTIONS = {
    "a": "near a mode log p_sigma curves down, so the posterior variance is below sigma^2 (for a "
         "component of variance v it is v sigma^2 / (v + sigma^2)).",
    "b": "",
    "c": "just beyond a mode the nearer component dominates, and the posterior is its Gaussian "
         "one, with a variance below sigma^2. (Much further out the wider component takes over "
         "again, and where the two trade places the variance rises: one more valley.)",
    "d": "the posterior variance is sigma^2 + sigma^4 tr(J)/D: it exceeds sigma^2 wherever the "
         "score's Jacobian has a positive trace, where log p_sigma curves up. Does it anywhere?",
}


@exercise(
    "4.2",
    "your denoise is Tweedie's formula x~ + sigma^2 s(x~), the posterior mean; its derivative "
    "gives the posterior covariance sigma^2 I + sigma^4 J (J the score's Jacobian), which exceeds "
    "the noise's own variance between the modes, where the clean point could come from either.",
)
def exercise_4_2(denoise, posterior_variance, exceeds_noise) -> None:
    """Check ``denoise(x_noisy (N, D), score_fn, sigma) -> (N, D)``, ``posterior_variance(
    x_noisy, score_fn, sigma) -> (N,)`` ((1/D) tr Cov[x | x~], against the mixture's closed-form
    posterior) and the letter ``exceeds_noise`` ("b": between the modes)."""
    _expect_denoise(denoise)
    _expect_posterior_variance(posterior_variance)
    check_choice(exceeds_noise, EXCEEDS_OPTIONS, "b", what="exceeds_noise")


# ---------------------------------------------------------------- 4.3 (derive): the DSM optimum


def _optimal_dsm_score(x, mu, tau, sigma):
    return -(x - mu) / (tau**2 + sigma**2)


_SCORE_POINTS = {
    "x": (-5.0, 5.0),
    "mu": (-3.0, 3.0),
    "tau": (0.2, 3.0, "log"),
    "sigma": (0.01, 10.0, "log"),
}


@exercise(
    "4.3",
    "the optimal DSM score of N(mu, tau^2) is -(x - mu) / (tau^2 + sigma^2): the score of the "
    "perturbed density N(mu, tau^2 + sigma^2), at every noise level; Tweedie's formula with it "
    "shrinks x~ - mu by tau^2 / (tau^2 + sigma^2), with the clean score by 1 - sigma^2 / tau^2, "
    "which overshoots the mean once sigma > tau.",
)
def exercise_4_3(optimal_dsm_score, shrink_factors) -> None:
    """Check ``optimal_dsm_score(x, mu, tau, sigma) -> float`` at random parameter values, then
    ``shrink_factors(tau, sigma) -> (k_perturbed, k_clean)`` for data N(mu, tau^2)."""
    from scorelab.densities import GaussianMixture

    # the derivation, not the package's perturbed density, must give the answer
    optimal_dsm_score = without_package(
        optimal_dsm_score, GaussianMixture.perturbed, GaussianMixture.perturbed_score,
        GaussianMixture.score, what="optimal_dsm_score")
    # a few centred densities too, so that "right only when mu = 0" can be said
    check_formula(
        optimal_dsm_score,
        _optimal_dsm_score,
        points_with_special(cases([40], [41, 42]), _SCORE_POINTS, lambda p: {**p, "mu": 0.0}),
        what="optimal_dsm_score",
        regimes=[
            [
                ("for small noise (sigma < tau / 5)", lambda p: p["sigma"] < p["tau"] / 5),
                ("for noise comparable with tau",
                 lambda p: p["tau"] / 5 <= p["sigma"] <= 5 * p["tau"]),
                ("for large noise (sigma > 5 tau)", lambda p: p["sigma"] > 5 * p["tau"]),
            ],
            [
                ("when mu = 0", lambda p: p["mu"] == 0.0),
                ("when mu is not 0", lambda p: p["mu"] != 0.0),
            ],
        ],
        mutants=[
            (
                "this is the score of the clean density N(mu, tau^2), right only as sigma -> 0. "
                "DSM's minimiser is the score of the perturbed density: what is the law of "
                "x + sigma z when x ~ N(mu, tau^2)?",
                lambda x, mu, tau, sigma: -(x - mu) / tau**2,
            ),
            (
                "this is the score of the noise kernel alone, right only as sigma -> infinity. "
                "The optimum averages the kernel's score over the clean x given x~: it is the "
                "score of the perturbed density.",
                lambda x, mu, tau, sigma: -(x - mu) / sigma**2,
            ),
            (
                "standard deviations do not add: for independent Gaussians the variances do, "
                "so x + sigma z has variance tau^2 + sigma^2.",
                lambda x, mu, tau, sigma: -(x - mu) / (tau + sigma) ** 2,
            ),
            (
                "the sign is wrong: the score points back towards the mean mu.",
                lambda x, mu, tau, sigma: (x - mu) / (tau**2 + sigma**2),
            ),
            (
                "you divided by the standard deviation of the perturbed density; the score of "
                "N(m, v) is -(x - m) / v, divided by the variance.",
                lambda x, mu, tau, sigma: -(x - mu) / math.sqrt(tau**2 + sigma**2),
            ),
            (
                "you divided by tau + sigma: the score of N(m, v) divides by the variance v, "
                "and for x + sigma z the variances add, tau^2 + sigma^2.",
                lambda x, mu, tau, sigma: -(x - mu) / (tau + sigma),
            ),
        ],
    )
    _expect_shrink_factors(shrink_factors)


def _expect_shrink_factors(shrink_factors) -> None:
    """For data N(mu, tau^2): Tweedie with the perturbed score shrinks x~ - mu by
    tau^2 / (tau^2 + sigma^2), with the clean score by 1 - sigma^2 / tau^2."""
    for tau, sigma in cases([(1.0, 0.5), (0.6, 1.5)], [(2.0, 0.3)]):
        call = f"shrink_factors(tau={tau}, sigma={sigma})"
        answer = call_student(shrink_factors, tau, sigma, what="shrink_factors")
        if isinstance(answer, (torch.Tensor, np.ndarray)) and answer.reshape(-1).shape[0] == 2:
            answer = answer.reshape(-1).tolist()  # a pair held in a tensor or an array
        if not (isinstance(answer, (tuple, list)) and len(answer) == 2):
            raise Mismatch(f"{call} should return a pair (k_perturbed, k_clean), got {answer!r}.")
        perturbed, clean = (to_float(value, what=f"{call}[{k}]") for k, value in enumerate(answer))
        want = (tau**2 / (tau**2 + sigma**2), 1.0 - sigma**2 / tau**2)
        if all(math.isclose(got, right, rel_tol=1e-6, abs_tol=1e-9)
               for got, right in zip((perturbed, clean), want)):
            continue
        if math.isclose(perturbed, want[1], rel_tol=1e-6) and math.isclose(clean, want[0],
                                                                           rel_tol=1e-6):
            raise Mismatch(f"{call}: the two factors are swapped; the first is the one with the "
                           "perturbed score, -(x - mu) / (tau^2 + sigma^2).")
        for name, got, right, density in (("k_perturbed", perturbed, want[0],
                                           "N(mu, tau^2 + sigma^2), the perturbed density"),
                                          ("k_clean", clean, want[1], "N(mu, tau^2) itself")):
            if math.isclose(got, right, rel_tol=1e-6, abs_tol=1e-9):
                continue
            removed = 1.0 - right
            if math.isclose(got, removed, rel_tol=1e-6, abs_tol=1e-9):
                raise Mismatch(f"{call}: {name} = {got:.6g} is what the denoiser removes; the "
                               "factor asked for is what remains of x~ - mu.")
            raise Mismatch(f"{call}: {name} = {got:.6g} is not the factor. With the score of "
                           f"{density}, x~ + sigma^2 s(x~) - mu is a multiple of x~ - mu: "
                           "which?")


# ---------------------------------------------------------------- 4.4 (debug): sigma vs sigma^2


def _fitted_line(loss_fn, sigma: float, *, mu: float = 0.5, tau: float = 1.0, n: int = 20_000):
    """Slope and intercept of a 1-D linear score model s(x) = a x + b that minimises ``loss_fn``
    on N(mu, tau^2) data (LBFGS; the noise is redrawn identically at every evaluation)."""
    x = mu + tau * torch.randn(n, 1, generator=torch.Generator().manual_seed(12))  # (N, 1)
    model = torch.nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    optimizer = torch.optim.LBFGS(
        model.parameters(), lr=1.0, max_iter=200, line_search_fn="strong_wolfe"
    )

    def closure():
        optimizer.zero_grad()
        loss = call_student(
            loss_fn, model, x, sigma, generator=torch.Generator().manual_seed(13), what="loss"
        ).mean()
        loss.backward()
        return loss

    optimizer.step(closure)
    return model.weight.item(), model.bias.item()


def _slope_tolerance(sigma: float, tau: float = 1.0, n: int = 20_000) -> float:
    """Five standard errors of the least-squares slope of -z / sigma on x + sigma z."""
    residual_variance = 1 / sigma**2 - 1 / (tau**2 + sigma**2)
    return 5 * math.sqrt(residual_variance / (n * (tau**2 + sigma**2)))


@exercise(
    "4.4",
    "fixed: the target is the kernel's score (x - x~) / sigma^2, and a linear model trained "
    "with your loss learns the slope -1 / (tau^2 + sigma^2) of Exercise 4.3, not "
    "-sigma / (tau^2 + sigma^2), which is the same at sigma and tau^2 / sigma.",
)
def exercise_4_4(fixed_dsm_loss, buggy_slope, same_slope_level) -> None:
    """Check the fixed ``fixed_dsm_loss(model, x (N, D), sigma, generator) -> (N,)``, then
    ``buggy_slope(sigma, tau)``, the slope the buggy loss learns on N(mu, tau^2) data,
    -sigma / (tau^2 + sigma^2), and ``same_slope_level(sigma, tau)``, the other level at which
    it learns the same slope, tau^2 / sigma."""
    from scorelab.training import dsm_loss as reference_loss

    model, x = _linear_model(), _data()
    for sigma in cases([SIGMA, 2.0], [0.05, 1.0]):
        def run(sigma=sigma):
            given = x.clone()
            with package_refused(*_package_losses(), what="fixed_dsm_loss"), \
                    global_rng_untouched("fixed_dsm_loss"):
                loss = call_student(fixed_dsm_loss, model, given, sigma,
                                    generator=torch.Generator().manual_seed(SEED),
                                    what="fixed_dsm_loss")
            expect_untouched(given, x, call="fixed_dsm_loss(model, x, sigma)")
            return loss

        got = expect_loss(run(), name="fixed_dsm_loss", what=f"fixed_dsm_loss at sigma={sigma}",
                          n=x.shape[0])
        expect_same_draws(run, got)
        expected = reference_loss(model, x, sigma, generator=torch.Generator().manual_seed(SEED))
        with torch.no_grad():
            z = torch.randn(x.shape, generator=torch.Generator().manual_seed(SEED))
            bug = 0.5 * ((model(x + sigma * z) + z) ** 2).sum(dim=1)
            mutants = {
                "the bug is still there: the target (x - x_noisy) / sigma is the noise -z "
                "itself, not the score of the perturbation kernel N(x~; x, sigma^2 I) at x~ "
                "(differentiate its log-density with respect to x~).": bug,
                **_dsm_mutants(model, x, sigma),
            }
        diagnose(
            got.detach(),
            expected.detach(),
            what=f"fixed_dsm_loss at sigma={sigma}",
            mutants=mutants,
            factors={"sigma^2": (sigma**2, "that is the loss weighted by lambda(sigma) = "
                                 "sigma^2 (chapter 6), 1/2 ||sigma s(x~) + z||^2; this loss is "
                                 "chapter 4's unweighted one.", ""),
                     "sigma": sigma,
                     f"D = {x.shape[1]}": (float(x.shape[1]), "", "did you average over the "
                                           "dimensions? Sum over them, as the squared norm does."),
                     "2": (2.0, "the 1/2 in front of the squared norm is missing.",
                           "the 1/2 in front of the squared norm is there twice.")},
        )
    # The symptom: trained with the buggy loss, a linear model learns sigma times the score.
    for sigma in cases([0.5], [2.0]):
        slope, _ = _fitted_line(fixed_dsm_loss, sigma)
        expected_slope = -1 / (1 + sigma**2)
        if abs(slope - expected_slope) > _slope_tolerance(sigma):
            raise Mismatch(
                f"the values match, but a linear model trained with your loss on N(0.5, 1) "
                f"data at sigma={sigma} learns the slope {slope:.3f}, not "
                f"{expected_slope:.3f} = -1 / (tau^2 + sigma^2) with tau = 1."
            )
    _expect_buggy_slope(buggy_slope)
    _expect_same_slope_level(same_slope_level)


#: 4.4's (sigma, tau) pairs: tau differs from 1, so that answers which hold for the printed
#: tau = 1 only are told apart
SLOPE_CASES = ([(0.5, 1.7), (2.0, 0.6), (3.0, 1.3)], [(0.2, 2.5), (7.0, 0.9)])


def _expect_buggy_slope(buggy_slope) -> None:
    """The buggy target -z is sigma times the kernel's score: the slope -sigma / (tau^2 + sigma^2)."""
    for sigma, tau in cases(*SLOPE_CASES):
        call = f"buggy_slope({sigma}, {tau})"
        got = to_float(call_student(buggy_slope, sigma, tau, what="buggy_slope"), what=call)
        v = tau**2 + sigma**2
        expect_derived(
            got, -sigma / v, call=call, wrong="is not the slope the buggy loss learns",
            slips={-1 / v: "that is the optimum, the slope your fixed loss learns; the buggy "
                           "target is not the kernel's score.",
                   sigma / v: "a score that pulls towards mu has a negative slope.",
                   -1 / (sigma * v): "the factor sigma goes the other way: the target is -z, "
                                     "the kernel's score -z / sigma; at sigma = 0.5, which is "
                                     "the larger?",
                   -sigma**2 / v: "the target (x - x~) / sigma is -z; the kernel's score is "
                                  "-z / sigma: they differ by one factor sigma, not two.",
                   -sigma / tau**2: "that is sigma times the clean score's slope, -1 / tau^2; "
                                    "DSM at level sigma aims at exercise 4.3's perturbed score.",
                   -sigma / (tau + sigma**2): "tau is the standard deviation; the variances "
                                              "of data and noise add.",
                   -sigma / (1 + sigma**2): "that holds for tau = 1 only, the data printed "
                                            "above; the data's variance is tau^2."},
            measured=(0.05, "close, but not exact: the printed slopes are fits to samples. "
                            "Derive the slope from the buggy target and the kernel's score."),
            otherwise="the buggy target (x - x~) / sigma is -z: what does a regression of -z on "
                      "x~ learn, compared with a regression of the kernel's score -z / sigma?")


def _expect_same_slope_level(same_slope_level) -> None:
    """-sigma' / (tau^2 + sigma'^2) = -sigma / (tau^2 + sigma^2) has the roots sigma and
    tau^2 / sigma (their product is tau^2)."""
    for sigma, tau in cases(*SLOPE_CASES):
        call = f"same_slope_level({sigma}, {tau})"
        got = to_float(call_student(same_slope_level, sigma, tau, what="same_slope_level"),
                       what=call)
        expect_derived(
            got, tau**2 / sigma, call=call, wrong="is not the other level with the same slope",
            slips={sigma: "that is sigma itself; the equation for the level has a second root.",
                   1 / sigma: "that holds for tau = 1 only, the data printed above.",
                   tau / sigma: "the two roots multiply to tau^2, not tau.",
                   tau: "at sigma = tau the buggy slope is largest in size and the two roots "
                        "meet; for any other sigma they differ."},
            measured=(0.05, "close, but not exact: did you search numerically? Solve the "
                            "quadratic for the level."),
            otherwise="set your buggy slope at level s equal to its value at sigma and solve for "
                      "s: a quadratic, with sigma as one root.")



# ---------------------------------------------------------------- 4.5 (investigate): best sigma


def _kde_curve(
    mixture, train, test, sigmas, *, variance=lambda s: s**2, perturbed=False, at=None,
    swapped=False, per_point=False,
):
    """Relative Fisher divergence (and its standard error) of the score of the Gaussian kernel
    density estimate of ``train`` (bandwidth sigma: DSM's optimum on that finite sample) to the
    clean score of ``mixture``, on the points ``at`` (default: ``test``), for every sigma."""
    from scorelab.densities import GaussianMixture

    points = test if at is None else at
    n = len(train)
    values, errors = [], []
    for sigma in sigmas:
        kde = GaussianMixture(torch.full((n,), 1 / n), train, torch.full((n,), variance(sigma)))
        true = (mixture.perturbed(sigma) if perturbed else mixture).score(points)  # (M, D)
        squared = ((kde.score(points) - true) ** 2).sum(dim=1).double()  # (M,)
        scale = kde.score(points) if swapped else true  # swapped: the arguments' order mixed up
        norm = (scale**2).sum(dim=1).double().mean()
        if per_point:  # a mean of per-point ratios, which the exercise warns against
            values.append(float((squared / (scale**2).sum(dim=1).double()).mean()))
            errors.append(math.nan)
            continue
        values.append(float(squared.mean() / norm))
        errors.append(float(squared.std() / math.sqrt(len(points)) / norm))
    return values, errors


def _check_kde_divergences(kde_divergences, mixture, train, test, sigmas) -> None:
    call = f"kde_divergences on {len(train)} training points"
    got = call_student(kde_divergences, mixture, train.clone(), test.clone(), list(sigmas),
                       what="kde_divergences")
    try:
        got = torch.tensor([float(v) for v in got], dtype=torch.float64)
    except (TypeError, ValueError):
        raise Mismatch(f"{call} should return a list of floats, one per sigma; got "
                       f"{type(got).__name__}.") from None
    if got.shape != (len(sigmas),):
        raise Mismatch(f"{call} returned {len(got)} values for {len(sigmas)} sigmas.")

    def curve(**options):
        return torch.tensor(_kde_curve(mixture, train, test, sigmas, **options)[0],
                            dtype=torch.float64)

    norm_ratio = float((mixture.score(test) ** 2).sum(dim=1).double().mean())
    diagnose(got, curve(), what=call, rtol=1e-3, atol=1e-6, mutants={
        f"{call}: measured on the training points, where each point sits on its own kernel; "
        "measure on test_points.": curve(at=train),
        f"{call}: the kernels have variance sigma; GaussianMixture takes variances, so give "
        "it sigma^2.": curve(variance=lambda s: s),
        f"{call}: compared with the score of the perturbed density p_sigma; the question is "
        "how close the kernel density's score comes to the clean score of p.":
            curve(perturbed=True),
        f"{call}: not relative: divide by the mean squared size of the clean score on the test "
        "points.": curve() * norm_ratio,
        f"{call}: a mean of per-point ratios |s - grad log p|^2 / |grad log p|^2; the relative "
        "divergence is a ratio of means, E|s - grad log p|^2 / E|grad log p|^2 (points where "
        "the clean score is nearly zero would dominate the other).": curve(per_point=True),
        f"{call}: divided by the kernel density's score, not the clean one: "
        "fisher_divergence(score_fn, true_score_fn, x, relative=True) takes the model's score "
        "first and the true score second.": curve(swapped=True),
    })


def _kde_case(n_train: int, seed: int):
    from scorelab.densities import GaussianMixture

    mixture = GaussianMixture(
        torch.tensor([0.7, 0.3]), torch.tensor([[-2.0, -2.0], [2.0, 2.0]]), torch.tensor([0.5, 0.5])
    )
    train = mixture.sample(n_train, generator=torch.Generator().manual_seed(seed))
    test = mixture.sample(4000, generator=torch.Generator().manual_seed(seed + 1))
    return mixture, train, test


@exercise(
    "4.5",
    "your sigma minimises the Fisher divergence of DSM's optimum on the sample (the kernel "
    "density's score) to the clean score: smaller sigma overfits the sample, larger sigma blurs.",
)
def exercise_4_5(kde_divergences, best_sigma) -> None:
    """Check ``kde_divergences(mixture, train_points, test_points, sigmas) -> list of floats``
    and ``best_sigma(mixture, train_points, test_points, sigmas) -> float``."""
    sigmas = [float(s) for s in torch.logspace(-1.5, 0.5, 21)]
    # the public sample sizes have different best sigmas (0.40 for 1,000 points, 0.50 for 50)
    for n_train, seed in cases([(1000, 8), (50, 7)], [(200, 0)]):
        mixture, train, test = _kde_case(n_train, seed)
        _check_kde_divergences(kde_divergences, mixture, train, test, sigmas)
        answer = to_float(
            call_student(
                best_sigma, mixture, train.clone(), test.clone(), list(sigmas), what="best_sigma"
            ),
            what="best_sigma(...)",
        )
        where = f"with {n_train} training points"
        index = min(range(len(sigmas)), key=lambda i: abs(math.log(sigmas[i] / answer))
                    if answer > 0 else math.inf)
        if not (answer > 0 and math.isclose(sigmas[index], answer, rel_tol=1e-4)):
            raise Mismatch(
                f"{where} your answer {answer:.4g} is not one of the sigmas tried: return the "
                "value of `sigmas` whose kernel density score is closest to the clean score."
            )
        values, errors = _kde_curve(mixture, train, test, sigmas)
        best = min(range(len(sigmas)), key=values.__getitem__)
        # any sigma whose divergence is within 3 standard errors (of the test-set average)
        # of the smallest one is as good an answer as the estimate can tell
        band = 3 * math.hypot(errors[index], errors[best])
        if values[index] <= values[best] + band:
            continue
        # kde_divergences passed above: these name a best_sigma that computes its own curve
        mistakes = {
            "it is the sigma with the largest divergence: take the smallest.": max(
                range(len(sigmas)), key=values.__getitem__
            ),
            "your best_sigma picks the sigma that kernels of variance sigma would favour: read "
            "it off your kde_divergences, whose kernels have variance sigma^2.": _argmin(
                _kde_curve(mixture, train, test, sigmas, variance=lambda s: s)[0]),
            "your best_sigma picks the sigma that a comparison with the perturbed density "
            "p_sigma would favour (always the largest): read it off your kde_divergences, "
            "which compare with the clean score of p.": _argmin(
                _kde_curve(mixture, train, test, sigmas, perturbed=True)[0]
            ),
            "your best_sigma picks the sigma that a divergence on the training points would "
            "favour (each sits on its own kernel): read it off your kde_divergences, measured "
            "on the test points.": _argmin(
                _kde_curve(mixture, train, test, sigmas, at=train)[0]
            ),
        }
        for explanation, wrong_index in mistakes.items():
            if wrong_index == index:
                raise Mismatch(f"{where}, {explanation}")
        raise Mismatch(
            f"{where} your sigma = {answer:.3g} gives a relative Fisher divergence of "
            f"{values[index]:.3f}, but sigma = {sigmas[best]:.3g} gives {values[best]:.3f} "
            f"(+- {errors[best]:.3f})."
        )


def _argmin(values: list[float]) -> int:
    return min(range(len(values)), key=values.__getitem__)


# ---------------------------------------------------------------- hints: idea, equation, checks

register_hints(
    "4.1",
    "Denoising score matching never needs the data's score: it regresses the model onto the "
    "score of the noise you added yourself, which you know in closed form.",
    "The kernel N(x~; x, sigma^2 I) has the score -(x~ - x) / sigma^2 at x~; write x~ - x in "
    "terms of the noise. The loss of one example is half the squared distance between the "
    "model's output at x~ and that target.",
    "Checks to run: with a model that always returns zeros, each example's loss is "
    "|z|^2 / (2 sigma^2), about D / (2 sigma^2) on average; two calls with generators seeded "
    "alike agree; and a batch of N points gives N numbers, not one.",
)
register_hints(
    "4.2",
    "Tweedie's formula moves the noisy point along the score of the noisy density. For the "
    "spread: the posterior mean is a function of x~; differentiate it with respect to x~.",
    "Write E[x | x~] as the integral of x p(x) q(x~ | x) divided by p_sigma(x~), and "
    "differentiate under the integral: the Gaussian kernel brings down (x - x~) / sigma^2, and"
    " 1 / p_sigma(x~) brings down the score. Which covariance is left? The trace of the "
    "score's Jacobian takes one autograd call per coordinate.",
    "Check it where you know the answer: for data N(mu, tau^2 I) the posterior variance is "
    "sigma^2 tau^2 / (tau^2 + sigma^2) at every point, below sigma^2. For exceeds_noise: the "
    "second term has the sign of the curvature of log p_sigma; where can that curve up?",
)
register_hints(
    "4.3",
    "DSM's minimiser is the score of the perturbed density p_sigma, the law of the noisy "
    "points. Which law is that for Gaussian data?",
    "Independent Gaussians add their means and their variances (not their standard "
    "deviations). The score of a Gaussian is linear in the point: zero at its mean, with slope"
    " minus one over its variance. For shrink_factors: put your s* and the clean score in turn"
    " into x~ + sigma^2 s(x~) and collect the multiple of x~ - mu.",
    "Check your formula in its two limits: as sigma -> 0 it must become the score of the clean"
    " data; for sigma much larger than tau, nearly the score of the noise alone, as if the "
    "data sat at its mean. For the factors: both tend to 1 as sigma -> 0. k_perturbed belongs "
    "to a posterior mean, so it must stay between 0 and 1 for every sigma; k_clean comes from "
    "the wrong score and need not: what does it do once sigma > tau?",
)
register_hints(
    "4.4",
    "Compare the learned slope with the optimum of Exercise 4.3: by what factor is it off, at "
    "each of the two noise levels? Write the learned slope for data of any variance, then ask "
    "when it takes the same value twice.",
    "The regression target must be the score of the noise kernel N(x_noisy; x, sigma^2 I), "
    "taken at x_noisy: differentiate its log-density with respect to x_noisy.",
    "Only one line changes: the target. Count the powers of sigma: the difference of the clean "
    "and the noisy point is of order sigma, the kernel's score of order 1 / sigma. So the "
    "regression learns sigma times Exercise 4.3's score; setting that slope equal at two "
    "levels gives a quadratic with sigma as one root: what do its roots multiply to?",
)
register_hints(
    "4.5",
    "With finitely many points, DSM's best possible answer is the score of the data smoothed by "
    "the noise: a kernel density estimate with one Gaussian bump per training point.",
    "Which mixture is that kernel density: how many components, with which weights, means and "
    "variances? Build it with the course's GaussianMixture, then ask which score you compare "
    "it with, on which points (the training points flatter it), and with which divergence.",
    "Check your curve before you read off its minimum: over the check's grid (sigma from 0.03 "
    "to 3) it falls, then rises. A curve that only falls or only rises, or a minimum at an end "
    "of the grid, points at a mistake in the divergence, not at the grid.",
)
