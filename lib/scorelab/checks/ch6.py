"""Checks for the exercises of chapter 6: ConditionalInstanceNorm2dPlus.forward, the annealed DSM
loss, the step size of annealed Langevin dynamics (derive: NCSNv2's variance recursion and the
drift-to-noise ratio of a step), NCSNv2's choice of epsilon and the noise level below which the
digits break its single-point assumption (investigate) and a colleague's score function for the
shipped model, found by its norm profile (debug)."""

from __future__ import annotations

import contextlib
import copy
import itertools
import math

import torch
from torch import nn

from scorelab.checks._core import (Mismatch, answer_number, call_student, cases, diagnose,
                                   exercise, expect_derived, expect_finite, expect_loss, expect_same_draws,
                                   expect_tensor, expect_untouched, global_rng_untouched,
                                   is_close, package_refused, refuse_calls, register_hints,
                                   to_float, without_package)
from scorelab.checks._formulas import check_formula, random_points

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
    # the last image is almost flat: its pixel variances and the spread of its channel means
    # are far below eta = 1e-5, so where eta sits (and whether it is there) shows
    x[-1] = 0.5 + 1e-3 * torch.randn(4, 6, 6, generator=generator)
    return x, torch.tensor([0, 2, 1, 2, 0])  # (N, C, H, W), (N,)


def _norm_mutants(norm, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Outputs of the usual mistakes, from the same parameters."""
    c, eps = norm.num_features, norm.eps
    params = norm.embed(labels).detach()
    gamma, delta = params[:, :c, None, None], params[:, c : 2 * c, None, None]  # (N, C, 1, 1)
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
    spread = means.var(dim=1, keepdim=True)
    mutants = {
        "your eta sits outside the square root; divide the pixels by sqrt(s_k^2 + eta), which "
        "stays finite and smooth for a flat channel.": gamma * (
            (x - x.mean(dim=(2, 3), keepdim=True))
            / (x.var(dim=(2, 3), unbiased=False, keepdim=True).sqrt() + eps) + delta * m) + beta,
        "the pixel variance has no eta: divide by sqrt(s_k^2 + eta), which stays finite for a "
        "flat channel (the last test image is almost flat, so eta changes its output).": gamma * (
            (x - x.mean(dim=(2, 3), keepdim=True))
            / x.var(dim=(2, 3), unbiased=False, keepdim=True).sqrt() + delta * m) + beta,
        "the spread of the channel means has no eta: divide by sqrt(v + eta), or an image whose "
        "channel means agree divides by (almost) zero.": gamma * (h + delta * (
            (means - means.mean(dim=1, keepdim=True)) / spread.sqrt())[..., None, None]) + beta,
        "the mean correction delta * (mu_k - m) / sqrt(v + eta) is missing: without it the network "
        "cannot see the channel means that instance norm removes.": gamma * h + beta,
        "you added the correction after scaling by gamma; this class adds it before: "
        "gamma * (h + delta * correction) + beta.": gamma * h + delta * m + beta,
        "your spread v of the channel means is the biased variance (divided by C); it should "
        "be the unbiased one (divided by C - 1), means.var(dim=1), as in the authors' code.": gamma * (h + delta * corrected(unbiased=False)) + beta,
        "round-off: E[x^2] - E[x]^2 loses the variance of a nearly flat channel in float32 (the "
        "last test image); compute it from the deviations, ((x - mean)^2).mean() or x.var(...).":
            gamma * ((x - x.mean(dim=(2, 3), keepdim=True)) / torch.sqrt(
                (x.square().mean(dim=(2, 3), keepdim=True) - x.mean(dim=(2, 3), keepdim=True)
                 .square()) + eps) + delta * m) + beta,
        "the per-channel spatial variance should be the biased one, x.var(dim=(2, 3), unbiased=False).": gamma
        * (normalised(unbiased=True) + delta * m)
        + beta,
        "you normalised over channels and pixels together (layer norm); instance norm normalises each "
        "channel of each example over its pixels, dims (2, 3).": gamma
        * (normalised(dims=(1, 2, 3)) + delta * m)
        + beta,
    }
    if norm.bias:
        mutants["the shift beta is missing: add params[:, 2C:] when self.bias is true."] = gamma * (
            h + delta * m
        )
    mutants.update(_misread_rows(params, c, h, m))
    first = norm.embed(torch.zeros_like(labels)).detach()[..., None, None]  # level 0's row
    uncentred = means[..., None, None] / torch.sqrt(spread[..., None, None] + eps)
    mutants.update({
        "your forward ignores labels: every example uses level 0's parameters. Each example "
        "takes the embedding row of its own noise level, self.embed(labels).":
            first[:, :c] * (h + first[:, c : 2 * c] * m)
            + (first[:, 2 * c :] if norm.bias else 0.0),
        "you normalised over the batch as well (batch norm): instance norm normalises each "
        "channel of each example over its own pixels, dims (2, 3).":
            gamma * (normalised(dims=(0, 2, 3)) + delta * m) + beta,
        "the mean correction lacks its centring: it is (mu_k - m) / sqrt(v + eta), with m "
        "the mean of the channel means.": gamma * (h + delta * uncentred) + beta,
    })
    return mutants


def _misread_rows(params, c: int, h, m) -> dict[str, torch.Tensor]:
    """Outputs when the embedding row's C-wide chunks are read in a wrong order."""
    names = ("gamma", "delta", "beta")[: params.shape[1] // c]
    chunks = dict(zip(names, params[..., None, None].split(c, dim=1)))  # each (N, C, 1, 1)
    order = ", then ".join(f"{name} ({place})" for name, place in
                           zip(names, ("first C entries", "next C", "last C")))
    mutants = {}
    for read in itertools.permutations(names):
        if read == names:
            continue
        got = dict(zip(read, chunks.values()))
        output = got["gamma"] * (h + got["delta"] * m) + got.get("beta", 0.0)
        mutants[f"you read the embedding row as {', '.join(read)}; it holds {order}."] = output
    return mutants


@exercise(
    "6.1",
    "your forward reproduces ConditionalInstanceNorm2dPlus, with and without bias, and you found "
    "what it cannot see. It keeps each channel's pattern (x_k - mu_k) / s_k and the channel "
    "means only up to a common positive scale and a common shift: x_k -> a_k (x_k - mu_k) + "
    "c mu_k + d, with every a_k > 0 and c > 0, is invisible (up to eta), a x + b among them. "
    "Plain instance norm also misses how the channel means move against one another, which the "
    "delta term sees (with three or more channels and unequal means).",
)
def exercise_6_1(norm_class, invisible_change=None, delta_only_change=None) -> str | None:
    """Check a subclass of ConditionalInstanceNorm2dPlus whose ``forward(x, labels)`` the student
    wrote; in the exercise's second part, also ``invisible_change(x) -> x'`` (N, C, H, W), a
    change no CIN++ layer sees, and ``delta_only_change(x) -> x'``, one that plain instance
    norm does not see but the delta term does."""
    _check_norm_class(norm_class)
    if invisible_change is None and delta_only_change is None:
        return ("part 1 is right: your forward matches the package's layer, with and without "
                "bias, and passes gradients to x and to the embedding. Part 2 comes after the "
                "network below.")
    x, labels = _images()
    x, labels = x[:4], labels[:4]  # images whose variances are far above eta
    _check_change(invisible_change, x, labels, name="invisible_change", seen_by_delta=False)
    _check_change(delta_only_change, x, labels, name="delta_only_change", seen_by_delta=True)
    return None


def _plain_instance_norm(norm):
    """A copy of ``norm`` with every delta set to 0: plain conditional instance norm."""
    plain = copy.deepcopy(norm)
    with torch.no_grad():
        c = norm.num_features
        plain.embed.weight[:, c : 2 * c] = 0.0
    return plain


def _sees(norm, x: torch.Tensor, changed: torch.Tensor, labels: torch.Tensor) -> bool:
    """Whether the layer's output moves by more than 1e-3 of its size when x becomes changed."""
    with torch.no_grad():
        before, after = norm(x, labels), norm(changed, labels)
    return bool((after - before).abs().max() > 1e-3 * before.abs().max())


def _check_change(change, x, labels, *, name: str, seen_by_delta: bool) -> None:
    """``change(x)`` must change x, be invisible to plain instance norm, and be seen by the
    delta term exactly when ``seen_by_delta``."""
    if change is None:
        raise Mismatch(f"pass {name} too: checks.exercise_6_1(MyConditionalInstanceNorm2dPlus, "
                       "invisible_change, delta_only_change).")
    given = x.clone()
    changed = call_student(change, given, what=name)
    expect_untouched(given, x, call=f"{name}(x)")
    changed = expect_tensor(changed, what=f"{name}(x)", shape=tuple(x.shape)).detach()
    expect_finite(changed, what=f"{name}(x)")
    if (changed - x).abs().max() < 0.1 * x.std():
        raise Mismatch(f"{name}(x) barely differs from x: change x by at least a tenth of its "
                       "spread, or the question is empty.")
    for bias in (True, False):
        full = _reference_norm(bias)
        if _sees(_plain_instance_norm(full), x, changed, labels):
            tiny = changed.std() < 0.05 * x.std()
            raise Mismatch(
                f"{name}(x): even plain instance norm (delta = 0) sees this change. "
                + ("You shrank x a lot: the layer adds eta = 1e-5 to every variance, and the "
                   "invariance holds only while the variances stay large against it (about a "
                   "thousand times, for this check's tolerance of 1e-3). "
                   if tiny else "")
                + "Instance norm keeps, for each example and channel, the pattern "
                "(x_k - mu_k) / s_k over the pixels: which changes of x leave every such "
                "pattern the same (mind the sign)?"
            )
        full_sees = _sees(full, x, changed, labels)
        if full_sees and not seen_by_delta:
            raise Mismatch(
                f"{name}(x): plain instance norm cannot see this change, but the delta term "
                "can: it moves the channel means relative to one another (relative to their "
                "spread). That is delta_only_change's kind of change; invisible_change needs "
                "one that leaves (mu_k - m) / sqrt(v + eta) alone too."
            )
        if not full_sees and seen_by_delta:
            raise Mismatch(
                f"{name}(x): neither layer sees this change, so the delta term adds nothing "
                "here (that is invisible_change's kind of change). Change the channel means "
                "relative to one another, and keep each channel's pattern."
            )


def _check_norm_class(norm_class) -> None:
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
        with _package_forward_refused(), _bias_false_explained(bias):
            given = x.clone()
            got = call_student(mine, given, labels, what="forward")
        expect_untouched(given, x, call=f"your {what}")
        got = expect_tensor(got, what=what, shape=tuple(x.shape))
        expect_finite(got, what=what)
        with torch.no_grad():
            expected, mutants = reference(x, labels), _norm_mutants(reference, x, labels)
        # float32 on the almost flat image: orders of operations differ by ~1e-5
        diagnose(got.detach(), expected, what=what, mutants=mutants, rtol=1e-3, atol=1e-4)
        if got.grad_fn is None:
            raise Mismatch(
                "the output carries no gradient: the embedding's parameters could not be trained."
            )
        _expect_gradient_in_x(mine, reference, x, labels, what=what)


def _gradient_in_x(forward, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """d/dx of sum(w * forward(x, labels)) for fixed random weights w; (N, C, H, W)."""
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    given = x.clone().requires_grad_(True)
    output = forward(given, labels)
    if not (isinstance(output, torch.Tensor) and output.requires_grad):
        return torch.zeros_like(x)
    (gradient,) = torch.autograd.grad((weights * output).sum(), given, allow_unused=True)
    return torch.zeros_like(x) if gradient is None else gradient


def _cut_forward(norm, cut: str):
    """The reference forward with one statistic cut from the graph (``cut`` names it)."""
    c, eps = norm.num_features, norm.eps

    def forward(x, labels):
        params = norm.embed(labels).detach()[..., None, None]  # (N, 2C or 3C, 1, 1)
        gamma, delta, beta = params[:, :c], params[:, c : 2 * c], params[:, 2 * c :]
        var, mean = torch.var_mean(x, dim=(2, 3), unbiased=False, keepdim=True)
        var, mean = (var.detach() if cut in ("var", "statistics") else var), (
            mean.detach() if cut in ("mean", "statistics") else mean)
        spread, centre = torch.var_mean(mean, dim=1, keepdim=True)
        corrected = (mean - centre) / torch.sqrt(spread + eps)
        corrected = corrected.detach() if cut == "correction" else corrected
        output = gamma * ((x - mean) / torch.sqrt(var + eps) + delta * corrected)
        return output + beta if norm.bias else output

    return forward


def _expect_gradient_in_x(mine, reference, x, labels, *, what: str) -> None:
    """The student's forward passes the same gradient to x as the reference: statistics that
    are detached (or computed under no_grad) give the right values and the wrong training."""
    with _package_forward_refused():
        got = _gradient_in_x(mine, x, labels)
    expected = _gradient_in_x(reference, x, labels)
    cut = {
        "mean": "the per-channel pixel means are cut from the graph (detached, .item(), numpy "
        "or computed under torch.no_grad()): the values are right, but the gradient with "
        "respect to x is not, and a network built on this layer would train on a wrong "
        "gradient. Compute every statistic from x with differentiable torch operations.",
        "var": "the per-channel pixel variances are cut from the graph (detached, numpy or "
        "computed under torch.no_grad()): the values are right, but the gradient with respect "
        "to x is not. Keep the variance in the graph.",
        "correction": "the mean correction (mu_k - m) / sqrt(v + eta) is cut from the graph: "
        "the values are right, but the gradient with respect to x is not. Keep it in the graph.",
        "statistics": "the pixel means and variances are cut from the graph (detached, numpy "
        "or computed under torch.no_grad()): the values are right, but the gradient with "
        "respect to x is not. Compute every statistic from x with differentiable torch "
        "operations.",
    }
    mutants = {message: _gradient_in_x(_cut_forward(reference, name), x, labels)
               for name, message in cut.items()}
    if not got.abs().any():
        raise Mismatch(
            f"your {what} passes no gradient to x: the values are right, but every statistic "
            "was cut from the graph (detached, numpy or torch.no_grad()), so a network built "
            "on this layer could not train the layers below it."
        )
    diagnose(got, expected, what=f"the gradient of your {what} with respect to x",
             mutants=mutants, rtol=1e-3, atol=1e-3)


@contextlib.contextmanager
def _bias_false_explained(bias: bool):
    """With bias=False, an error of a forward that worked with bias=True is explained: the
    embedding row then has no beta."""
    try:
        yield
    except (RuntimeError, ValueError, IndexError) as error:
        if bias:
            raise
        raise Mismatch(
            f"your forward works with bias=True but raised {type(error).__name__} with "
            f"bias=False ({str(error).splitlines()[0]}): without bias the embedding row holds "
            "only gamma and delta, 2C entries, so read beta (and add it) only when self.bias "
            "is true."
        ) from None


def _package_forward_refused():
    """While active, a call of the package's ConditionalInstanceNorm2dPlus.forward is noticed,
    so a forward that hands the work back to it (``super().forward``) is seen for what it is."""
    from scorelab.ncsn import ConditionalInstanceNorm2dPlus

    return refuse_calls([ConditionalInstanceNorm2dPlus.forward], (
        "your forward calls the package's ConditionalInstanceNorm2dPlus.forward (through "
        "super().forward?): write the normalisation yourself."))


class _ToyConditionalModel(nn.Module):
    """A noise-conditional 'score model' of any rank: s(x, i) = -(x - mu) * scale[i] (one parameter)."""

    def __init__(self, n_levels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 3.0, n_levels))
        self.mu = 0.3

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not isinstance(labels, torch.Tensor) or labels.is_floating_point():
            raise Mismatch(
                "your loss calls the model with noise levels (floats, such as sigmas[labels]) "
                "where it takes the level indices: model(x_noisy, labels) with labels the "
                "integers (N,) of each example's level. The network looks up its parameters "
                "for level i; it never sees sigma_i itself."
            )
        return -(x - self.mu) * self.scale[labels].reshape(-1, *([1] * (x.ndim - 1)))


def _loss_mutants(model, x, sigmas, labels) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(SEED)
    z, second = (torch.randn(x.shape, generator=generator) for _ in range(2))
    sigma = sigmas[labels].reshape(-1, *([1] * (x.ndim - 1)))  # (N, 1, ..., 1)
    flipped = sigmas.flip(0)[labels].reshape(sigma.shape)  # level L - 1 - i's sigma

    def loss(weight, target, at):
        return (0.5 * weight * (model(at, labels) - target) ** 2).reshape(x.shape[0], -1).sum(dim=1)

    noisy = x + sigma * z
    first = sigmas[0]
    return {
        "there is no lambda(sigma) = sigma^2 weighting: without it the small-sigma levels, whose targets "
        "-z / sigma are large, dominate the loss.": loss(1.0, -z / sigma, noisy),
        "the weighting is sigma; Song & Ermon choose lambda(sigma) = sigma^2, which puts "
        "lambda(sigma) ||target||^2 = ||z||^2 on the same scale at every level.":
            loss(sigma, -z / sigma, noisy),
        "the weighting is 1 / sigma^2; it should be sigma^2.": loss(
            1 / sigma**2, -z / sigma, noisy
        ),
        "the target has the wrong sign: regress onto -z / sigma.": loss(sigma**2, z / sigma, noisy),
        "the target is -z / sigma^2; the kernel's score -(x~ - x) / sigma^2 at x~ = x + sigma z "
        "is -z / sigma.": loss(sigma**2, -z / sigma**2, noisy),
        "the target is -z: that is the target of sigma s_theta, in the weighted form "
        "1/2 ||sigma s_theta + z||^2; for s_theta itself it is -z / sigma.":
            loss(sigma**2, -z, noisy),
        "the model is evaluated at the clean x; evaluate it at x + sigma_i z.": loss(
            sigma**2, -z / sigma, x
        ),
        "every example uses sigmas[0]; use each example's own level, sigmas[labels].": loss(
            first**2, -z / first, x + first * z
        ),
        "the target uses a second draw of the noise: the z of the target must be the very z "
        "that perturbed x (x~ = x + sigma z), drawn once.": loss(sigma**2, -second / sigma, noisy),
        "your sigma of example n is sigmas[L - 1 - labels[n]]: the ladder runs from the largest "
        "sigma (label 0) to the smallest, so example n's level is sigmas[labels[n]].":
            loss(flipped**2, -z / flipped, x + flipped * z),
        "the noise is scaled by sigma^2: sigma is the standard deviation of the perturbation, "
        "x~ = x + sigma z.": loss(sigma**2, -z / sigma, x + sigma**2 * z),
        "the target is -sigma z; the kernel's score at x~ = x + sigma z is -z / sigma.":
            loss(sigma**2, -sigma * z, noisy),
    }


def _dsm_floor(tau, sigma, dim):
    """The smallest weighted loss at level sigma, data N(mu, tau^2 I) in R^dim."""
    return 0.5 * dim * tau**2 / (tau**2 + sigma**2)


_FLOOR_POINTS = {"tau": (0.05, 5.0, "log"), "sigma": (0.005, 50.0, "log"), "dim": (1, 1000, "int")}

_FLOOR_MUTANTS = [
    ("this is the loss of the clean score -(x - mu) / tau^2, which is not the minimiser: at "
     "level sigma the loss is smallest for the score of the perturbed density.",
     lambda tau, sigma, dim: 0.5 * dim * ((1 - sigma**2 / tau**2) ** 2 + sigma**2 / tau**2)),
    ("this is the part of D / 2 that the exact score removes, not the part it leaves: the "
     "floor tends to D / 2 as sigma -> 0 (the noisy point cannot tell a small noise from the "
     "data's own spread) and to 0 for large sigma.",
     lambda tau, sigma, dim: 0.5 * dim * sigma**2 / (tau**2 + sigma**2)),
    ("the floor must shrink as sigma grows: check the sign of the cross term 2 sigma E[z . s]; "
     "the exact score points against the noise, so it lowers the loss below D / 2.",
     lambda tau, sigma, dim: 0.5 * dim * (tau**2 + 2 * sigma**2) / (tau**2 + sigma**2)),
    ("this is the unweighted loss; the exercise's loss carries lambda(sigma) = sigma^2.",
     lambda tau, sigma, dim: 0.5 * dim * tau**2 / (sigma**2 * (tau**2 + sigma**2))),
    ("the 1/2 in front of the squared norm is missing.",
     lambda tau, sigma, dim: dim * tau**2 / (tau**2 + sigma**2)),
    ("this is one coordinate's share: the squared norm sums the D coordinates.",
     lambda tau, sigma, dim: 0.5 * tau**2 / (tau**2 + sigma**2)),
    ("standard deviations do not add: x + sigma z has variance tau^2 + sigma^2.",
     lambda tau, sigma, dim: 0.5 * dim * tau / (tau + sigma)),
    ("this is the loss of a score of 0 (D / 2 at every level); the exact score does better.",
     lambda tau, sigma, dim: 0.5 * dim + 0.0 * tau * sigma),
    ("the exact score still leaves a loss: x~ does not tell all of the noise z, so no "
     "function of x~ predicts sigma z exactly.",
     lambda tau, sigma, dim: 0.0 * tau * sigma * dim),
    ("this is half the best denoiser's error E|x - E[x | x~]|^2 itself; the loss measures it "
     "in units of sigma^2.",
     lambda tau, sigma, dim: 0.5 * dim * tau**2 * sigma**2 / (tau**2 + sigma**2)),
]


def _check_floor(dsm_floor) -> None:
    check_formula(
        dsm_floor,
        _dsm_floor,
        [p for seed in cases([60], [61, 62]) for p in random_points(seed, 30, _FLOOR_POINTS)],
        what="dsm_floor",
        regimes=[[
            ("for small noise (sigma < tau / 5)", lambda p: p["sigma"] < p["tau"] / 5),
            ("for noise comparable with tau",
             lambda p: p["tau"] / 5 <= p["sigma"] <= 5 * p["tau"]),
            ("for large noise (sigma > 5 tau)", lambda p: p["sigma"] > 5 * p["tau"]),
        ]],
        mutants=_FLOOR_MUTANTS,
    )


@exercise(
    "6.2",
    "your annealed_dsm_loss weights each level by sigma^2 and works on points and images alike, "
    "and the floor of Gaussian data is D tau^2 / (2 (tau^2 + sigma^2)), which is "
    "E|x - E[x | x~]|^2 / (2 sigma^2): the best denoiser's error, in units of sigma^2. It tends "
    "to D / 2 as sigma -> 0 and to 0 as sigma grows. For the mixture, sigma^2 times the floor "
    "tends to tr Cov[x] / 2 = (2 + 0.16 * 200) / 2 = 17.",
)
def exercise_6_2(annealed_dsm_loss, dsm_floor=None, mixture_limit=None) -> str | None:
    """Check ``annealed_dsm_loss(model, x (N, *D), sigmas (L,), labels (N,), generator) -> (N,)``
    and, in the exercise's second part, ``dsm_floor(tau, sigma, dim) -> float``, the smallest
    expected weighted loss at level sigma for data N(mu, tau^2 I) in R^dim, and
    ``mixture_limit``, the limit of sigma^2 times the toy mixture's floor as sigma grows."""
    _check_annealed_loss(annealed_dsm_loss)
    if dsm_floor is None and mixture_limit is None:
        return ("part 1 is right: your annealed_dsm_loss weights each level by sigma^2 and works "
                "on points and images alike. Part 2 comes after the training.")
    _check_floor(dsm_floor)
    _check_mixture_limit(mixture_limit)
    return None


#: 6.2, part 2: the limit of sigma^2 floor(sigma) for 0.8 N((5, 5), I) + 0.2 N((-5, -5), I).
#: The truth is tr Cov[x] / 2 = (2 * 1 + 0.8 * 0.2 * |(10, 10)|^2) / 2 = 17.
_LIMIT_SLIPS = {
    1.0: "that is the limit for one mode alone, N((5, 5), I): the mixture's floor also holds "
         "the spread between its modes, which the noisy point no longer resolves.",
    16.0: "that is the spread between the modes alone; each mode's own variance adds to it.",
    34.0: "that is the whole trace of the covariance: the loss has a 1/2 in front.",
    8.5: "that is one coordinate's share: the squared norm sums both coordinates.",
    9.0: "the modes are |(10, 10)| = 10 sqrt(2) apart, not 10: the squared distance is 200.",
    26.0: "the modes' weights are 0.8 and 0.2, so the spread between them carries "
          "0.8 * 0.2 = 0.16 of the squared distance, not 0.25.",
    0.0: "sigma^2 times the floor does not vanish: the floor falls like 1/sigma^2, not faster.",
    16.5: "each mode's own variance is 1 per coordinate, so 2 over both coordinates.",
}


def _check_mixture_limit(mixture_limit) -> None:
    if mixture_limit is None:
        raise Mismatch("pass your mixture_limit too: checks.exercise_6_2(annealed_dsm_loss, "
                       "dsm_floor, mixture_limit).")
    value = to_float(mixture_limit, what="mixture_limit")
    if not math.isfinite(value):
        raise Mismatch(f"mixture_limit should be a finite number, got {value}.")
    if abs(value - 17.0) <= 0.01:
        return
    for slip, why in _LIMIT_SLIPS.items():
        if abs(value - slip) <= 0.01:
            raise Mismatch(f"mixture_limit = {value:g}: {why}")
    if 12.0 <= value < 17.2:
        raise Mismatch(
            f"mixture_limit = {value:g} is about what sigma^2 times the floor is at a finite "
            "sigma (about 15.7 at sigma = 20, where the noisy point still says a little about "
            "its mode, and closer to the limit further out). The limit is exact: work it out "
            "from the mixture's covariance, not from a measurement."
        )
    raise Mismatch(
        f"mixture_limit = {value:g} is not the limit. Write the floor as the best denoiser's "
        "error, E|x - E[x | x~]|^2 / (2 sigma^2) (Tweedie's formula); when sigma is large, what "
        "is E[x | x~], and so what is sigma^2 times the floor? It needs the mixture's "
        "covariance: within the modes and between them."
    )


def _check_annealed_loss(annealed_dsm_loss) -> None:
    from scorelab.training import _annealed_dsm_loss, _sigma_weighted_dsm, sigma_weighted_dsm
    from scorelab.training import annealed_dsm_loss as reference_loss

    sigmas = torch.tensor([4.0, 1.5, 0.6, 0.2])
    labels = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0, 2, 1])
    model = _ToyConditionalModel(len(sigmas))
    points = torch.randn(10, 3, generator=torch.Generator().manual_seed(1))  # (N, 3)
    images = torch.rand(10, 1, 4, 4, generator=torch.Generator().manual_seed(2))  # (N, 1, 4, 4)
    for x, kind in ((points, "3-D points"), (images, "images (N, 1, 4, 4)")):
        what = f"annealed_dsm_loss on {kind}"

        def run(x=x):
            given = x.clone()
            refused = (reference_loss, _annealed_dsm_loss, sigma_weighted_dsm, _sigma_weighted_dsm)
            with package_refused(*refused, what="annealed_dsm_loss"), \
                    global_rng_untouched("annealed_dsm_loss"):
                loss = call_student(
                    annealed_dsm_loss, model, given, sigmas, labels,
                    generator=torch.Generator().manual_seed(SEED), what="annealed_dsm_loss",
                )
            expect_untouched(given, x, call="annealed_dsm_loss(model, x, sigmas, labels)")
            return loss

        got = expect_loss(
            _on_images_too(run) if x is images else run(),
            name="annealed_dsm_loss", what=what, n=x.shape[0],
        )
        expected = reference_loss(
            model, x, sigmas, labels=labels, generator=torch.Generator().manual_seed(SEED)
        )
        if is_close(got, expected):
            continue
        expect_same_draws(run, got)
        with torch.no_grad():
            mutants = _loss_mutants(model, x, sigmas, labels)
        diagnose(
            got.detach(),
            expected.detach(),
            what=what,
            mutants=mutants,
            factors={
                "2": (2.0, "the 1/2 in front of the squared norm is missing.",
                      "the 1/2 in front of the squared norm is there twice."),
                "D, the number of entries of one example": (
                    float(x[0].numel()), "",
                    "sum the squares over each example's entries, do not average them."),
            },
        )


def _on_images_too(run):
    """``run()``, with a shape error explained as a loss written for points (N, D) only."""
    try:
        return run()
    except (RuntimeError, IndexError) as error:
        raise Mismatch(
            f"right on points (N, D), but on images it raised {type(error).__name__} "
            f"({str(error).splitlines()[0]}). Reshape the per-example sigma to (N, 1, ..., 1), "
            "e.g. sigma.reshape(-1, *[1] * (x.ndim - 1)), and sum over every dimension "
            "but the first, so one loss serves points and images."
        ) from None


# ---------------------------------------------------------------- 6.3 (derive): the step size


def _variance_ratio(eps, sigma_L, gamma, n_steps):
    """NCSNv2's Var[x_T] / sigma_i^2 after T steps at level i, in the paper's convention.

    With p_sigma_i = N(0, sigma_i^2 I), x <- x + (alpha/2) s + sqrt(alpha) z contracts by
    rho = 1 - eps / (2 sigma_L^2) per step and adds alpha = eps sigma_i^2 / sigma_L^2 of variance.
    """
    u = eps / sigma_L**2
    r = 1 - u / 2
    return r ** (2 * n_steps) * gamma**2 + u * (1 - r ** (2 * n_steps)) / (1 - r**2)


def _variance_ratio_with(rho, added, gamma, n_steps):
    """v_T / sigma_i^2 for v <- rho^2 v + added sigma_i^2, from v_0 = gamma^2 sigma_i^2."""
    kept = rho ** (2 * n_steps)
    return kept * gamma**2 + added * (1 - kept) / (1 - rho**2)


def _authors_ratio(eps, sigma_L, gamma, n_steps):
    """The same recursion in the authors' convention x <- x + alpha s + sqrt(2 alpha) z."""
    u = eps / sigma_L**2
    r = 1 - u
    return r ** (2 * n_steps) * gamma**2 + 2 * u * (1 - r ** (2 * n_steps)) / (1 - r**2)


def _step_points(seed: int) -> list[dict]:
    raw = random_points(
        seed,
        20,
        {"u": (1e-3, 1.5, "log"), "sigma_L": (0.01, 1.0, "log"), "k": (1.0, 100.0, "log")},
    )
    points = [  # eps = u sigma_L^2 with u < 4: steps at which the chain settles
        {"eps": p["u"] * p["sigma_L"] ** 2, "sigma_i": p["k"] * p["sigma_L"],
         "sigma_L": p["sigma_L"]} for p in raw
    ]
    return points + [{**p, "sigma_i": p["sigma_L"]} for p in points[:4]]


def _ratio_points(seed: int) -> list[dict]:
    raw = random_points(
        seed,
        28,
        {
            "u": (1e-3, 1.5, "log"),
            "sigma_L": (0.01, 1.0, "log"),
            "gamma": (1.05, 3.0),
            "n_steps": (1, 200, "int"),
        },
    )
    points = [
        {
            "eps": p["u"] * p["sigma_L"] ** 2,
            "sigma_L": p["sigma_L"],
            "gamma": p["gamma"],
            "n_steps": p["n_steps"],
        }
        for p in raw
    ]
    return sorted(points, key=lambda p: p["n_steps"])  # a failure shows the fewest steps first


def _u(p: dict) -> float:
    return p["eps"] / p["sigma_L"] ** 2


def _start_share(p: dict) -> float:
    return (1 - p["eps"] / (2 * p["sigma_L"] ** 2)) ** (2 * p["n_steps"])


#: 6.3, part 2: the last level and the others.
_STEP_REGIMES = [
    [
        ("at the last level (sigma_i = sigma_L)", lambda p: p["sigma_i"] == p["sigma_L"]),
        ("at the larger levels", lambda p: p["sigma_i"] != p["sigma_L"]),
    ]
]

#: 6.3, part 1: two ways of splitting the points.
_RATIO_REGIMES = [
    [
        ("near stationarity (after many steps)", lambda p: _start_share(p) < 0.01),
        ("while the start still matters (few steps)", lambda p: _start_share(p) > 0.1),
    ],
    [
        ("for eps much smaller than sigma_L^2", lambda p: _u(p) < 0.05),
        ("for eps comparable with sigma_L^2", lambda p: _u(p) > 0.3),
    ],
]

#: 6.3, part 1: the usual mistakes in the variance recursion.
_RATIO_MUTANTS = [
    (
        "this is NCSNv2's formula in the authors' convention x + a s + sqrt(2a) z; in the "
        "paper's convention a step contracts x by "
        "1 - eps / (2 sigma_L^2) and adds alpha_i of variance.",
        _authors_ratio,
    ),
    (
        "the previous level's samples have variance sigma_(i-1)^2 = gamma^2 sigma_i^2: "
        "the start contributes gamma^2, not gamma.",
        lambda eps, sigma_L, gamma, n_steps: _variance_ratio(eps, sigma_L, gamma, n_steps)
        + (1 - eps / (2 * sigma_L**2)) ** (2 * n_steps) * (gamma - gamma**2),
    ),
    (
        "a variance is multiplied by the square of the contraction factor: after T "
        "steps the start keeps rho^(2T) of its variance, not rho^T.",
        lambda eps, sigma_L, gamma, n_steps: (
            (1 - eps / (2 * sigma_L**2)) ** n_steps * gamma**2
            + (eps / sigma_L**2) * (1 - (1 - eps / (2 * sigma_L**2)) ** n_steps)
            / (1 - (1 - eps / (2 * sigma_L**2)) ** 2)
        ),
    ),
    (
        "only the start is left: each step also adds alpha_i of fresh noise variance, so "
        "v <- rho^2 v + alpha_i, and the noise terms add up over the T steps.",
        lambda eps, sigma_L, gamma, n_steps: (1 - eps / (2 * sigma_L**2)) ** (2 * n_steps)
        * gamma**2,
    ),
    (
        "the drift is half the step times the score, (alpha_i / 2) s: a step contracts x by "
        "1 - eps / (2 sigma_L^2), not 1 - eps / sigma_L^2.",
        lambda eps, sigma_L, gamma, n_steps: _variance_ratio_with(
            1 - eps / sigma_L**2, eps / sigma_L**2, gamma, n_steps),
    ),
    (
        "the noise part is not 1 - rho^(2T): that takes 1 - rho^2 to be eps / sigma_L^2 and "
        "drops a term; sum the geometric series of the added variances exactly.",
        lambda eps, sigma_L, gamma, n_steps: (
            (1 - eps / (2 * sigma_L**2)) ** (2 * n_steps) * gamma**2
            + 1 - (1 - eps / (2 * sigma_L**2)) ** (2 * n_steps)
        ),
    ),
    (
        "this is the stationary ratio (T -> infinity); after T steps a share "
        "rho^(2T) of the starting variance gamma^2 is still there.",
        lambda eps, sigma_L, gamma, n_steps: 1 / (1 - eps / (4 * sigma_L**2)),
    ),
]


#: 6.3, part 2: the usual slips in sizing the two terms of a step.
_DRIFT_MUTANTS = [
    (
        "this is the ratio in the authors' code convention, a s + sqrt(2a) z with "
        "a = eps sigma_i^2 / sigma_L^2; in the paper's the drift is (alpha_i / 2) s and the "
        "noise sqrt(alpha_i) z.",
        lambda eps, sigma_i, sigma_L: math.sqrt(eps / 2) / sigma_L,
    ),
    (
        "the drift's length is (alpha_i / 2) times the score's, and the score is not 1 long: "
        "at level i it is about 1 / sigma_i per coordinate.",
        lambda eps, sigma_i, sigma_L: math.sqrt(eps) * sigma_i / (2 * sigma_L),
    ),
    (
        "the drift is half the step times the score, (alpha_i / 2) s: the 1/2 is missing.",
        lambda eps, sigma_i, sigma_L: math.sqrt(eps) / sigma_L,
    ),
    (
        "this is the ratio of the mean squared lengths; the question asks for the ratio "
        "of the root-mean-square lengths, its square root.",
        lambda eps, sigma_i, sigma_L: eps / (4 * sigma_L**2),
    ),
    (
        "the score -x / sigma_i^2 is not 1 / sigma_i^2 long: x itself is about sigma_i "
        "long per coordinate at this level, so the score is about 1 / sigma_i per "
        "coordinate.",
        lambda eps, sigma_i, sigma_L: math.sqrt(eps) / (2 * sigma_L * sigma_i),
    ),
    (
        "the noise term is sqrt(alpha_i) z: per coordinate it is sqrt(alpha_i) long, "
        "not alpha_i.",
        lambda eps, sigma_i, sigma_L: 1 / (2 * sigma_i),
    ),
    (
        "at level i the step is alpha_i = eps sigma_i^2 / sigma_L^2 (Algorithm 1), not eps "
        "at every level.",
        lambda eps, sigma_i, sigma_L: math.sqrt(eps) / (2 * sigma_i),
    ),
]


@exercise(
    "6.3",
    "your variance ratio is NCSNv2's calculation, redone in the NCSN paper's (alpha / 2) "
    "convention; and a step's drift is "
    "sqrt(eps) / (2 sigma_L) of its noise at every level, which is why alpha_i grows like "
    "sigma_i^2.",
)
def exercise_6_3(variance_ratio, drift_to_noise) -> None:
    """Check ``variance_ratio(eps, sigma_L, gamma, n_steps)`` and ``drift_to_noise(eps,
    sigma_i, sigma_L)`` at random parameter values."""
    from scorelab.noise import langevin_variance_ratio, step_size_for_ladder

    variance_ratio = without_package(variance_ratio, langevin_variance_ratio,
                                     step_size_for_ladder, what="variance_ratio")
    seeds = cases([70], [71, 72])
    check_formula(
        variance_ratio,
        _variance_ratio,
        [p for seed in seeds for p in _ratio_points(seed)],
        what="variance_ratio",
        regimes=_RATIO_REGIMES,
        mutants=_RATIO_MUTANTS,
        tensors=True,  # exercise 6.4 calls it on a tensor grid of eps
    )
    _expect_ratio_on_a_grid(variance_ratio)
    check_formula(
        drift_to_noise,
        lambda eps, sigma_i, sigma_L: math.sqrt(eps) / (2 * sigma_L),
        [p for seed in seeds for p in _step_points(seed)],
        what="drift_to_noise",
        regimes=_STEP_REGIMES,
        mutants=_DRIFT_MUTANTS,
    )


def _expect_ratio_on_a_grid(variance_ratio) -> None:
    """Mismatch unless ``variance_ratio`` takes a 1-D tensor of eps, as exercise 6.4 calls it,
    and returns the ratio for each (a tensor of the same shape)."""
    eps = torch.logspace(-6, -4, 5, dtype=torch.float64)
    call = "variance_ratio(eps, 0.01, 1.33, 10) with eps a tensor of 5 values"
    advice = ("exercise 6.4 calls it on a grid of eps, as its text says: write it with tensor "
              "arithmetic (**, torch functions), not math.pow, math.exp or float().")
    try:
        got = call_student(variance_ratio, eps.clone(), 0.01, 1.33, 10, what="variance_ratio")
    except (TypeError, ValueError, RuntimeError) as error:
        raise Mismatch(f"{call} raised {type(error).__name__}: {error}; {advice}") from None
    if not (isinstance(got, torch.Tensor) and got.shape == eps.shape):
        shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
        raise Mismatch(f"{call} returned {shape}, not one ratio per eps; {advice}")
    if not torch.allclose(got.double(), _variance_ratio(eps, 0.01, 1.33, 10), rtol=1e-4):
        raise Mismatch(f"{call} is right for single values but not on the grid; {advice}")


# ---------------------------------------------------------------- 6.4 (investigate): NCSNv2's eps


def _ladder_ratio(eps: torch.Tensor, sigmas: torch.Tensor, n_steps: int) -> torch.Tensor:
    gamma = float(sigmas[-2] / sigmas[-1])
    return _variance_ratio(eps, float(sigmas[-1]), gamma, n_steps)


def _ratio_at(eps: float, sigmas: torch.Tensor, n_steps: int) -> float:
    return float(_ladder_ratio(torch.tensor(eps, dtype=torch.float64), sigmas, n_steps))


def _best_epsilon(sigmas: torch.Tensor, n_steps: int) -> float:
    """The eps (paper convention) minimising NCSNv2's ratio: a log grid of 0.05 % steps."""
    sigma_L = float(sigmas[-1])
    u = torch.logspace(-8, math.log10(3.9), 35_000, dtype=torch.float64)
    values = _ladder_ratio(u * sigma_L**2, sigmas, n_steps)
    return float(u[int(torch.argmin(values))]) * sigma_L**2


def _digit_pixels(split: str = "train") -> torch.Tensor:
    """The digits of ``split`` as rows of 64 pixels in [0, 1], float64: (N, 64)."""
    from scorelab.data import load_digits

    return load_digits(split).flatten(start_dim=1).double()


def _widest_variance(pixels: torch.Tensor) -> float:
    """The largest eigenvalue of the covariance of ``pixels`` (N, 64)."""
    return float(torch.linalg.eigvalsh(torch.cov(pixels.T))[-1])


def _expect_crossover_sigma(crossover_sigma) -> None:
    """6.4, part 2: p_sigma = law of x + sigma z has covariance Cov[x] + sigma^2 I, so its
    variance along the widest direction, lambda_max + sigma^2, exceeds 2 sigma^2 while sigma^2 <
    lambda_max: sigma* = sqrt(lambda_max) of the training digits."""
    from scorelab.noise import geometric_sigmas

    value = answer_number(crossover_sigma, what="crossover_sigma")
    pixels = _digit_pixels()
    covariance = torch.cov(pixels.T)  # (64, 64)
    variances = torch.linalg.eigvalsh(covariance)  # ascending
    test_widest, all_widest = (_widest_variance(_digit_pixels(split)) for split in ("test", "all"))
    widest = float(variances[-1])
    ladder = geometric_sigmas(5.0, 0.01, 22)[6:8].tolist()  # the shipped levels around sigma*
    level_slip = ("that is a level of the shipped ladder; sigma* falls between two of its "
                  "levels: give it unrounded.")
    expect_derived(
        value, math.sqrt(widest), call="crossover_sigma",
        wrong="is not where p_sigma's widest direction is twice sigma^2",
        slips={
            widest: "that is a variance, sigma*^2: the condition compares lambda_max with "
            "sigma^2, so sigma* is its square root.",
            math.sqrt(float(variances.mean())): "that uses the average variance of a pixel, "
            "the mean over all directions; the widest direction is along the top eigenvector "
            "of the digits' covariance.",
            math.sqrt(float(covariance.diagonal().max())): "that is the widest "
            "single pixel; directions that mix pixels vary more: take the largest eigenvalue "
            "of the digits' covariance.",
            math.sqrt(float(variances.sum())): "that is the total variance, summed over all 64 "
            "directions; the condition concerns p_sigma's variance in one direction.",
            math.sqrt(float(torch.linalg.eigvalsh(pixels.T @ pixels / len(pixels))[-1])):
            "that is a second moment about 0; the spread of the digits is about their mean: "
            "centre them first (torch.cov does).",
            math.sqrt(widest / 2): "that asks the digits' variance alone to be twice sigma^2; "
            "p_sigma's variance is the digits' plus sigma^2.",
            math.sqrt(test_widest): "those are the test digits; the "
            "model learned the training digits, load_digits() (split 'train').",
            math.sqrt(all_widest): "those are all the digits, training and test; the model "
            "learned the training digits, load_digits() (split 'train').",
            16 * math.sqrt(widest): "pixels from 0 to 16, scikit-learn's raw scale; the model "
            "sees them in [0, 1], as load_digits returns them.",
            ladder[0]: level_slip,
            ladder[1]: level_slip,
        },
        otherwise="p_sigma is the law of x + sigma z for a training digit x and independent "
        "noise z: what is its covariance, and how large is its variance along a unit vector u? "
        "Find the largest over u.",
        measured=(0.03, "close, but not the exact value: give it unrounded (it is checked to "
                        "0.1 %), and compute it from the digits' covariance; noise drawn to "
                        "estimate p_sigma's covariance only approximates what is known exactly."),
        tolerance=0.001)  # a covariance divided by N or N - 1 differs by 0.04 %


@exercise(
    "6.4",
    "your epsilon brings NCSNv2's variance ratio as close to 1 as it gets for this ladder "
    "and number of steps; and below sigma* = sqrt(lambda_max) of the digits' covariance, where "
    "15 of the shipped ladder's 22 levels lie, the digits' p_sigma as a whole is no longer the "
    "one Gaussian of variance sigma^2 that the rule assumes.",
)
def exercise_6_4(ncsnv2_epsilon, crossover_sigma) -> None:
    """Check ``ncsnv2_epsilon(sigmas (L,), n_steps) -> float`` (paper convention) and the
    number ``crossover_sigma``, the sigma below which the digits' p_sigma has more than twice
    the variance of N(x_0, sigma^2 I) along its widest direction."""
    from scorelab.noise import geometric_sigmas, langevin_variance_ratio, step_size_for_ladder

    ncsnv2_epsilon = without_package(ncsnv2_epsilon, step_size_for_ladder,
                                     langevin_variance_ratio, what="ncsnv2_epsilon")

    for (sigma_max, sigma_min, n_levels), n_steps in cases(
        [((5.0, 0.01, 22), 10), ((1.0, 0.01, 10), 100)],
        [((50.0, 0.01, 232), 5), ((2.0, 0.05, 15), 3)],
    ):
        sigmas = geometric_sigmas(sigma_max, sigma_min, n_levels).double()
        where = (
            f"for sigmas from {sigma_max:g} to {sigma_min:g} in {n_levels} levels, T = {n_steps}"
        )
        answer = to_float(
            call_student(ncsnv2_epsilon, sigmas.float().clone(), n_steps, what="ncsnv2_epsilon"),
            what=f"ncsnv2_epsilon {where}",
        )
        if not (math.isfinite(answer) and answer > 0):
            raise Mismatch(f"{where} your epsilon is {answer}: a step size is a positive number.")
        best = _best_epsilon(sigmas, n_steps)
        # a log grid with 2 % steps finds the minimum to within one step either side
        value = _ratio_at(answer, sigmas, n_steps)
        band = max(_ratio_at(best * f, sigmas, n_steps) for f in (1.02, 1 / 1.02))
        if abs(math.log(answer / best)) <= 0.02 or value <= band:
            continue
        if abs(math.log(answer / (best / 2))) <= 0.03:
            raise Mismatch(
                f"{where} your epsilon {answer:.3g} is half the paper-convention value "
                f"{best:.3g}: it is the authors' step_lr (their formula counts steps as "
                "x + a s + sqrt(2a) z). Use the recursion in the paper's convention."
            )
        lowest = _ratio_at(best, sigmas, n_steps)
        for other in (n_steps - 1, n_steps + 1):
            if other > 0 and abs(math.log(answer / _best_epsilon(sigmas, other))) <= 0.02:
                raise Mismatch(
                    f"{where} your epsilon {answer:.4g} is the best for T = {other} steps a "
                    f"level, not T = {n_steps}: run the variance recursion for n_steps steps. "
                    "(If you did, your grid is too coarse and landed there by chance: keep "
                    "neighbouring values at most 2 % apart.)"
                )
        if abs(math.log(answer / best)) <= 0.15:
            raise Mismatch(
                f"{where} your epsilon {answer:.4g} is near the best, {best:.4g}, but not within "
                f"2 % of it (ratio {value:.6f} against {lowest:.6f}): the minimum is flat, so "
                "search it on a finer grid, neighbouring values at most 2 % apart."
            )
        raise Mismatch(
            f"{where} your epsilon {answer:.3g} gives the ratio {value:.4g}, but a "
            f"{'larger' if best > answer else 'smaller'} epsilon comes closer to 1 (the ratio "
            "is always above 1: take the epsilon where it is smallest, and if that sits at an "
            "end of your grid, widen the grid; sigma_L is the smallest level, and "
            "eps / sigma_L^2 >= 4 makes the chain blow up)."
        )
    _expect_crossover_sigma(crossover_sigma)


# ---------------------------------------------------------------- 6.5 (debug): a colleague's score


PROFILE_RTOL = 0.015  # the Gaussian's profile from 2,000 examples of D = 64 is within 0.3 %


def _gaussian_profile(tau: float, sigmas: torch.Tensor, dim: int) -> torch.Tensor:
    """The exact profile sigma E|s| / sqrt(D) of N(0, tau^2 I) data (L,): the perturbed points
    are N(0, (tau^2 + sigma^2) I), their norm has the chi mean, and s = -x / (tau^2 + sigma^2)."""
    chi_mean = math.sqrt(2.0) * math.exp(math.lgamma((dim + 1) / 2) - math.lgamma(dim / 2))
    spread = torch.sqrt(tau**2 + sigmas**2)
    return sigmas / spread * chi_mean / math.sqrt(dim)


def _check_profile(score_norm_profile) -> None:
    tau, n = 0.5, 2000
    sigmas = torch.tensor([5.0, 1.0, 0.3, 0.1, 0.03, 0.01], dtype=torch.float64)
    for shape in cases([(1, 8, 8)], [(64,)]):
        dim = math.prod(shape)
        x = tau * torch.randn(n, *shape, generator=torch.Generator().manual_seed(SEED))
        call = f"score_norm_profile on {n} examples of shape {shape}, N(0, {tau}^2 I) data"

        def exact_score(x_noisy, sigma):
            return -x_noisy / (tau**2 + sigma**2)

        def run():
            with global_rng_untouched("score_norm_profile"):
                return call_student(score_norm_profile, exact_score, x.clone(), sigmas.float(),
                                    torch.Generator().manual_seed(SEED + 1),
                                    what="score_norm_profile")

        first = expect_tensor(run(), what=call, shape=(len(sigmas),), dtype=None)
        got = first.double()
        expect_same_draws(run, first, outputs="profiles",
                          draw="draw the noise with torch.randn(x.shape, generator=generator)")
        expect_finite(got, what=call)
        expected = _gaussian_profile(tau, sigmas, dim)
        spread = torch.sqrt(tau**2 + sigmas**2)
        diagnose(got, expected, what=f"{call}: your profile", rtol=PROFILE_RTOL, atol=1e-3,
                 mutants={
            "your profile misses the factor sigma: it is E|s| / sqrt(D), which grows without "
            "bound as sigma falls; sigma E|s| / sqrt(D) stays near 1.": expected / sigmas,
            "your profile multiplies by sigma^2 where it needs sigma.": expected * sigmas,
            "your profile is not divided by sqrt(D) (D, the number of entries of one example, "
            f"is {dim} here).": expected * math.sqrt(dim),
            "your profile evaluates the score at the clean data: perturb x with the level's "
            "noise first, x + sigma z, and evaluate the score there.": expected * tau / spread,
            "your profile takes one norm over the whole batch: take each example's norm (over "
            "every dimension but the first), then their mean.": expected * math.sqrt(n),
            f"your profile divides by D = {dim}: it is divided by sqrt(D).": expected / math.sqrt(dim),
            **({f"your profile divides by sqrt({shape[-1]}), the last dimension of the data: D is "
                f"the number of entries of one example, {dim} here (x[0].numel()).":
                expected * math.sqrt(dim / shape[-1])} if shape[-1] != dim else {}),
            **({"your profile takes the norm over the last dimension only (norm(dim=-1)): that "
                "is the norm of one row of an image; flatten each example first (x.flatten(1)) "
                f"and take the norm over all its D = {dim} entries.":
                _gaussian_profile(tau, sigmas, shape[-1]) * math.sqrt(shape[-1] / dim),
                "your profile takes the norm of each row of an image (norm(dim=-1)) and divides "
                f"by sqrt({shape[-1]}): it measures rows, not examples; flatten each example "
                f"(x.flatten(1)) and divide its norm by sqrt(D), D = {dim}.":
                _gaussian_profile(tau, sigmas, shape[-1])}
               if shape[-1] != dim else {}),
        })


def _small_model(sigmas: torch.Tensor):
    """An NCSN with random weights and the ladder ``sigmas``, for a ladder no one writes down."""
    from scorelab.ncsn import NCSN

    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        return NCSN(ngf=4, sigmas=sigmas).eval()


def _score_models():
    from scorelab.ncsn import load_pretrained
    from scorelab.noise import geometric_sigmas

    return cases(
        [("the shipped model", load_pretrained()),
         ("a model with 7 levels from 1 to 0.05", _small_model(geometric_sigmas(1.0, 0.05, 7)))],
        [("a model with 12 levels from 8 to 0.02, not geometric",
          _small_model(0.02 * 400.0 ** (torch.linspace(1.0, 0.0, 12) ** 1.5)))],
    )


_REPLACED_BY_THE_PACKAGE = (
    "{call} hands the work to the package's as_score_fn (directly, or through the model's "
    "own score method). In a project that is the right fix, "
    "but this exercise asks you to debug the colleague's function: find its two bugs with "
    "your profile and correct them in its own code."
)


def _check_network_score(network_score) -> None:
    from scorelab.data import load_digits
    from scorelab.noise import geometric_sigmas
    from scorelab.scores import as_score_fn

    digits = load_digits("test")[:32]  # (32, 1, 8, 8)
    models = _score_models()
    shipped = models[0][1].sigmas  # the ladder a student may have written down
    written_down = f"{len(shipped)} levels from {shipped[0]:g} to {shipped[-1]:g}"
    for name, model in models:
        ladder = model.sigmas.tolist()
        reference = as_score_fn(model, model.sigmas)
        score_fn = call_student(network_score, model, what="network_score")
        if not callable(score_fn):
            raise Mismatch(f"network_score({name}) returned a {type(score_fn).__name__}: it "
                           "must return a function score_fn(x, sigma).")
        last = len(ladder) - 1
        for level in sorted({0, last // 2, last}):
            sigma = ladder[level]
            x = digits + sigma * torch.randn(digits.shape, generator=torch.Generator()
                                             .manual_seed(SEED + level))
            call = f"network_score({name})(x, sigma={sigma:.3g})"
            with torch.no_grad():
                try:
                    with refuse_calls([reference], _REPLACED_BY_THE_PACKAGE.format(call=call)):
                        got = score_fn(x.clone(), sigma)
                except (IndexError, ValueError, RuntimeError) as error:
                    advice = "" if name == "the shipped model" else (
                        f" Does your function read the levels from the model ({len(ladder)} "
                        "here), or from a ladder written down for another model?")
                    raise Mismatch(f"{call} raised {type(error).__name__}: {error}.{advice}"
                                   ) from None
                got = expect_tensor(got, what=call, shape=tuple(x.shape))
                expected = reference(x, sigma)

                def network_at(j):
                    return model(x, torch.full((x.shape[0],), j))

                flipped = last - level
                mutants = {
                    f"{call} still has both of the colleague's bugs. Run your "
                    "score_norm_profile on it and on as_score_fn(model, model.sigmas), and "
                    "compare the two level by level.": network_at(flipped) / sigma,
                    f"{call} is the model's score at another level, sigma = "
                    f"{ladder[flipped]:.3g}, not at sigma = {sigma:.3g}. Compare your profile "
                    "with the package's level by level: which levels does your function "
                    "confuse, and why?": network_at(flipped),
                    f"{call} is the model's score at the right level divided by sigma: where "
                    "does your function scale what the network gives?": expected / sigma,
                    f"{call} is the model's score at the right level multiplied by sigma: "
                    "where does your function scale what the network gives?": expected * sigma,
                    f"{call} is the model's score at the right level divided by sigma^2: where "
                    "does your function scale what the network gives?": expected / sigma**2,
                }
                written = int(torch.argmin((shipped - sigma).abs()))
                if written != level and written <= last:
                    mutants[f"{call} asks the network for level {written}, the level of sigma "
                            f"in the shipped model's ladder ({written_down}), not in this "
                            "model's: read the ladder from the model."] = network_at(written)
                rebuilt = geometric_sigmas(ladder[0], ladder[-1], len(ladder))  # same ends
                guessed = int(torch.argmin((rebuilt - sigma).abs()))
                if guessed != level:
                    mutants[f"{call} asks the network for level {guessed}, where sigma would "
                            "sit in a geometric ladder with the model's ends; this model's ladder "
                            "is not geometric. Read the ladder itself from the model; do not "
                            "rebuild it."] = network_at(guessed)
                for j in (level - 1, level + 1):
                    if 0 <= j <= last:
                        mutants[f"{call} asks the network for level {j} instead of {level}: "
                                "an off-by-one in the level lookup."] = network_at(j)
            diagnose(got, expected, what=call, mutants=mutants, rtol=1e-4, atol=1e-4)


@exercise(
    "6.5",
    "your profile measures what it should, and your network_score gives the model's own "
    "score at every level, for the shipped model and for models with other ladders.",
)
def exercise_6_5(score_norm_profile, network_score) -> None:
    """Check ``score_norm_profile(score_fn, x (N, *D), sigmas (L,), generator) -> (L,)`` on a
    Gaussian's exact score, then ``network_score(model) -> score_fn(x, sigma)`` against
    :func:`scorelab.scores.as_score_fn` on the shipped model and on models with other ladders."""
    _check_profile(score_norm_profile)
    _check_network_score(network_score)


# ---------------------------------------------------------------- hints: idea, equation, checks

register_hints(
    "6.1",
    "Instance norm removes each channel's spatial mean and scale; the delta term puts back how "
    "the channel means differ from one another, normalised across the channels. Part 2: ask "
    "what each of those normalisations removes.",
    "Which statistics are taken over the pixels of one channel, and which across the channels "
    "of one example? Which variance is biased and which unbiased (the class's docstring says)? "
    "Does gamma multiply the delta term too, and where does beta enter? Part 2: which changes "
    "of one channel keep (x_k - mu_k) / s_k? Which changes of all the channels together keep "
    "(mu_k - m) / sqrt(v)?",
    "Check special cases: with gamma = 1, delta = 0 and beta = 0 your layer is plain instance "
    "norm (every channel of every example has mean 0 and variance about 1 over its pixels); "
    "with delta = 0 the channel means play no part at all. Part 2: try a change on the "
    "package's layer with random parameters (its embedding's weights drawn from a normal "
    "law) and compare the outputs before and after; mind the sign of any factor.",
)
register_hints(
    "6.2",
    "One network, all levels: each example gets its own sigma (from its label), its own noise, "
    "and the DSM loss of that level weighted by lambda(sigma) = sigma^2. Part 2: the floor is "
    "the loss of the minimiser itself, which Exercise 4.3 found for Gaussian data.",
    "Write one example's loss first, with its own sigma_i, and ask of every tensor its shape: "
    "which has one number per example, and how must it be shaped to meet an image of shape "
    "(C, H, W)? Which dimensions does the squared norm sum over, and which does it keep? "
    "Part 2: at the minimiser, write sigma s(x~) + z in terms of z and x - mu only; they are "
    "independent, so the mean square of the sum is the sum of the mean squares. For the "
    "mixture, Tweedie's formula writes the same quantity as (E[x | x~] - x) / sigma: what does "
    "E[x | x~] become when the noise swamps the data?",
    "Check it with a model that always returns zeros: every example's loss is then |z|^2 / 2, "
    "about D / 2, at every level, which is what the weight sigma^2 buys. Then check the shape: "
    "(N,) for points (N, D) and for images (N, C, H, W) alike. Part 2: your dsm_floor must "
    "stay below D / 2 (the loss of a score of 0), tend to D / 2 as sigma -> 0 and to 0 as "
    "sigma grows; mixture_limit needs the mixture's whole covariance, within and between modes.",
)
register_hints(
    "6.3",
    "Part 1: with a Gaussian score the update is linear in x, so follow the variance step by "
    "step. Part 2: compare mean squared lengths first, coordinate by coordinate.",
    "Part 1: one step multiplies x by a constant rho and adds independent noise of variance "
    "alpha_i, so the variance obeys v <- rho^2 v + alpha_i, a geometric recursion; sum it over T "
    "steps from v_0 = gamma^2 sigma_i^2.",
    "Check part 1 in two limits: with T = 0 it must give gamma^2 (nothing has moved yet); after "
    "very many steps it must no longer depend on gamma (the chain has forgotten its start). "
    "Part 2: at level i a coordinate of x has variance sigma_i^2, so what is the mean square "
    "of a coordinate of the score -x / sigma_i^2?",
)
register_hints(
    "6.4",
    "The ratio is above 1 on both sides of its best epsilon: too small a step leaves the "
    "previous level's variance, too large a step adds discretisation error. Find where it dips"
    " lowest. For crossover_sigma: the rule's p_sigma is one point blurred by the noise, the "
    "digits' p_sigma is every digit blurred by the same noise; compare their spreads direction "
    "by direction.",
    "gamma is the ratio of the last two levels and sigma_L the last one; evaluate your "
    "variance_ratio on a log-spaced grid of epsilon running from far below sigma_L^2 to a few "
    "times it. For crossover_sigma: a digit x and the noise sigma z are independent, so their "
    "covariances add.",
    "Check your grid: neighbouring values at most 2 % apart, and wide enough that the ratio "
    "rises again at both ends (if the smallest ratio sits at an end, the best epsilon lies "
    "outside). Return that epsilon as a float, in the paper's convention. For "
    "crossover_sigma: along a unit vector u the digits vary by u^T Cov u, and the largest "
    "value over u is a property of the covariance matrix you know from linear algebra.",
)
register_hints(
    "6.5",
    "score_norm_profile: at each level, perturb the whole batch with fresh noise of that "
    "level, evaluate the score there at that sigma, and average the examples' norms; multiply "
    "by sigma and divide by sqrt(D).",
    "network_score: divide the profile of network_score(shipped) by that of "
    "as_score_fn(shipped, shipped.sigmas), level by level, and plot the ratio against sigma on"
    " log-log axes. Before you look, predict its shape for two kinds of mistake: each level "
    "gets the network's answer for another level, or the output carries an extra power of "
    "sigma. Which shape do you see? Fix what it points to, then look again.",
    "Print the model's ladder and the colleague's side by side, first and last entries. Then "
    "ask what this network returns: the score itself, or the score times sigma?",
)
