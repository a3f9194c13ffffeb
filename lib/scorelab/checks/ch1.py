"""Checks for the exercises of chapter 1: the Gaussian-mixture score by hand, and by autograd."""

from __future__ import annotations

import torch

from scorelab.checks._core import (
    Mismatch,
    call_student,
    diagnose,
    exercise,
    expect_finite,
    expect_tensor,
)


def _mixtures():
    """Two test mixtures: equal variances (so a missing 1/sigma^2 is a constant factor), and unequal."""
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
    return {"equal": equal, "unequal": unequal}


def _points(generator_seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(generator_seed)
    return 3.0 * torch.randn(64, 2, generator=generator)  # (64, 2) around the modes


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
    return {
        "the responsibilities ignore the mixture weights pi_k: r_k(x) is proportional to "
        "pi_k N(x; mu_k, sigma_k^2 I), not to N(x; mu_k, sigma_k^2 I) alone.": (
            resp_unweighted * scores
        ).sum(1),
        "you weighted each component's score by its mixture weight pi_k; weight it by the "
        "responsibility r_k(x) = pi_k N_k(x) / sum_j pi_j N_j(x), which depends on x.": (
            weights[None, :, None] * scores
        ).sum(1),
        "you forgot to divide by the variance: the score of N(mu_k, sigma_k^2 I) is "
        "-(x - mu_k) / sigma_k^2.": (resp * -diff).sum(1),
        "you divided by the standard deviation sigma_k; the score of N(mu_k, sigma_k^2 I) divides "
        "by the variance sigma_k^2.": (resp * -diff / variances.sqrt()[None, :, None]).sum(1),
        "this is the gradient of the density p(x), not of log p(x): divide it by p(x).": density
        * (resp * scores).sum(1),
    }


def _reference(x, weights, means, variances) -> torch.Tensor:
    from scorelab.densities import GaussianMixture

    return GaussianMixture(weights, means, variances).score(x)


@exercise(
    "1.1", "your gmm_score matches the closed-form score, near the modes and far in the tails."
)
def exercise_1_1(gmm_score) -> None:
    """Check ``gmm_score(x (N, D), weights (K,), means (K, D), variances (K,)) -> (N, D)``."""
    x = _points()
    for name, (weights, means, variances) in _mixtures().items():
        got = call_student(gmm_score, x.clone(), weights, means, variances, what="gmm_score")
        got = expect_tensor(got, what="gmm_score(x, ...)", shape=tuple(x.shape))
        expect_finite(got, what="gmm_score(x, ...)", where=" near the modes")
        factors = {"sigma^2": 2.0} if name == "equal" else None
        diagnose(
            got,
            _reference(x, weights, means, variances),
            what="gmm_score",
            mutants=_mutants(x, weights, means, variances),
            factors=factors,
        )
    weights, means, variances = _mixtures()["unequal"]
    far = call_student(gmm_score, FAR_POINTS.clone(), weights, means, variances, what="gmm_score")
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
    return {
        "a Gaussian mixture": GaussianMixture(weights, means, variances),
        "the banana": Banana(),
    }


@exercise(
    "1.2", "your autograd_score agrees with the closed-form scores of the mixture and the banana."
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
        diagnose(got, density.score(x), what=f"autograd_score on {name}")
