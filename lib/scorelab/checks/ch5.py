"""Checks for the exercises of chapter 5: the sliced score-matching losses, SSM and SSM-VR."""

from __future__ import annotations

import math

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

SEED = 17
N_PROJECTIONS = 3  # 3 projections: averaging vs summing them is a factor 3, distinct from 2 and 1/2
DIM = 3


def _model() -> torch.nn.Module:
    """A small softplus network with fixed weights (the student's global RNG is left untouched)."""
    from scorelab.nets import BasicNetwork

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return BasicNetwork(input_dim=DIM, hidden_dims=(16, 16))


def _data(n: int = 64) -> torch.Tensor:
    return torch.randn(n, DIM, generator=torch.Generator().manual_seed(8))  # (N, D)


def _terms(model, x: torch.Tensor, v: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-projection terms (M, N) for directions v (M, N, D): v^T J v, 1/2 (v^T s)^2, 1/2 ||s||^2."""
    copies = (
        x.detach().unsqueeze(0).expand_as(v).reshape(-1, DIM).clone().requires_grad_(True)
    )  # (M N, D)
    flat_v = v.reshape(copies.shape)
    score = model(copies)
    jacobian_v = torch.autograd.grad((score * flat_v).sum(), copies)[0]
    shape = v.shape[:2]
    return {
        "trace": (jacobian_v * flat_v).sum(dim=1).reshape(shape).detach(),
        "projected": (0.5 * (score * flat_v).sum(dim=1) ** 2).reshape(shape).detach(),
        "norm": (0.5 * (score**2).sum(dim=1)).reshape(shape).detach(),
    }


def _mutants(model, x: torch.Tensor, variance_reduction: bool) -> dict[str, torch.Tensor]:
    v = torch.randn((N_PROJECTIONS, *x.shape), generator=torch.Generator().manual_seed(SEED))
    t = _terms(model, x, v)
    norm, other = (t["norm"], t["projected"]) if variance_reduction else (t["projected"], t["norm"])
    this = "1/2 ||s||^2 (SSM-VR)" if variance_reduction else "1/2 (v^T s)^2 (SSM)"
    that = (
        "1/2 (v^T s)^2, the plain SSM term"
        if variance_reduction
        else "1/2 ||s||^2, the SSM-VR term"
    )
    return {
        f"the second term is {that}; this exercise asks for {this}.": (t["trace"] + other).mean(0),
        "the trace term has the wrong sign: the loss is + v^T (ds/dx) v plus the norm term.": (
            -t["trace"] + norm
        ).mean(0),
        "the norm term lacks its 1/2.": (t["trace"] + 2 * norm).mean(0),
        "the trace term v^T (ds/dx) v is missing.": norm.mean(0),
        "the norm term is missing: add " + this + ".": t["trace"].mean(0),
    }


def _parameter_gradients(model, loss: torch.Tensor) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss.sum(), list(model.parameters()), allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(model.parameters(), grads)]


def _statistical_check(fn, variance_reduction: bool, name: str) -> None:
    """With directions drawn some other way, the loss must still match exact score matching in mean.

    On a linear score s(x) = W x + b the Jacobian is W, so the expectation over v of both
    losses is tr(W) + 1/2 ||s(x)||^2 per example; the tolerance is 5 standard errors of the
    mean over the projections, computed from the same closed form.
    """
    from scorelab.training import exact_score_matching_loss

    with torch.random.fork_rng():
        torch.manual_seed(1)
        linear = torch.nn.Linear(DIM, DIM)
    x, m = _data(8), 4000
    got = call_student(
        fn, linear, x, n_projections=m, generator=torch.Generator().manual_seed(SEED + 1), what=name
    )
    got = expect_tensor(
        got, what=f"{name}(model, x, n_projections={m})", shape=(x.shape[0],)
    ).detach()
    exact = exact_score_matching_loss(linear, x).detach()
    v = torch.randn((m, *x.shape), generator=torch.Generator().manual_seed(99))
    t = _terms(linear, x, v)
    per_projection = t["trace"] + (t["norm"] if variance_reduction else t["projected"])  # (M, N)
    tolerance = 5 * per_projection.std(dim=0) / math.sqrt(m) + 1e-4
    if ((got - exact).abs() > tolerance).any():
        i = int(torch.argmax((got - exact).abs() / tolerance))
        raise Mismatch(
            f"with {m} projections your loss should approach exact score matching, "
            f"tr(ds/dx) + 1/2 ||s||^2, but for example {i} it gives {got[i].item():.4f} instead "
            f"of {exact[i].item():.4f} (+- {tolerance[i].item():.4f})."
        )


def _check_sliced(fn, *, variance_reduction: bool, name: str) -> None:
    from scorelab.training import sliced_score_matching_loss

    model, x = _model(), _data()
    got = call_student(
        fn,
        model,
        x,
        n_projections=N_PROJECTIONS,
        generator=torch.Generator().manual_seed(SEED),
        what=name,
    )
    if isinstance(got, float):
        raise Mismatch(
            f"{name} returned a Python float (did you call .item()?): return a tensor, so that "
            "loss.backward() can train the model."
        )
    got = expect_tensor(got, what=f"{name}(model, x)", shape=(x.shape[0],))
    if got.grad_fn is None:
        raise Mismatch(
            "the loss carries no gradient (computed under torch.no_grad(), or detached)."
        )
    expect_finite(got, what=f"{name}(model, x)")
    expected = sliced_score_matching_loss(
        model,
        x,
        n_projections=N_PROJECTIONS,
        variance_reduction=variance_reduction,
        generator=torch.Generator().manual_seed(SEED),
    )
    if is_close(got, expected):
        for mine, reference in zip(
            _parameter_gradients(model, got), _parameter_gradients(model, expected)
        ):
            if not is_close(mine, reference, rtol=1e-3, atol=1e-5):
                raise Mismatch(
                    "the values are right but the gradients are not: the trace term must stay "
                    "differentiable, so pass create_graph=True to torch.autograd.grad."
                )
        return
    again = call_student(
        fn,
        model,
        x,
        n_projections=N_PROJECTIONS,
        generator=torch.Generator().manual_seed(SEED),
        what=name,
    )
    if not torch.equal(again, got):
        raise Mismatch(
            "two calls with identically seeded generators gave different losses: draw the "
            "directions from the generator, v = torch.randn((n_projections, *x.shape), generator=generator)."
        )
    mutants = _mutants(model, x, variance_reduction)
    try:
        diagnose(
            got.detach(),
            expected.detach(),
            what=name,
            mutants=mutants,
            factors={
                "M, the number of projections (average over them, do not sum)": float(N_PROJECTIONS)
            },
        )
    except Mismatch as mismatch:
        if "differs from the reference" not in str(mismatch):
            raise
    # Not a known mistake: maybe right, with directions drawn in another order.
    _statistical_check(fn, variance_reduction, name)


@exercise(
    "5.1",
    "your ssm_loss is mean_v [ v^T (ds/dx) v + 1/2 (v^T s)^2 ], with gradients through the trace.",
)
def exercise_5_1(ssm_loss) -> None:
    """Check ``ssm_loss(model, x (N, D), n_projections, generator) -> (N,)`` (SSM, Eq. 7)."""
    _check_sliced(ssm_loss, variance_reduction=False, name="ssm_loss")


@exercise(
    "5.2",
    "your ssm_vr_loss is mean_v [ v^T (ds/dx) v ] + 1/2 ||s||^2, with gradients through the trace.",
)
def exercise_5_2(ssm_vr_loss) -> None:
    """Check ``ssm_vr_loss(model, x (N, D), n_projections, generator) -> (N,)`` (SSM-VR, Eq. 8)."""
    _check_sliced(ssm_vr_loss, variance_reduction=True, name="ssm_vr_loss")
