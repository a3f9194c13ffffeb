"""Checks for the exercises of chapter 6: ConditionalInstanceNorm2dPlus.forward, the annealed DSM loss."""

from __future__ import annotations

import torch
from torch import nn

from scorelab.checks._core import (
    Mismatch,
    call_student,
    diagnose,
    exercise,
    expect_finite,
    expect_tensor,
    is_close,
)

SEED = 21


def _reference_norm(bias: bool):
    """A ConditionalInstanceNorm2dPlus with random (not initial) parameters, 4 channels, 3 levels."""
    from scorelab.ncsn import ConditionalInstanceNorm2dPlus

    with torch.random.fork_rng():
        torch.manual_seed(3)
        norm = ConditionalInstanceNorm2dPlus(4, 3, bias=bias)
        with torch.no_grad():
            norm.embed.weight.normal_(0.0, 1.0)
    return norm


def _images() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(4)
    x = 2.0 * torch.randn(5, 4, 6, 6, generator=generator) + torch.randn(
        5, 4, 1, 1, generator=generator
    )
    return x, torch.tensor([0, 2, 1, 2, 0])  # (N, C, H, W), (N,)


def _norm_mutants(norm, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Outputs of the usual mistakes, from the same parameters."""
    c, eps = norm.num_features, norm.eps
    params = norm.embed(labels).detach()
    gamma, alpha = params[:, :c, None, None], params[:, c : 2 * c, None, None]  # (N, C, 1, 1)
    beta = params[:, 2 * c :, None, None] if norm.bias else 0.0
    means = x.mean(dim=(2, 3))  # (N, C)

    def corrected(unbiased=True):
        spread = means.var(dim=1, keepdim=True, unbiased=unbiased)
        return ((means - means.mean(dim=1, keepdim=True)) / torch.sqrt(spread + eps))[
            ..., None, None
        ]

    def normalised(unbiased=False, dims=(2, 3)):
        return (x - x.mean(dim=dims, keepdim=True)) / torch.sqrt(
            x.var(dim=dims, unbiased=unbiased, keepdim=True) + eps
        )

    h, m = normalised(), corrected()
    mutants = {
        "the mean correction alpha * (mu_k - m) / sqrt(v + eps) is missing: without it the network "
        "cannot see the channel means that instance norm removes.": gamma * h + beta,
        "you added the correction after scaling by gamma; this class adds it before: "
        "gamma * (h + alpha * correction) + beta.": gamma * h + alpha * m + beta,
        "the spread v of the channel means uses the biased variance; use means.var(dim=1) (unbiased), "
        "as the authors' code does.": gamma * (h + alpha * corrected(unbiased=False)) + beta,
        "the per-channel spatial variance should be the biased one, x.var(dim=(2, 3), unbiased=False).": gamma
        * (normalised(unbiased=True) + alpha * m)
        + beta,
        "gamma and alpha are swapped: the embedding row holds gamma (first C entries), then alpha "
        "(next C), then beta.": alpha * (h + gamma * m) + beta,
        "you normalised over channels and pixels together (layer norm); instance norm normalises each "
        "channel of each example over its pixels, dims (2, 3).": gamma
        * (normalised(dims=(1, 2, 3)) + alpha * m)
        + beta,
    }
    if norm.bias:
        mutants["the shift beta is missing: add params[:, 2C:] when self.bias is true."] = gamma * (
            h + alpha * m
        )
    return mutants


@exercise("6.1", "your forward reproduces ConditionalInstanceNorm2dPlus, with and without bias.")
def exercise_6_1(norm_class) -> None:
    """Check a subclass of ConditionalInstanceNorm2dPlus whose ``forward(x, labels)`` the student wrote."""
    if not (isinstance(norm_class, type) and issubclass(norm_class, nn.Module)):
        raise Mismatch(
            f"pass your class itself (got a {type(norm_class).__name__}), e.g. "
            "checks.exercise_6_1(MyConditionalInstanceNorm2dPlus)."
        )
    x, labels = _images()
    for bias in (True, False):
        reference = _reference_norm(bias)
        mine = norm_class(4, 3, bias=bias)
        mine.load_state_dict(reference.state_dict())
        what = f"forward(x, labels) with bias={bias}"
        got = expect_tensor(
            call_student(mine, x.clone(), labels, what="forward"), what=what, shape=tuple(x.shape)
        )
        expect_finite(got, what=what)
        with torch.no_grad():
            expected, mutants = reference(x, labels), _norm_mutants(reference, x, labels)
        diagnose(got.detach(), expected, what=what, mutants=mutants)
        if got.grad_fn is None:
            raise Mismatch(
                "the output carries no gradient: the embedding's parameters could not be trained."
            )


class _ToyConditionalModel(nn.Module):
    """A noise-conditional 'score model' of any rank: s(x, i) = -(x - mu) * scale[i] (one parameter)."""

    def __init__(self, n_levels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 3.0, n_levels))
        self.mu = 0.3

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return -(x - self.mu) * self.scale[labels].reshape(-1, *([1] * (x.ndim - 1)))


def _loss_mutants(model, x, sigmas, labels) -> dict[str, torch.Tensor]:
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(SEED))
    sigma = sigmas[labels].reshape(-1, *([1] * (x.ndim - 1)))  # (N, 1, ..., 1)

    def loss(weight, target, at):
        return (0.5 * weight * (model(at, labels) - target) ** 2).reshape(x.shape[0], -1).sum(dim=1)

    noisy = x + sigma * z
    first = sigmas[0]
    return {
        "there is no lambda(sigma) = sigma^2 weighting: without it the small-sigma levels, whose targets "
        "-z / sigma are large, dominate the loss.": loss(1.0, -z / sigma, noisy),
        "the weighting is sigma; Song & Ermon choose lambda(sigma) = sigma^2, which makes "
        "lambda(sigma) ||target||^2 of order 1 at every level.": loss(sigma, -z / sigma, noisy),
        "the weighting is 1 / sigma^2; it should be sigma^2.": loss(
            1 / sigma**2, -z / sigma, noisy
        ),
        "the target has the wrong sign: regress onto -z / sigma.": loss(sigma**2, z / sigma, noisy),
        "the model is evaluated at the clean x; evaluate it at x + sigma_i z.": loss(
            sigma**2, -z / sigma, x
        ),
        "every example uses sigmas[0]; use each example's own level, sigmas[labels].": loss(
            first**2, -z / first, x + first * z
        ),
    }


@exercise(
    "6.2",
    "your annealed_dsm_loss weights each level by sigma^2 and works on points and images alike.",
)
def exercise_6_2(annealed_dsm_loss) -> None:
    """Check ``annealed_dsm_loss(model, x (N, *D), sigmas (L,), labels (N,), generator) -> (N,)``."""
    from scorelab.training import annealed_dsm_loss as reference_loss

    sigmas = torch.tensor([4.0, 1.5, 0.6, 0.2])
    labels = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0, 2, 1])
    model = _ToyConditionalModel(len(sigmas))
    points = torch.randn(10, 2, generator=torch.Generator().manual_seed(1))  # (N, 2)
    images = torch.rand(10, 1, 4, 4, generator=torch.Generator().manual_seed(2))  # (N, 1, 4, 4)
    for x, kind in ((points, "2-D points"), (images, "images (N, 1, 4, 4)")):
        what = f"annealed_dsm_loss on {kind}"
        try:
            got = call_student(
                annealed_dsm_loss,
                model,
                x,
                sigmas,
                labels,
                generator=torch.Generator().manual_seed(SEED),
                what="annealed_dsm_loss",
            )
        except (RuntimeError, IndexError) as error:
            if x is points:
                raise
            raise Mismatch(
                f"right on 2-D points, but on images it raised {type(error).__name__} "
                f"({str(error).splitlines()[0]}). Reshape the per-example sigma to (N, 1, ..., 1), "
                "e.g. sigma.reshape(-1, *[1] * (x.ndim - 1)), and sum over every dimension "
                "but the first, so one loss serves points and images."
            ) from None
        if isinstance(got, float):
            raise Mismatch(
                "the loss is a Python float (did you call .item()?): return a tensor of shape (N,)."
            )
        got = expect_tensor(got, what=what, shape=(x.shape[0],))
        if got.grad_fn is None:
            raise Mismatch(
                "the loss carries no gradient (computed under torch.no_grad(), or detached)."
            )
        expect_finite(got, what=what)
        expected = reference_loss(
            model, x, sigmas, labels=labels, generator=torch.Generator().manual_seed(SEED)
        )
        if is_close(got, expected):
            continue
        again = call_student(
            annealed_dsm_loss,
            model,
            x,
            sigmas,
            labels,
            generator=torch.Generator().manual_seed(SEED),
            what="annealed_dsm_loss",
        )
        if not torch.equal(again, got):
            raise Mismatch(
                "two calls with identically seeded generators gave different losses: draw the "
                "noise from the generator, z = torch.randn(x.shape, generator=generator)."
            )
        with torch.no_grad():
            mutants = _loss_mutants(model, x, sigmas, labels)
        diagnose(
            got.detach(),
            expected.detach(),
            what=what,
            mutants=mutants,
            factors={"2 (the 1/2 in front)": 2.0},
        )
