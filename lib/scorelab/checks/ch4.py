"""Checks for the exercises of chapter 4: the denoising score-matching loss, and Tweedie's denoiser."""

from __future__ import annotations

import torch

from scorelab.checks._core import (
    Mismatch,
    call_student,
    diagnose,
    exercise,
    expect_finite,
    expect_tensor,
    is_close,
)

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
    }


@exercise(
    "4.1",
    "your dsm_loss is 1/2 || s(x + sigma z) + z / sigma ||^2 per example, and gradients flow.",
)
def exercise_4_1(dsm_loss) -> None:
    """Check ``dsm_loss(model, x (N, D), sigma, generator) -> (N,)``."""
    from scorelab.training import dsm_loss as reference_loss

    model, x = _linear_model(), _data()
    got = call_student(
        dsm_loss, model, x, SIGMA, generator=torch.Generator().manual_seed(SEED), what="dsm_loss"
    )
    if isinstance(got, float):
        raise Mismatch(
            "dsm_loss returned a Python float (did you call .item()?): return a tensor, so that "
            "loss.backward() can train the model."
        )
    got = expect_tensor(got, what="dsm_loss(model, x, sigma)", shape=(x.shape[0],))
    if got.grad_fn is None:
        raise Mismatch(
            "the loss carries no gradient (computed under torch.no_grad(), or detached): the "
            "model could not be trained with it."
        )
    expect_finite(got, what="dsm_loss(model, x, sigma)")
    expected = reference_loss(model, x, SIGMA, generator=torch.Generator().manual_seed(SEED))
    if is_close(got, expected):
        return
    again = call_student(
        dsm_loss, model, x, SIGMA, generator=torch.Generator().manual_seed(SEED), what="dsm_loss"
    )
    if not torch.equal(again, got):
        raise Mismatch(
            "two calls with identically seeded generators gave different losses: draw the "
            "noise from the generator, z = torch.randn(x.shape, generator=generator)."
        )
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
            "2 (the 1/2 in front)": 2.0,
            "D, the dimension (sum the squares over the dimensions, do not average them)": float(
                x.shape[1]
            ),
        },
    )


@exercise(
    "4.2",
    "your denoise is Tweedie's formula x~ + sigma^2 * s(x~): the posterior mean of the clean x.",
)
def exercise_4_2(denoise) -> None:
    """Check ``denoise(x_noisy (N, D), score_fn, sigma) -> (N, D)``."""
    from scorelab.densities import GaussianMixture

    sigma = 0.7
    mixture = GaussianMixture(
        torch.tensor([0.4, 0.6]), torch.tensor([[-2.0, 0.0], [2.0, 1.0]]), torch.tensor([0.3, 0.5])
    )
    perturbed = mixture.perturbed(sigma)
    x_noisy = perturbed.sample(300, generator=torch.Generator().manual_seed(2))  # (N, 2)
    got = call_student(denoise, x_noisy.clone(), perturbed.score, sigma, what="denoise")
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
    }
    diagnose(got, x_noisy + sigma**2 * score, what="denoise", mutants=mutants)
