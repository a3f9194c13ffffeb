"""Checks for the exercises of chapter 5: the sliced score-matching losses, SSM and SSM-VR; the
score-matching objective of a Gaussian model by integration by parts (derive); directions on
the unit sphere without the sqrt(D) factor (debug); the spread of the trace estimator with
Gaussian and with sphere directions (investigate)."""

from __future__ import annotations

import math

import torch

from scorelab.checks._core import (Mismatch, call_student, cases, diagnose, exercise,
                                   expect_derived, expect_loss, expect_same_draws, expect_tensor,
                                   expect_untouched, global_rng_untouched, is_close,
                                   package_refused,
                                   register_hints, to_float)
from scorelab.checks._formulas import check_formula, points_with_special

SEED = 17
N_PROJECTIONS = 3  # averaging vs summing them is a factor 3, distinct from 2, 1/2 and DIM
DIM = 5


def _model() -> torch.nn.Module:
    """A small softplus network with fixed weights (the student's global RNG is left untouched)."""
    from scorelab.nets import BasicNetwork

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return BasicNetwork(input_dim=DIM, hidden_dims=(16, 16))


def _data(n: int = 64) -> torch.Tensor:
    return torch.randn(n, DIM, generator=torch.Generator().manual_seed(8))  # (N, D)


def _terms(model, x: torch.Tensor, v: torch.Tensor, *,
           graph: bool = False) -> dict[str, torch.Tensor]:
    """Per-projection terms (M, N) for directions v (M, N, D): v^T J v, 1/2 (v^T s)^2, 1/2 ||s||^2
    (detached, or with ``graph`` differentiable in the model's parameters)."""
    copies = (
        x.detach().unsqueeze(0).expand_as(v).reshape(-1, DIM).clone().requires_grad_(True)
    )  # (M N, D)
    flat_v = v.reshape(copies.shape)
    score = model(copies)
    jacobian_v = torch.autograd.grad((score * flat_v).sum(), copies, create_graph=graph)[0]
    shape = v.shape[:2]
    terms = {
        "trace": (jacobian_v * flat_v).sum(dim=1).reshape(shape),
        "projected": (0.5 * (score * flat_v).sum(dim=1) ** 2).reshape(shape),
        "norm": (0.5 * (score**2).sum(dim=1)).reshape(shape),
    }
    return terms if graph else {name: term.detach() for name, term in terms.items()}


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
    # one copy of x for all the projections: autograd.grad adds up the (ds/dx)^T v_m, so the
    # trace term becomes u^T (ds/dx) u / M with u the sum of the directions
    shared_copy = _terms(model, x, v.sum(0, keepdim=True))["trace"][0] / N_PROJECTIONS
    return {
        f"the second term is {that}; this exercise asks for {this}.": (t["trace"] + other).mean(0),
        "the trace term has the wrong sign: the loss is + v^T (ds/dx) v plus the norm term.": (
            -t["trace"] + norm
        ).mean(0),
        "the norm term lacks its 1/2.": (t["trace"] + 2 * norm).mean(0),
        "the trace term v^T (ds/dx) v is missing.": norm.mean(0),
        "the norm term is missing: add " + this + ".": t["trace"].mean(0),
        "all the projections share one copy of x, so torch.autograd.grad adds up their "
        "products (ds/dx)^T v before you take the dot product with each v: the trace term picks "
        "up cross terms between different directions. Give every direction its own copy of the "
        "batch (the HINT in the cell).": shared_copy + norm.mean(0),
    }


_NO_TRACE_GRADIENT = (
    "the trace term carries no gradient: pass create_graph=True to torch.autograd.grad, so "
    "that v^T (ds/dx) v stays differentiable in the model's parameters (without it, training "
    "with this loss ignores the trace term, or loss.backward() fails)."
)
_NO_SECOND_TERM_GRADIENT = (
    "the second term carries no gradient (is it detached?): both terms must stay "
    "differentiable in the model's parameters."
)


def _parameter_gradients(model, loss: torch.Tensor) -> list[torch.Tensor]:
    """d loss.sum() / d parameters; a graph freed by torch.autograd.grad without
    create_graph=True (so without retain_graph either) is a Mismatch that says so."""
    try:
        grads = torch.autograd.grad(loss.sum(), list(model.parameters()), allow_unused=True,
                                    retain_graph=True)
    except RuntimeError as error:
        if "backward through the graph a second time" in str(error):
            raise Mismatch(_NO_TRACE_GRADIENT) from None
        raise
    return [torch.zeros_like(p) if g is None else g for p, g in zip(model.parameters(), grads)]


def _flat_gradient(model, loss: torch.Tensor) -> torch.Tensor:
    return torch.cat([g.flatten() for g in _parameter_gradients(model, loss)]).double()


def _statistical_check(fn, variance_reduction: bool, name: str) -> None:
    """A loss whose directions are drawn some other way (another order, dtype or distribution)
    is right when it is exact score matching on average, random with about the spread of
    Gaussian directions, one set of directions per example, and its parameter gradients
    approach those of exact score matching as the projections grow."""
    _check_mean(fn, variance_reduction, name)
    _check_randomness(fn, variance_reduction, name)
    _check_mean_gradient(fn, name)


def _check_mean(fn, variance_reduction: bool, name: str) -> None:
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
        _expect_n_projections_used(fn, linear, x, name)
        i = int(torch.argmax((got - exact).abs() / tolerance))
        raise Mismatch(
            f"with {m} projections your loss should approach exact score matching, "
            f"tr(ds/dx) + 1/2 ||s||^2, but for example {i} it gives {got[i].item():.4f} instead "
            f"of {exact[i].item():.4f} (+- {tolerance[i].item():.4f})."
        )


def _expect_n_projections_used(fn, model, x: torch.Tensor, name: str) -> None:
    """Mismatch if the loss is the same for one and for two projections from one seed."""
    one, two = (_run_own_loss(fn, model, x, name=name, n_projections=m, seed=SEED + 5)
                for m in (1, 2))
    if torch.equal(torch.as_tensor(one).detach(), torch.as_tensor(two).detach()):
        raise Mismatch(
            f"your {name} gives exactly the same values for n_projections = 1 and 2 from the "
            "same seed: it ignores n_projections. Draw n_projections directions per example, "
            "(n_projections, *x.shape), and average the terms over them."
        )


def _check_randomness(fn, variance_reduction: bool, name: str, copies: int = 256) -> None:
    """With one projection, on a batch of copies of four points: differently seeded generators
    give different values (the exact loss is not random), copies of one point differ (each
    example has its own directions), and they spread about as much as with Gaussian
    directions (a factor 2 either way: Rademacher and sqrt(D)-sphere directions spread
    10-20 % less on this network)."""
    model, points = _model(), _data(4)
    x = points.repeat_interleave(copies, dim=0)  # (4 copies, D)

    def draw(seed: int) -> torch.Tensor:
        got = call_student(
            fn, model, x, n_projections=1, generator=torch.Generator().manual_seed(seed),
            what=name,
        )
        got = expect_tensor(got, what=f"{name}(model, x, n_projections=1)", shape=(x.shape[0],))
        return got.detach().double().reshape(len(points), copies)

    first, second = draw(SEED + 2), draw(SEED + 3)
    if torch.equal(first, second):
        raise Mismatch(
            "your loss does not depend on the random directions: with one projection, "
            "differently seeded generators give exactly the same values. Sliced score matching "
            "estimates the trace by random projections v^T (ds/dx) v, one backward pass per "
            "direction; computing the exact trace (as exact_score_matching_loss does) is what "
            "it avoids."
        )
    spread = first.std(dim=1)  # (4,) over the copies of each point
    if (spread <= 1e-5 * (1 + first.abs().mean(dim=1))).all():
        raise Mismatch(
            "copies of one example all get the same loss: your directions are shared by the "
            "whole batch. Every example needs its own random directions: n_projections of them "
            "per example, drawn with the shape (n_projections, *x.shape)."
        )
    v = torch.randn((4000, *points.shape), generator=torch.Generator().manual_seed(98))
    t = _terms(model, points, v)
    reference = (t["trace"] + (t["norm"] if variance_reduction else t["projected"])).double()
    expected = reference.std(dim=0)  # (4,)
    ratio = math.sqrt(float((spread**2).mean() / (expected**2).mean()))
    if not 0.5 <= ratio <= 2.0:
        raise Mismatch(
            "with one projection the loss of an example should vary from one draw of the "
            f"directions to the next by about {float(expected.mean()):.3f} (its standard "
            f"deviation with Gaussian directions), but yours varies by {float(spread.mean()):.3f}"
            ": use exactly n_projections random directions per example, each with "
            "E[v v^T] = I."
        )


def _check_mean_gradient(fn, name: str, m: int = 500, tolerance: float = 0.3) -> None:
    """With m projections, the parameter gradients of the batch loss must approach those of
    exact score matching, on the nonlinear model. The distance is measured in units of the
    trace term's own gradient; sampling noise is below 0.07 of it for Gaussian, Rademacher and
    sphere directions, and a trace term without gradient is 1 away."""
    from scorelab.training import exact_score_matching_loss

    model, x = _model(), _data()
    got = call_student(
        fn, model, x, n_projections=m, generator=torch.Generator().manual_seed(SEED + 4),
        what=name,
    )
    got = expect_tensor(got, what=f"{name}(model, x, n_projections={m})", shape=(x.shape[0],))
    mine = _flat_gradient(model, got)
    exact = _flat_gradient(model, exact_score_matching_loss(model, x))
    norm_only = _flat_gradient(model, 0.5 * (model(x) ** 2).sum(dim=1))
    unit = float((exact - norm_only).norm())

    def off(target: torch.Tensor) -> float:
        return float((mine - target).norm()) / unit

    if off(exact) <= tolerance:
        return
    if off(norm_only) <= tolerance:
        raise Mismatch(_NO_TRACE_GRADIENT)
    if off(exact - norm_only) <= tolerance:
        raise Mismatch(_NO_SECOND_TERM_GRADIENT)
    raise Mismatch(
        f"the values are right on average, but with {m} projections the gradient of your loss "
        "with respect to the model's parameters should approach that of exact score matching, "
        f"and it is {off(exact):.2f} times the trace term's gradient away from it: every term "
        "must be differentiable in the parameters, and computed from the model's own output."
    )


def _run_own_loss(fn, model, x, *, name: str, n_projections: int = N_PROJECTIONS,
                  seed: int = SEED):
    """The student's loss on a copy of x, refused when it hands the work to the package's
    losses or switches on requires_grad on the caller's x."""
    from scorelab.training import _sliced_loss, sliced_score_matching_loss

    given = x.clone()
    with package_refused(sliced_score_matching_loss, _sliced_loss, what=name), \
            global_rng_untouched(name):
        got = call_student(fn, model, given, n_projections=n_projections,
                           generator=torch.Generator().manual_seed(seed), what=name)
    expect_untouched(given, x, call=f"your {name}(model, x)")
    return got


def _check_sliced(fn, *, variance_reduction: bool, name: str) -> None:
    from scorelab.training import sliced_score_matching_loss

    model, x = _model(), _data()

    def run():
        return _run_own_loss(fn, model, x, name=name)

    got = expect_loss(run(), name=name, what=f"{name}(model, x)", n=x.shape[0])
    expected = sliced_score_matching_loss(
        model, x, n_projections=N_PROJECTIONS, variance_reduction=variance_reduction,
        generator=torch.Generator().manual_seed(SEED),
    )
    if is_close(got, expected):
        _check_gradients(model, x, got, expected, variance_reduction=variance_reduction)
        return
    expect_same_draws(
        run, got,
        draw="draw the directions from the generator, "
        "v = torch.randn((n_projections, *x.shape), generator=generator)",
    )
    try:
        diagnose(
            got.detach(),
            expected.detach(),
            what=name,
            mutants=_mutants(model, x, variance_reduction),
            factors={
                "M, the number of projections": (
                    float(N_PROJECTIONS), "average over the projections, do not sum them.",
                    "the projections are averaged twice?"),
                "D, the dimension": (
                    float(DIM), "", "sum over the dimensions (v^T s and ||s||^2 are sums), do "
                    "not average over them."),
            },
        )
    except Mismatch as mismatch:
        if "differs from the reference" not in str(mismatch):
            raise
    # Not a known mistake: maybe right, with directions drawn in another order.
    _statistical_check(fn, variance_reduction, name)


def _check_gradients(model, x, got: torch.Tensor, expected: torch.Tensor, *,
                     variance_reduction: bool, directions: torch.Tensor | None = None) -> None:
    """Mismatch unless the parameter gradients of the two losses agree; when they do not, say
    which of the two terms carries no gradient (``directions``: those of ``expected``, by
    default the Gaussian ones drawn from SEED)."""
    def agree(first, second):
        return all(is_close(a, b, rtol=1e-3, atol=1e-5) for a, b in zip(first, second))

    mine = _parameter_gradients(model, got)
    if agree(mine, _parameter_gradients(model, expected)):
        return
    v = directions
    if v is None:
        v = torch.randn((N_PROJECTIONS, *x.shape), generator=torch.Generator().manual_seed(SEED))
    terms = _terms(model, x, v, graph=True)
    second = terms["norm" if variance_reduction else "projected"]
    if agree(mine, _parameter_gradients(model, second.mean(0))):
        raise Mismatch("the values are right but " + _NO_TRACE_GRADIENT)
    if agree(mine, _parameter_gradients(model, terms["trace"].mean(0))):
        raise Mismatch("the values are right but " + _NO_SECOND_TERM_GRADIENT)
    raise Mismatch("the values are right but the gradients are not.")


@exercise(
    "5.1",
    "your ssm_loss is mean_v [ v^T (ds/dx) v + 1/2 (v^T s)^2 ], with gradients through the trace.",
)
def exercise_5_1(ssm_loss) -> None:
    """Check ``ssm_loss(model, x (N, D), n_projections, generator) -> (N,)`` (SSM)."""
    _check_sliced(ssm_loss, variance_reduction=False, name="ssm_loss")


@exercise(
    "5.2",
    "your ssm_vr_loss is mean_v [ v^T (ds/dx) v ] + 1/2 ||s||^2, with gradients through the "
    "trace; it is the less noisy one only where 1/2 ||s||^4 + 2 s^T A s > 0: for the exact "
    "score of N(0, tau^2 I), outside the radius 2 tau.",
)
def exercise_5_2(ssm_vr_loss, variance_gap, vr_loses_within) -> None:
    """Check ``ssm_vr_loss(model, x (N, D), n_projections, generator) -> (N,)`` (SSM-VR), then
    ``variance_gap(jacobian (D, D), score (D,)) -> float`` (Var[SSM] - Var[SSM-VR] for one
    Gaussian direction) and ``vr_loses_within(tau) -> float`` (2 tau)."""
    _check_sliced(ssm_vr_loss, variance_reduction=True, name="ssm_vr_loss")
    _expect_variance_gap(variance_gap)
    _expect_vr_radius(vr_loses_within)


def _expect_variance_gap(variance_gap) -> None:
    """Var[v^T A v + 1/2 (v^T s)^2] - Var[v^T A v] = 1/2 |s|^4 + 2 s^T A s for v ~ N(0, I)."""
    generator = torch.Generator().manual_seed(52)
    for dim in cases([2, 5], [3]):
        jacobian = torch.randn(dim, dim, generator=generator, dtype=torch.float64)  # not symmetric
        score = torch.randn(dim, generator=generator, dtype=torch.float64)
        call = f"variance_gap(jacobian ({dim}, {dim}), score ({dim},))"
        got = to_float(call_student(variance_gap, jacobian.clone(), score.clone(),
                                    what="variance_gap"), what=call)
        norm4, quadratic = score.dot(score).item() ** 2, score.dot(jacobian @ score).item()
        trace_term = jacobian.trace().item() * score.dot(score).item()
        expect_derived(
            got, 0.5 * norm4 + 2 * quadratic, call=call, wrong="is not Var[SSM] - Var[SSM-VR]",
            slips={
                0.5 * norm4: "the two random terms of SSM are correlated: VR removes their "
                             "covariance as well as the variance of 1/2 (v^T s)^2.",
                0.25 * norm4 + 2 * quadratic: "v^T s is N(0, |s|^2), and the square of a "
                                              "standard normal has variance 2 (E z^4 = 3).",
                0.5 * norm4 + 2 * trace_term: "the covariance of v^T A v with (v^T s)^2 "
                                              "involves s^T A s, not tr(A) |s|^2: expand "
                                              "E[v_i v_j v_k v_l] into its three pairings.",
                0.5 * norm4 + quadratic: "Var(a + b) = Var a + Var b + 2 Cov(a, b), and "
                                         "Cov(v^T A v, (v^T s)^2) = 2 s^T A s.",
                0.5 * norm4 - 2 * quadratic: "the sign of the covariance term: Var(a + b) adds "
                                             "+2 Cov(a, b).",
                norm4 + 4 * quadratic: "SSM's second term is 1/2 (v^T s)^2, with its 1/2.",
                -(0.5 * norm4 + 2 * quadratic): "the gap asked for is Var[SSM] minus "
                                                "Var[SSM-VR].",
            },
            measured=(0.05, "close, but not exact: is it a simulation? Derive it in closed "
                            "form from the moments of a Gaussian v."),
            otherwise="write SSM as a + b with a = v^T A v and b = 1/2 (v^T s)^2, and SSM-VR as "
                      "a + 1/2 |s|^2: the difference of the variances is Var b + 2 Cov(a, b).")


def _expect_vr_radius(vr_loses_within) -> None:
    """For the exact score of N(0, tau^2 I): the gap is negative where |x| < 2 tau."""
    for tau in cases([1.0, 0.3, 2.5], [7.0]):
        call = f"vr_loses_within({tau})"
        got = to_float(call_student(vr_loses_within, tau, what="vr_loses_within"), what=call)
        expect_derived(
            got, 2 * tau, call=call, wrong="is not the radius where SSM-VR becomes the noisier",
            slips={4 * tau**2: "that is the squared radius |x|^2; the question asks for |x|.",
                   2 * tau**2: "with A = -I / tau^2 and s = -x / tau^2 the gap is "
                               "(|x|^2 / tau^6) (|x|^2 / (2 tau^2) - 2): where is it negative?",
                   2.0: "that is the radius for tau = 1 only.",
                   tau: "at |x| = tau the gap is still negative: solve for where it changes "
                        "sign."},
            measured=(0.05, "close, but not exact: derive it from your variance_gap."),
            otherwise="put the exact score of N(0, tau^2 I), s = -x / tau^2 with Jacobian "
                      "-I / tau^2, into your variance_gap: where is it negative?")


# ---------------------------------------------------------------- 5.3 (derive): by parts


def _sm_objective(m, kappa, mu, tau):
    return -1 / kappa + (tau**2 + (mu - m) ** 2) / (2 * kappa**2)


_OBJECTIVE_POINTS = {
    "m": (-3.0, 3.0),
    "kappa": (0.1, 5.0, "log"),
    "mu": (-3.0, 3.0),
    "tau": (0.2, 3.0, "log"),
}


@exercise(
    "5.3",
    "J_SM(m, kappa) = -1/kappa + (tau^2 + (mu - m)^2) / (2 kappa^2): integration by parts "
    "turned the unknown data score into the model's own derivative, and J_SM is smallest at "
    "m = mu, kappa = tau^2: the data's own Gaussian.",
)
def exercise_5_3(sm_objective, sm_minimiser) -> None:
    """Check ``sm_objective(m, kappa, mu, tau) -> float`` at random parameter values, then
    ``sm_minimiser(mu, tau) -> (m, kappa)``, where it is smallest."""
    # models centred on the data too, so that "right only when m = mu" can be said
    check_formula(
        sm_objective,
        _sm_objective,
        points_with_special(
            cases([50], [51, 52]), _OBJECTIVE_POINTS, lambda p: {**p, "m": p["mu"]}
        ),
        what="sm_objective",
        regimes=[
            [
                ("when the model's mean m equals mu", lambda p: p["m"] == p["mu"]),
                ("when m differs from mu", lambda p: p["m"] != p["mu"]),
            ]
        ],
        mutants=[
            (
                "the trace term has the wrong sign: the model's score -(x - m) / kappa has the "
                "derivative -1/kappa.",
                lambda m, kappa, mu, tau: 1 / kappa + (tau**2 + (mu - m) ** 2) / (2 * kappa**2),
            ),
            (
                "you kept the constant 1/2 E[s_p(x)^2] = 1 / (2 tau^2): that is the Fisher "
                "divergence itself. Integration by parts leaves that term aside because it "
                "does not depend on the model; the objective J is the rest.",
                lambda m, kappa, mu, tau: _sm_objective(m, kappa, mu, tau) + 1 / (2 * tau**2),
            ),
            (
                "the 1/2 in front of E[s_theta(x)^2] is missing.",
                lambda m, kappa, mu, tau: -1 / kappa + (tau**2 + (mu - m) ** 2) / kappa**2,
            ),
            (
                "s_theta(x)^2 = (x - m)^2 / kappa^2: divide by the square of the variance.",
                lambda m, kappa, mu, tau: -1 / kappa + (tau**2 + (mu - m) ** 2) / (2 * kappa),
            ),
            (
                "E[(x - m)^2] under N(mu, tau^2) is tau^2 + (mu - m)^2: the variance plus the "
                "squared offset of the means, not their difference.",
                lambda m, kappa, mu, tau: -1 / kappa + (tau**2 - (mu - m) ** 2) / (2 * kappa**2),
            ),
            (
                "you read kappa as a standard deviation: the model N(m, kappa) has variance "
                "kappa, and its score is -(x - m) / kappa.",
                lambda m, kappa, mu, tau: -1 / kappa**2 + (tau**2 + (mu - m) ** 2)
                / (2 * kappa**4),
            ),
            (
                "the 1/2 belongs to the squared score only: J = E[s_theta'(x)] + 1/2 "
                "E[s_theta(x)^2], and the derivative term -1/kappa keeps its full weight.",
                lambda m, kappa, mu, tau: -1 / (2 * kappa) + (tau**2 + (mu - m) ** 2)
                / (2 * kappa**2),
            ),
            (
                "you used tau where the variance tau^2 belongs: E[(x - m)^2] under N(mu, tau^2) "
                "is tau^2 + (mu - m)^2.",
                lambda m, kappa, mu, tau: -1 / kappa + (tau + (mu - m) ** 2) / (2 * kappa**2),
            ),
        ],
    )
    _expect_sm_minimiser(sm_minimiser)


def _expect_sm_minimiser(sm_minimiser) -> None:
    """Where J_SM(m, kappa) is smallest for data N(mu, tau^2): (mu, tau^2), to 1e-6."""
    for mu, tau in cases([(0.5, 1.5), (-2.0, 0.4)], [(3.0, 2.5)]):
        call = f"sm_minimiser(mu={mu}, tau={tau})"
        answer = call_student(sm_minimiser, mu, tau, what="sm_minimiser")
        if answer is Ellipsis:
            raise NotImplementedError("sm_minimiser returns ...")
        if isinstance(answer, torch.Tensor) or type(answer).__module__ == "numpy":
            flat = answer.reshape(-1).tolist()  # a tensor or an array of two numbers
            answer = flat if len(flat) == 2 else answer
        if not (isinstance(answer, (tuple, list)) and len(answer) == 2):
            raise Mismatch(f"{call} should return a pair (m, kappa), such as a tuple, got "
                           f"{answer!r}.")
        m, kappa = (to_float(value, what=f"{call}[{k}]") for k, value in enumerate(answer))
        m_right = math.isclose(m, mu, rel_tol=1e-6, abs_tol=1e-9)
        if m_right and math.isclose(kappa, tau**2, rel_tol=1e-6):
            continue
        if (math.isclose(m, mu, rel_tol=1e-3, abs_tol=1e-3)
                and math.isclose(kappa, tau**2, rel_tol=1e-3)):
            raise Mismatch(f"{call} gives ({m:.6g}, {kappa:.6g}): close, but not exact. Is it a "
                           "numerical minimum? Derive the minimiser in closed form.")
        if not m_right:
            raise Mismatch(f"{call} gives m = {m:.6g}: J_SM depends on m only through "
                           "(mu - m)^2, which is smallest where?")
        slips = {tau: "kappa is the model's variance: compare it with the data's variance, "
                      "tau^2, not with tau.",
                 1.0 / tau**2: "that is 1 / tau^2, the precision: solve dJ_SM/dkappa = 0 for "
                               "kappa itself.",
                 2.0 * tau**2: "check the factor that the 1/2 in front of E[s_theta^2] leaves "
                               "when you differentiate with respect to kappa."}
        named = [text for value, text in slips.items() if math.isclose(kappa, value, rel_tol=1e-6)]
        raise Mismatch(f"{call} gives kappa = {kappa:.6g}, but J_SM is smallest at another "
                       "kappa: " + (named[0] if named else "at m = mu set dJ_SM/dkappa to zero "
                                    "and solve for kappa."))


# ---------------------------------------------------------------- 5.4 (debug): the sqrt(D) factor


def _unit_directions(x: torch.Tensor, n_projections: int) -> torch.Tensor:
    """The unit-sphere directions (M, N, D) of the buggy loss, drawn from SEED."""
    v = torch.randn((n_projections, *x.shape), generator=torch.Generator().manual_seed(SEED))
    return v / v.norm(dim=-1, keepdim=True)


def _sphere_terms(model, x: torch.Tensor, n_projections: int) -> dict[str, torch.Tensor]:
    """The per-example terms (N,) with unit-sphere directions from SEED: the trace term, the
    plain SSM term 1/2 (v^T s)^2 and the norm term 1/2 ||s||^2."""
    t = _terms(model, x, _unit_directions(x, n_projections))
    return {name: term.mean(0) for name, term in t.items()}


def _learned_scale(loss_fn, dim: int, n: int = 2000) -> float:
    """The a minimising the loss of the linear score s(x) = -a x on N(0, I_dim) data.

    With the directions fixed by the seed, the loss is exactly c1 a + c2 a^2, read off from
    a = 0, 1, 2; the true score of N(0, I) is a = 1.
    """
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(31))  # (N, D)
    values = []
    for a in (0.0, 1.0, 2.0):
        linear = torch.nn.Linear(dim, dim, bias=False)
        with torch.no_grad():
            linear.weight.copy_(-a * torch.eye(dim))
        loss = call_student(
            loss_fn, linear, x, n_projections=1,
            generator=torch.Generator().manual_seed(32), what="fixed_ssm_vr_loss",
        )
        values.append(float(loss.detach().double().mean()))
    c2 = (values[2] - 2 * values[1] + values[0]) / 2
    c1 = values[1] - values[0] - c2
    return -c1 / (2 * c2) if c2 > 0 else math.nan


def _fixed_loss_mutants(model, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """5.4's known wrong fixes (and the bug itself), from the unit-sphere terms of the loss."""
    t = _sphere_terms(model, x, N_PROJECTIONS)
    scale = {
        "the bug is still there: your loss gives the same values as buggy_ssm_vr_loss, and "
        "a linear model trained with it learns about 1/D times the true score (the cell "
        "above shows W near -I/8 rather than -I in 8 dimensions). Find the cause before "
        "you change the code; checks.hint(\"5.4\") helps.": 1.0,
        "your directions have length D, so E[v v^T] = D I: the trace term is now D times "
        "too large. Which length makes E[v v^T] = I?": float(DIM**2),
        "your trace term is D^2 times smaller than the fixed one: that is what directions "
        "of length 1/sqrt(D) give (divided by sqrt(D) instead of multiplied), or the unit "
        "vectors kept with the trace term divided by D. The fix gives the directions length "
        "sqrt(D), which multiplies the unit vectors' trace term by D.": 1.0 / DIM,
        "your directions have length sqrt(8), the notebook's D: right in 8 dimensions only. "
        "Take D from the data, x.shape[-1].": 8.0,
        "your trace term is sqrt(D) times the unit vectors' one: a direction's length enters "
        "v^T (ds/dx) v twice, so a length sqrt(D) multiplies it by D.": math.sqrt(DIM),
    }
    mutants = {text: c * t["trace"] + t["norm"] for text, c in scale.items()}
    v = torch.randn((N_PROJECTIONS, *x.shape), generator=torch.Generator().manual_seed(SEED))
    for axis, what in ((0, "projections"), (1, "examples")):
        wrong = _terms(model, x, v / v.norm(dim=axis, keepdim=True) * math.sqrt(DIM))
        mutants[
            f"you normalised the draws over dim={axis}, the axis of the {what}: each direction "
            "is one row of D entries, the last axis, so normalise with "
            "v.norm(dim=-1, keepdim=True) before scaling by sqrt(D)."
        ] = (wrong["trace"] + wrong["norm"]).mean(0)
    mutants.update({
        "you divided the norm term by D and kept the unit vectors: that loss is the fixed "
        "one divided by D, so it has the right minimiser, but the exercise keeps SSM-VR's "
        "1/2 ||s||^2 as it is and fixes the directions instead.": t["trace"] + t["norm"] / DIM,
        "you replaced the norm term by the plain SSM term 1/2 (v^T s)^2 and kept the unit "
        "vectors: both terms are then D times too small, so the minimiser is right, but "
        "the exercise fixes SSM-VR: keep its closed-form 1/2 ||s||^2 and fix the "
        "directions instead.": t["trace"] + t["projected"],
        "your loss is plain SSM, with the term 1/2 (v^T s)^2: the exercise fixes SSM-VR, "
        "whose second term is 1/2 ||s||^2.": DIM * (t["trace"] + t["projected"]),
        "you multiplied the whole buggy loss by D: its values scale, its minimiser does not "
        "(W is still -I/D). The trace term alone must grow by D.": DIM * (t["trace"] + t["norm"]),
    })
    return mutants


def _scale_tolerance(dim: int) -> float:
    """Five standard errors of _learned_scale's estimate from 2,000 points in dim dimensions."""
    return 5 * math.sqrt(2 / (2000 * dim)) * math.sqrt(2)


def _expect_other_directions_unbiased(fixed_ssm_vr_loss) -> None:
    """A Mismatch naming directions of another kind (random signs drawn another way, Gaussian
    draws in another order...) when the loss trains a linear model to the true score anyway,
    so that E[v v^T] = I holds for them: the loss is unbiased, but not the fix asked for.
    It trains in 3 dimensions, not the notebook's 8, so that a length hard-coded as sqrt(8)
    shows as the bias it is."""
    dim = 3
    if abs(_learned_scale(fixed_ssm_vr_loss, dim) - 1.0) <= _scale_tolerance(dim):
        raise Mismatch(
            "a linear model trained with your loss learns the true score, so your directions "
            "have E[v v^T] = I; but they are not the directions of the code above (random "
            "signs, say, or Gaussian draws taken in another order), so your loss takes other "
            "values. The exercise fixes the code's own directions: keep its normalised "
            "Gaussian draws, and change only their length."
        )


def _second_moments() -> list[tuple[str, torch.Tensor]]:
    """Second moments E[v v^T] of directions, (D, D) float64, each with how a message names it:
    a diagonal one, a full symmetric positive-definite one, the unit sphere's I / 8."""
    def full(dim: int, seed: int) -> torch.Tensor:
        a = torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed),
                        dtype=torch.float64)
        return (a @ a.T / dim + 0.2 * torch.eye(dim, dtype=torch.float64)).round(decimals=3)

    def named(moment: torch.Tensor) -> tuple[str, torch.Tensor]:
        return f"C = {moment.numpy().tolist()}", moment

    eye = torch.eye(8, dtype=torch.float64)
    return cases(
        public=[named(torch.diag(torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64))),
                named(full(3, 54)), ("C = I / 8, in 8 dimensions", eye / 8)],
        hidden=[named(full(2, 56)), ("C = 3 I, in 4 dimensions", 3 * eye[:4, :4]),
                ("a full 5 x 5 C", full(5, 55))],
    )


def _expect_learned_weight(learned_weight) -> None:
    """The minimiser of tr(W C) + 1/2 tr(W W^T), SSM-VR's loss for the linear score W x on
    N(0, I) data with directions of second moment C: W = -C."""
    for name, moment in _second_moments():
        dim = moment.shape[0]
        call = f"learned_weight(C) for {name}"
        got = call_student(learned_weight, moment.clone(), what="learned_weight")
        if not isinstance(got, torch.Tensor):
            raise Mismatch(f"{call} returned {type(got).__name__}: return W as a ({dim}, {dim}) "
                           "tensor.")
        got = expect_tensor(got.to(torch.float64), what=call, shape=(dim, dim),
                            dtype=torch.float64)
        if is_close(got, -moment):
            continue
        eye = torch.eye(dim, dtype=torch.float64)
        slips = [
            (-torch.linalg.inv(moment), "that is -C^-1: the trace term weights W by C, it does "
                                        "not divide by it."),
            (moment, "that is +C: the sign is off. A minimiser of tr(W C) + ..., with C "
                     "positive definite, has a negative trace."),
            (-moment @ moment, "that is -C^2: C enters the trace term once."),
            (-eye, "that is the true score's W = -I, what the loss learns only when C = I."),
            (-torch.trace(moment) / dim * eye, "that keeps only the mean of C's diagonal: the "
                                               "minimiser is a matrix, off-diagonal entries too."),
            (-moment / dim, "that divides by D once more: C is already the second moment of the "
                            "directions."),
        ]
        named = next((text for value, text in slips if is_close(got, value)), None)
        if named is None:
            named = ("write the loss as a function of W and C (two traces), then set its "
                     "gradient with respect to W to zero.")
        raise Mismatch(f"{call} is not the minimiser of SSM-VR's loss: {named}")


@exercise(
    "5.4",
    "SSM-VR learns W = -C from directions with E[v v^T] = C, so unit vectors (C = I / D) learn "
    "the score divided by D; with directions of length sqrt(D), E[v v^T] = I, and a linear "
    "model trained with your loss learns the score itself.",
)
def exercise_5_4(learned_weight, fixed_ssm_vr_loss) -> None:
    """Check ``learned_weight(C (D, D)) -> W (D, D)`` (the minimiser, -C) and
    ``fixed_ssm_vr_loss(model, x (N, D), n_projections, generator) -> (N,)``."""
    from scorelab.training import sliced_score_matching_loss

    _expect_learned_weight(learned_weight)
    model, x = _model(), _data()
    got = _run_own_loss(fixed_ssm_vr_loss, model, x, name="fixed_ssm_vr_loss")
    got = expect_loss(
        got, name="fixed_ssm_vr_loss", what="fixed_ssm_vr_loss(model, x)", n=x.shape[0]
    )
    references = {
        projection: sliced_score_matching_loss(
            model, x, n_projections=N_PROJECTIONS, variance_reduction=True,
            projection=projection, generator=torch.Generator().manual_seed(SEED),
        )
        for projection in ("sphere", "gaussian", "rademacher")
    }
    sphere, gaussian, rademacher = (is_close(got.detach(), r) for r in references.values())
    if gaussian and not sphere:
        raise Mismatch(
            "your directions are Gaussian: they have E[v v^T] = I too, but the exercise keeps "
            "them on a sphere. Fix the unit vectors themselves: which length gives them "
            "E[v v^T] = I?"
        )
    if rademacher and not sphere:
        raise Mismatch(
            "your directions are random signs (Rademacher vectors): they lie on a sphere and "
            "have E[v v^T] = I too, but they are not uniform on it, and the exercise fixes the "
            "uniform directions of the code above. Keep normalising the Gaussian draws, and "
            "fix the length of those unit vectors."
        )
    if not sphere:
        mutants = _fixed_loss_mutants(model, x)
        if not any(is_close(got.detach(), value) for value in mutants.values()):
            _expect_other_directions_unbiased(fixed_ssm_vr_loss)
        diagnose(got.detach(), references["sphere"].detach(), what="fixed_ssm_vr_loss",
                 mutants=mutants)
    sphere_directions = _unit_directions(x, N_PROJECTIONS) * math.sqrt(DIM)
    _check_gradients(model, x, got, references["sphere"], variance_reduction=True,
                     directions=sphere_directions)
    for dim in cases([8], [3, 16]):
        a = _learned_scale(fixed_ssm_vr_loss, dim)
        if not abs(a - 1.0) <= _scale_tolerance(dim):
            raise Mismatch(
                f"in {dim} dimensions a linear model trained with your loss on N(0, I) data "
                f"learns {a:.3f} times the true score (1/D = {1 / dim:.3f} is the symptom of "
                "the bug), where 1 is expected."
            )


# ---------------------------------------------------------------- 5.5 (investigate): the spread


def _theory_ratio(matrix: torch.Tensor) -> float:
    """std of v^T A v for v uniform on the sphere of radius sqrt(D), over its std for Gaussian v.

    Var_gauss = 2 ||A_s||_F^2 and Var_sphere = 2D/(D+2) (||A_s||_F^2 - tr(A)^2 / D), with A_s
    the symmetric part of A (v^T A v only sees A_s).
    """
    a = matrix.double()
    sym, dim = (a + a.T) / 2, a.shape[0]
    frobenius = float((sym**2).sum())
    if frobenius == 0:
        return math.nan
    ratio = dim / (dim + 2) * max(0.0, 1 - float(torch.trace(sym)) ** 2 / (dim * frobenius))
    return math.sqrt(ratio)


def _rademacher_ratio(matrix: torch.Tensor) -> float:
    """The same ratio for random-sign directions: v_i^2 = 1 removes the diagonal of A_s, so
    Var_rademacher = 2 (||A_s||_F^2 - sum_i A_ii^2)."""
    a = matrix.double()
    sym = (a + a.T) / 2
    frobenius = float((sym**2).sum())
    if frobenius == 0:
        return math.nan
    return math.sqrt(max(0.0, 1 - float((torch.diagonal(sym) ** 2).sum()) / frobenius))


def _simulated_ratio(matrix: torch.Tensor, n_draws: int, generator: torch.Generator) -> float:
    dim = matrix.shape[0]
    gauss = torch.randn(n_draws, dim, generator=generator, dtype=torch.float64)
    sphere = torch.randn(n_draws, dim, generator=generator, dtype=torch.float64)
    sphere = sphere / sphere.norm(dim=1, keepdim=True) * math.sqrt(dim)
    a = matrix.double()

    def quadratic(v):
        return ((v @ a) * v).sum(dim=1)

    return float(quadratic(sphere).std() / quadratic(gauss).std())


def _spread_matrices(seed: int, dim: int) -> torch.Tensor:
    return torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed)) + torch.eye(dim)


def _spread_tolerance(matrix: torch.Tensor, n_draws: int) -> float:
    """4 standard deviations of the estimated ratio over 20 repeated simulations, plus 1e-3."""
    replicas = torch.tensor([
        _simulated_ratio(matrix, n_draws, torch.Generator().manual_seed(1000 + r))
        for r in range(20)
    ])
    return 4 * float(replicas.std()) + 1e-3


def _spread_mistakes(matrix: torch.Tensor) -> dict[str, tuple[float, float]]:
    """Each known mistake of 5.5: explanation -> (its value, how much an error in the ratio
    grows in it)."""
    expected, dim = _theory_ratio(matrix), matrix.shape[0]
    return {
        "you returned the ratio of the variances; the question asks for the ratio of the "
        "standard deviations (take the square root).": (expected**2, 2 * expected),
        "you returned Gaussian over sphere; the question asks for sphere over Gaussian.": (
            (1 / expected, 1 / expected**2) if expected > 0 else (math.inf, 1.0)
        ),
        "your sphere directions have length 1: scale them by sqrt(D), or the trace "
        "estimate is D times too small (and so is its spread).": (expected / dim, 1.0),
        "your directions have length D: scale the unit vectors by sqrt(D), the radius that "
        "gives E[v v^T] = I; at length D the trace estimate, and its spread, are D times too "
        "large.": (expected * dim, float(dim)),
        "your ratio is what random signs (Rademacher vectors) give: they have length sqrt(D) "
        "but are not uniform on the sphere (on a diagonal matrix their estimate does not vary "
        "at all). If you used them, draw Gaussian vectors, normalise them to length one, then "
        "scale them by sqrt(D); if not, check that each direction, a row of your draws, has "
        "length sqrt(D) (normalising over the wrong axis makes every row tiny).": (
            _rademacher_ratio(matrix), 1.0
        ),
        "you compared root-mean-squares, sqrt(mean((v^T A v)^2)); the spread is the "
        "standard deviation, around the mean tr(A).": (math.sqrt(dim / (dim + 2)), 1.0),
        "you computed the squared length ||v A||^2 (or ||A v||^2) of each direction's "
        "product with A; the trace estimate is the quadratic form v^T A v, a dot product "
        "of v A with v.": (_theory_ratio(matrix.T @ matrix), 1.0),
    }


@exercise(
    "5.5",
    "your simulation matches your formula: directions on the sphere of radius sqrt(D) estimate "
    "the part (tr A / D) I of the Jacobian with no noise at all, and the rest a little better "
    "than Gaussian ones, by sqrt(D / (D + 2)).",
)
def exercise_5_5(spread_ratio, exact_spread_ratio) -> None:
    """Check ``spread_ratio(matrix (D, D), n_draws, generator) -> float`` against the theory,
    then ``exact_spread_ratio(matrix (D, D)) -> float``, the derived ratio."""
    _check_spread_simulation(spread_ratio)
    _expect_exact_spread_ratio(exact_spread_ratio)


def _check_spread_simulation(spread_ratio) -> None:
    n_draws = 20_000

    def ratio_for(matrix, name, seed=62, draws=n_draws):
        with global_rng_untouched("spread_ratio", advice="Draw both kinds of directions from "
                                  "the generator you are given."):
            answer = call_student(spread_ratio, matrix.clone(), draws,
                                  generator=torch.Generator().manual_seed(seed),
                                  what="spread_ratio")
        return to_float(answer, what=f"spread_ratio for {name}")

    # diag(1, ..., 10) is public: random signs estimate the trace of a diagonal matrix
    # exactly, so there they give 0, far from the sphere's ratio
    first_failure = None
    public = [
        ("a random 8 x 8 matrix", _spread_matrices(60, 8)),
        ("diag(1, ..., 10)", torch.diag(torch.arange(1.0, 11.0))),
    ]
    for index, (name, matrix) in enumerate(cases(
        public,
        [
            ("the 5 x 5 identity", torch.eye(5)),
            ("a random 3 x 3 matrix", _spread_matrices(61, 3)),
        ],
    )):
        answer = ratio_for(matrix, name)
        if index == 0 and ratio_for(matrix, name) != answer:
            raise Mismatch(
                f"spread_ratio gave {answer:.10g}, then {ratio_for(matrix, name):.10g} with the "
                "same seed: draw every random number from the generator you are given (not "
                "from numpy's or torch's global generator)."
            )
        if index == 0 and ratio_for(matrix, name, seed=63) == answer:
            raise Mismatch(
                "spread_ratio returns exactly the same number for differently seeded "
                "generators: every random draw must come from generator (a seed of your own, "
                "numpy's generator, or a formula in place of a simulation all give this). Draw "
                "the directions from generator, compute v^T A v for each, and compare the "
                "spreads."
            )
        if index == 0 and ratio_for(matrix, name, draws=n_draws // 2) == answer:
            raise Mismatch(
                f"spread_ratio gives exactly the same number for n_draws = {n_draws} and "
                f"{n_draws // 2} from the same seed: it ignores n_draws. Draw n_draws "
                "directions of each kind; the check asks for enough of them to place the "
                "ratio within its tolerance."
            )
        expected = _theory_ratio(matrix)
        tolerance = _spread_tolerance(matrix, n_draws)
        if abs(answer - expected) <= tolerance:
            continue
        matching = [
            explanation for explanation, (value, growth) in _spread_mistakes(matrix).items()
            if math.isfinite(value) and abs(answer - value) <= tolerance * max(1.0, growth)
        ]
        if len(matching) == 1:
            raise Mismatch(f"for {name}: {matching[0]}")
        # no known mistake, or several that this matrix cannot tell apart: a later matrix may
        first_failure = first_failure or (
            f"for {name} your ratio is {answer:.3f}, but the spreads' ratio is "
            f"{expected:.3f} (+- {tolerance:.3f} for {n_draws} draws)."
        )
    if first_failure:
        raise Mismatch(first_failure)


def _exact_spread_slips(matrix: torch.Tensor) -> dict[float, str]:
    """Values of 5.5's derived ratio after a known slip, with their explanations."""
    a = matrix.double()
    sym, dim = (a + a.T) / 2, a.shape[0]
    frobenius, trace = float((sym**2).sum()), float(torch.trace(a))
    shrink = dim / (dim + 2)
    ratio = _theory_ratio(matrix)
    slips = {
        ratio**2: "that is the ratio of the variances; the question asks for the ratio of the "
                  "standard deviations.",
        1 / ratio: "that is Gaussian over sphere; the question asks for sphere over Gaussian.",
        math.sqrt(shrink * max(0.0, 1 - trace**2 / (dim * float((a**2).sum())))):
            "v^T A v only sees the symmetric part (A + A^T) / 2: its variance has the squared "
            "entries of that part, not of A.",
        math.sqrt(1 - trace**2 / (dim * frobenius)): "the sphere's fourth moments are not the "
            "Gaussian's: for v = sqrt(D) g / |g|, E[v_i^2 v_j^2] is the Gaussian's times "
            "D^2 / E|g|^4 = D / (D + 2).",
        math.sqrt(shrink): "that is the ratio when tr A = 0 (or a ratio of second moments); "
            "the sphere estimates the part (tr A / D) I with no noise, which your formula must "
            "subtract.",
        math.sqrt(shrink * (trace**2 + 2 * frobenius) / (2 * frobenius)): "that uses the "
            "sphere's second moment E[(v^T A v)^2]; its variance subtracts the squared mean, "
            "tr(A)^2.",
        _rademacher_ratio(matrix): "that is the ratio for random signs, whose v_i^2 = 1 "
            "exactly; the sphere's v_i^2 vary.",
    }
    trace_of_square = float(torch.trace(a @ a))
    if trace_of_square > trace**2 / dim:
        slips[math.sqrt(shrink * (1 - trace**2 / (dim * trace_of_square)))] = (
            "||A_s||_F^2 is the sum of the squared entries of the symmetric part, "
            "(tr(A A^T) + tr(A^2)) / 2, not tr(A^2).")
    return slips


#: 5.5's matrices for the derived ratio: random, not symmetric, with a trace of their own
EXACT_SPREAD_CASES = ([(76, 3), (72, 8), (73, 20)], [(74, 2), (75, 50)])


def _expect_exact_spread_ratio(exact_spread_ratio) -> None:
    for seed, dim in cases(*EXACT_SPREAD_CASES):
        matrix = _spread_matrices(seed, dim) + 0.5 * torch.eye(dim)
        call = f"exact_spread_ratio(a random {dim} x {dim} matrix)"
        with global_rng_untouched("exact_spread_ratio", advice="A formula needs no random "
                                  "numbers."):
            answer = call_student(exact_spread_ratio, matrix.clone(), what="exact_spread_ratio")
        got = to_float(answer, what=call)
        expect_derived(
            got, _theory_ratio(matrix), call=call, wrong="is not the exact ratio",
            slips=_exact_spread_slips(matrix), tolerance=1e-5,
            measured=(0.03, "close, but not exact: is it a simulation? Derive both variances: "
                            "the Gaussian's from Isserlis' theorem, the sphere's from "
                            "v = sqrt(D) g / |g|."),
            otherwise="compute both variances of v^T A v: the Gaussian's from the pairings of "
                      "E[g_i g_j g_k g_l], the sphere's from the same moments scaled by "
                      "D / (D + 2); then take the square root of their ratio.")


# ---------------------------------------------------------------- hints: idea, equation, checks

register_hints(
    "5.1",
    "Replace the trace of the Jacobian by its projections on random directions: each direction"
    " costs one backward pass, whatever the dimension.",
    "The statement's identity holds for one direction. If you vectorise M directions into one "
    "autograd call with a single shared x, what is the gradient of the sum over m of v_m . "
    "s(x)? Which cross terms v_m^T (ds/dx) v_m' then enter your loss? (A loop over the "
    "directions avoids them too; stacking M copies of the batch does the same in one call.)",
    "Check it on a model whose answer you know: for s(x) = -x (a lambda will do) the Jacobian "
    "is -I, so with many directions the loss of an example tends to -D + |x|^2 / 2. The loss "
    "must also carry a gradient (create_graph=True), or training cannot use it.",
)
register_hints(
    "5.2",
    "Only the second term changes: for directions with E[v v^T] = I its expectation over v is "
    "known exactly, so there is nothing left to sample.",
    "E over v of (v^T s)^2 is s^T E[v v^T] s, the squared norm of s; the trace term stays as "
    "it is. For variance_gap, write SSM = a + b and SSM-VR = a + c, with a = v^T A v, b = (v^T"
    " s)^2 / 2 and c a constant: which variances and covariances survive in the difference? "
    "Both need fourth moments E[v_i v_j v_k v_l] of a standard Gaussian vector: which pairings"
    " of the four indices survive? Test your rule on E[z^4] in 1-D. For vr_loses_within, what "
    "are s and A for N(0, tau^2 I) at x, and where is your gap negative?",
    "Check it against your ssm_loss on s(x) = -x: averaged over many directions the two must "
    "agree (both tend to -D + |x|^2 / 2); yours gets there with fewer directions at points far"
    " from the origin, where (v . s)^2 varies most. At x = 0 the score vanishes, and so must "
    "the gap.",
)
register_hints(
    "5.3",
    "Expand the square; only the cross term needs the data's score. Integrate it by parts, "
    "using that p times the derivative of log p is the derivative of p.",
    "The boundary term vanishes by assumption. What integral is left, and what is it the "
    "expectation of? J_SM then needs only the model's score. For the Gaussian model: what is "
    "the derivative of its score, and what is the expected squared distance of a data point "
    "from the model's mean when the two means differ (add and subtract the data's mean)?",
    "Check your J_SM where you can: it must grow without bound as kappa -> 0, and for the "
    "minimiser, ask which model a method that is consistent should recover from Gaussian data,"
    " then confirm it by setting both derivatives of J_SM to zero.",
)
register_hints(
    "5.4",
    "Write SSM-VR's loss for the linear score W x: the expectation over v of v^T W v is a "
    "trace (of which matrix?), and that of 1/2 ||W x||^2 over x ~ N(0, I) is another. Then "
    "compare the learned W with the truth: by what factor is it off?",
    "The loss is quadratic in W: set its gradient with respect to W to zero. Then work out "
    "E[v v^T] for unit vectors: what do the diagonal entries of v v^T add up to, and how does "
    "symmetry share that among them?",
    "Test learned_weight where you know the answer: with C = I it must give the true W = -I. "
    "Check your directions before you train: the average of v v^T over 100,000 of them must "
    "be close to the identity, diagonal and off-diagonal entries alike. Which length makes "
    "the diagonal come out right?",
)
register_hints(
    "5.5",
    "Simulate: draw many directions of each kind, compute the quadratic form for each, and "
    "compare the standard deviations. For the formula, start from what your simulation says "
    "for A = I: what is v^T v on the sphere?",
    "How do you turn a Gaussian draw into a point of the sphere of radius sqrt(D) without "
    "changing its direction? For the formula: v^T A v only sees the symmetric part of A; write "
    "v = sqrt(D) g / |g| with g Gaussian. The direction g / |g| and the length |g| are "
    "independent, and E|g|^4 = D (D + 2).",
    "Check each batch of directions first: the sphere's must all have length sqrt(D) exactly, "
    "the Gaussian ones only on average (their squared length averages D). Check the formula "
    "against your simulation on A = I, on a symmetric A with zero trace and on a random A, at "
    "D = 2 and at D = 20.",
)
