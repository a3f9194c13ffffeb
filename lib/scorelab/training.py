"""Score-matching objectives and the loops that minimise them.

Per-example losses (module-level functions returning a tensor (N,)), and trainers that hold a
model and its Adam optimiser (``.loss``, ``.step``, ``.train``). Every trainer, the NCSN's
included (:func:`scorelab.ncsn.train_NCSN`), runs the one loop of
:meth:`ScoreMatchingTrainer.run` on the batches of :class:`Batches`.

The loop runs anywhere: a ``generator`` may live on the CPU or on the data's device (draws
happen where it lives); the losses stay on the device and are read every ``log_every``
steps (the step itself never waits for a GPU); ``amp`` trains under autocast
(:func:`mixed_precision`), ``compile`` through ``torch.compile``; and
:class:`AnnealedDenoisingScoreMatching` shards every batch over the processes of a
``torch.distributed`` group (DistributedDataParallel, as under ``torchrun``).

References
----------
Hyvärinen (2005), *Estimation of non-normalized statistical models by score matching*.
Vincent (2011), *A connection between score matching and denoising autoencoders*.
Song, Garg, Shi & Ermon (2019), *Sliced score matching*.
Song & Ermon (2019), *Generative Modeling by Estimating Gradients of the Data Distribution*.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable

import torch
from tqdm.auto import tqdm

from scorelab._tensors import (
    broadcast_like, randint, randn_like, randperm, same_device, sum_except_batch,
)
from scorelab._validation import (
    check_batch, check_batch_shape, check_flag, check_labels, check_ladder_fits, check_positive,
    check_positive_int, check_positive_values, check_score_shape, check_values,
)
from scorelab.noise import check_sigmas


def annealed_dsm_loss(
    model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    labels: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-example annealed denoising score-matching loss (Song & Ermon 2019, Eq. 5-6).

    For each example a noise level ``sigma_i`` is drawn (or given by ``labels``), the
    example is perturbed as ``x~ = x + sigma_i z`` and the model is regressed onto the
    score of the perturbation kernel, ``-(x~ - x) / sigma_i^2 = -z / sigma_i``, with the
    weighting ``lambda(sigma) = sigma^2``, which puts every level's regression target, z, on
    one scale (E||z||^2 = D at every level)::

        l_i = 1/2 * sigma_i^2 * || s(x~, i) + z / sigma_i ||^2
            = 1/2 * || sigma_i s(x~, i) + z ||^2,

    where s(x~, i) is the model at the example's label i, the index of sigma_i in ``sigmas``
    (0..L-1 in code; the book's sigma_1..sigma_L number the same levels from 1).

    Parameters
    ----------
    model : callable
        ``model(x_noisy, labels)`` with ``x_noisy`` of shape (N, *D) and ``labels`` a
        LongTensor (N,) of level indices; returns a score of shape (N, *D).
    x : Tensor, shape (N, *D)
        Clean data (2-D points or images), floating, finite, N >= 1.
    sigmas : sequence of float or Tensor, shape (L,)
        The noise ladder, indexed by ``labels``, checked by
        :func:`scorelab.noise.check_sigmas` (a floating tensor is used in its own dtype).
    labels : integer Tensor, shape (N,), optional
        Level of each example, in ``0..L-1``; drawn uniformly when omitted.
    noise : Tensor, shape (N, *D), optional
        The standard normal z, of x's dtype and device; drawn (after the labels) when
        omitted.
    generator : torch.Generator, optional
        Source of the level draws and the noise (on the CPU or on x's device).

    Returns
    -------
    Tensor, shape (N,)
        The per-example losses; the caller takes the mean.
    """
    x = check_batch("x", x)
    checked = check_sigmas(sigmas)
    check_ladder_fits(model, len(checked))
    # A floating tensor is used as given (its dtype kept); anything else as the checked ladder.
    if not (isinstance(sigmas, torch.Tensor) and sigmas.is_floating_point()):
        sigmas = checked
    if labels is not None:
        labels = check_labels(labels, x.shape[0], len(checked), x.device)
    if noise is not None:
        _check_noise(noise, x)
    return _annealed_dsm_loss(model, x, sigmas, labels, noise, generator)


def _annealed_dsm_loss(model, x, sigmas, labels=None, noise=None, generator=None):
    """:func:`annealed_dsm_loss` on checked arguments (the trainer's loop: no host sync)."""
    if labels is None:
        labels = randint(len(sigmas), (x.shape[0],), generator=generator, device=x.device)
    if noise is None:
        noise = randn_like(x, generator=generator)  # z
    return _sigma_weighted_dsm(lambda noisy: model(noisy, labels), x, sigmas.to(x)[labels], noise)


def _check_noise(noise, x: torch.Tensor) -> torch.Tensor:
    """``noise`` must be a finite tensor of the shape, dtype and device of ``x``."""
    if (not isinstance(noise, torch.Tensor) or noise.shape != x.shape
            or noise.dtype != x.dtype):
        got = f"{noise.dtype} {tuple(noise.shape)}" if isinstance(noise, torch.Tensor) else (
            type(noise).__name__)
        raise ValueError(f"noise must be a tensor of x's shape {tuple(x.shape)} and dtype "
                         f"{x.dtype}, got {got}")
    if not same_device(noise.device, x.device):
        raise ValueError(f"noise must be on x's device {x.device}, got {noise.device}")
    return check_values("noise", noise)


def sigma_weighted_dsm(score_at, x: torch.Tensor, sigma: torch.Tensor,
                       noise: torch.Tensor) -> torch.Tensor:
    """``1/2 || sigma s(x + sigma z) + z ||^2`` per example: DSM with the weight sigma^2.

    The core of the annealed loss (one ladder level per example) and of the VE SDE's
    continuous loss (one sigma per example): ``score_at(x_noisy)`` is the model at each
    example's own level, ``x`` has shape (N, *D), ``sigma`` (positive, finite) shape (N,),
    ``noise`` (z) the shape of ``x``; returns (N,). Every argument is checked (reading the
    values: a synchronisation with a GPU).
    """
    x = check_batch("x", x)
    n = x.shape[0]
    if not isinstance(sigma, torch.Tensor) or sigma.shape != (n,) or not sigma.is_floating_point():
        got = f"{sigma.dtype} {tuple(sigma.shape)}" if isinstance(sigma, torch.Tensor) else (
            type(sigma).__name__)
        raise ValueError(f"sigma must be a floating tensor of shape ({n},), got {got}")
    check_positive_values("sigma", sigma)
    return _sigma_weighted_dsm(score_at, x, sigma, _check_noise(noise, x))


def _sigma_weighted_dsm(score_at, x, sigma, noise) -> torch.Tensor:
    """:func:`sigma_weighted_dsm` on checked arguments (no host sync)."""
    scaled = broadcast_like(sigma, x)  # (N, 1, ..., 1)
    score = _score(score_at, x + scaled * noise)  # s(x + sigma z, sigma)
    return 0.5 * sum_except_batch((scaled * score + noise) ** 2)


def loss_by_level(model, x: torch.Tensor, sigmas, *, loss: Callable | None = None,
                  seed: int = 0) -> torch.Tensor:
    """The mean annealed DSM loss of ``model`` on ``x`` at each level of ``sigmas``: (L,).

    Level i labels every example i and draws its noise from a generator seeded ``seed + i``,
    so two models, or two data sets of one shape, are compared on the same draws; no
    gradients are kept. ``loss(model, x, sigmas, labels, generator)`` returns the per-example
    loss (N,): by default :func:`annealed_dsm_loss`, Song & Ermon (2019), Eq. 5-6 with
    lambda(sigma) = sigma^2, but any loss of that signature (a student's own) will do.
    ``x`` (N, *D) clean data; ``sigmas`` (L,) the model's ladder.
    """
    x = check_batch("x", x)
    sigmas = check_sigmas(sigmas).to(x)  # on the data's device and dtype
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if loss is None:
        def loss(model, x, sigmas, labels, generator):
            return annealed_dsm_loss(model, x, sigmas, labels=labels, generator=generator)
    elif not callable(loss):
        raise TypeError(f"loss must be a callable loss(model, x, sigmas, labels, generator), "
                        f"got {type(loss).__name__}")
    means = []
    for level in range(len(sigmas)):
        labels = torch.full((len(x),), level, dtype=torch.long, device=x.device)
        generator = torch.Generator(device=x.device).manual_seed(seed + level)
        with torch.no_grad():
            means.append(loss(model, x, sigmas, labels, generator).mean().item())
    return torch.tensor(means)


def memorised_dsm_floor(data: torch.Tensor, sigmas, *, n: int = 2000,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    r"""The annealed DSM loss, level by level, of a model that memorised ``data`` (L,).

    Such a model knows the exact score of the training set's own perturbed distribution,
    :math:`p_\sigma = \frac1N \sum_j \mathcal N(x_j, \sigma^2 I)` for the N points of ``data``:
    with the posterior weights
    :math:`r_j(\tilde x) = \operatorname{softmax}_j(-\lVert\tilde x - x_j\rVert^2 / 2\sigma^2)`,
    the score is :math:`(\sum_j r_j x_j - \tilde x) / \sigma^2` (Tweedie's formula), and its
    loss on the training points,
    :math:`\frac12 \mathbb E\lVert\sigma s(\tilde x) + z\rVert^2` (Song & Ermon 2019,
    Eq. 5-6, with :math:`\lambda(\sigma) = \sigma^2`), is the lowest any model reaches there.
    It is 0 only where the noise leaves no doubt which point it came from (small sigma) and
    where the posterior mean barely moves (large sigma); a network's loss far above it has not
    memorised the data.

    ``data`` (N, *D) finite floats; ``sigmas`` a ladder (L,); ``n`` noisy draws a level (the
    Monte Carlo error of each level's value is about its spread over sqrt(n)). Float64 inside.
    """
    data = check_batch("data", data).detach().reshape(len(data), -1).double()  # (N, D)
    levels = check_sigmas(sigmas).double().tolist()
    n = check_positive_int("n", n)
    floors = []
    for sigma in levels:
        picks = randint(len(data), (n,), generator=generator, device=data.device)
        z = randn_like(data[picks], generator=generator)  # (n, D)
        noisy = data[picks] + sigma * z
        weights = torch.softmax(-torch.cdist(noisy, data) ** 2 / (2 * sigma**2), dim=1)  # (n, N)
        residual = z - (noisy - weights @ data) / sigma  # sigma s(x~) + z
        floors.append(0.5 * residual.square().sum(dim=1).mean())
    return torch.stack(floors)


# ---------------------------------------------------------------------------------------------
# Per-example losses: each takes a model and a batch (N, *D) and returns (N,)
# ---------------------------------------------------------------------------------------------

PROJECTIONS = ("gaussian", "rademacher", "sphere")


def _score(model, x: torch.Tensor, *args) -> torch.Tensor:
    """``model(x, *args)``, checked to be a score shaped like ``x`` (a shape check: no sync)."""
    return check_score_shape("model", model(x, *args), x)


def dsm_loss(
    model, x: torch.Tensor, sigma: float, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Per-example denoising score-matching loss (Vincent 2011; Song & Ermon 2019, Eq. 2).

    The data are perturbed as ``x~ = x + sigma z``, ``z ~ N(0, I)``, and the model is regressed
    onto the score of the kernel ``q_sigma(x~ | x)``, ``-(x~ - x) / sigma^2 = -z / sigma``::

        l = 1/2 || s(x~) + z / sigma ||^2.

    Its minimiser is the score of the *perturbed* density ``p_sigma = p * N(0, sigma^2 I)``.

    Parameters
    ----------
    model : callable
        ``model(x) -> score`` with shapes (N, *D) -> (N, *D).
    x : Tensor, shape (N, *D)
        Clean data.
    sigma : float
        Standard deviation of the perturbation, > 0.
    generator : torch.Generator, optional
        Source of the noise.

    Returns
    -------
    Tensor, shape (N,)
    """
    x = check_batch("x", x)
    return _dsm_loss(model, x, check_positive("sigma", sigma), generator)


def _dsm_loss(model, x, sigma: float, generator=None) -> torch.Tensor:
    """:func:`dsm_loss` on checked arguments (the trainer's loop: no host sync)."""
    noise = randn_like(x, generator=generator)
    score = _score(model, x + sigma * noise)
    return 0.5 * sum_except_batch((score + noise / sigma) ** 2)


def _projections(
    x: torch.Tensor, n_projections: int, projection: str, generator: torch.Generator | None
) -> torch.Tensor:
    """Random directions v with E[v v^T] = I, shape (M, N, *D)."""
    v = randn_like(x, generator=generator, shape=(n_projections, *x.shape))  # (M, N, *D)
    if projection == "rademacher":
        return v.sign()
    if projection == "sphere":
        # radius sqrt(D), so that E[v v^T] = I as the SSM-VR form needs (exercise 5.4)
        flat = v.reshape(n_projections, x.shape[0], -1)  # (M, N, D')
        flat = flat / flat.norm(dim=-1, keepdim=True) * flat.shape[-1] ** 0.5
        return flat.reshape(v.shape)
    return v


def sliced_score_matching_loss(
    model,
    x: torch.Tensor,
    *,
    n_projections: int = 1,
    variance_reduction: bool = False,
    projection: str = "gaussian",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-example sliced score-matching loss (Song, Garg, Shi & Ermon 2019).

    The SSM-VR form below is the one Song & Ermon (2019) write as their Eq. 3.

    For random directions ``v`` with ``E[v v^T] = I`` (Gaussian, Rademacher, or uniform on a
    sphere of the right radius: exercise 5.4)::

        l = mean_v [ v^T (d s / d x) v + 1/2 (v^T s)^2 ]            (SSM, chapter 5's J_SSM)
        l = mean_v [ v^T (d s / d x) v ] + 1/2 ||s||^2                (SSM-VR)

    SSM-VR replaces ``1/2 (v^T s)^2`` by its expectation over ``v``, which is ``1/2 ||s||^2``
    exactly when ``E[v v^T] = I``. Each ``v^T (ds/dx) v`` costs one backward pass,
    whatever the dimension, instead of the D passes of the exact trace.

    Parameters
    ----------
    model : callable
        ``model(x) -> score``, (N, *D) -> (N, *D).
    x : Tensor, shape (N, *D)
    n_projections : int
        Directions M per example.
    variance_reduction : bool
        Use the closed-form ``1/2 ||s||^2`` (SSM-VR).
    projection : {"gaussian", "rademacher", "sphere"}
        Distribution of ``v``.
    generator : torch.Generator, optional
        Source of the directions.

    Returns
    -------
    Tensor, shape (N,)
    """
    x = check_batch("x", x)
    n_projections = check_positive_int("n_projections", n_projections)
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
    return _sliced_loss(model, x, n_projections, bool(variance_reduction), projection, generator)


def _sliced_loss(model, x, n_projections: int, variance_reduction: bool, projection: str,
                 generator=None) -> torch.Tensor:
    """:func:`sliced_score_matching_loss` on checked arguments (no host sync)."""
    v = _projections(x, n_projections, projection, generator)  # (M, N, *D)
    # One forward pass on M copies of the batch gives every (x, v) pair its own graph.
    x_copies = x.detach().unsqueeze(0).expand_as(v).reshape(-1, *x.shape[1:])  # (M N, *D)
    x_copies = x_copies.clone().requires_grad_(True)
    v = v.reshape(x_copies.shape)  # (M N, *D)
    score = _score(model, x_copies)  # (M N, *D)
    # grad_x (v . s) = (ds/dx)^T v; dotting with v again gives v^T (ds/dx) v.
    jacobian_v = torch.autograd.grad((score * v).sum(), x_copies, create_graph=True)[0]
    trace_term = sum_except_batch(jacobian_v * v)  # (M N,)
    if variance_reduction:
        norm_term = 0.5 * sum_except_batch(score**2)  # (M N,)
    else:
        norm_term = 0.5 * sum_except_batch(score * v) ** 2  # (M N,)
    return (trace_term + norm_term).reshape(n_projections, x.shape[0]).mean(dim=0)  # (N,)


def exact_score_matching_loss(model, x: torch.Tensor) -> torch.Tensor:
    """Per-example score-matching loss of Hyvärinen (2005, Theorem 1), the trace taken exactly::

        l = tr(d s / d x) + 1/2 ||s||^2

    The trace needs one backward pass per dimension (D passes), which is what sliced score
    matching avoids; this is the reference it is compared with.

    Parameters
    ----------
    model : callable
        ``model(x) -> score``, (N, *D) -> (N, *D).
    x : Tensor, shape (N, *D)

    Returns
    -------
    Tensor, shape (N,)
    """
    return _exact_loss(model, check_batch("x", x))


def _exact_loss(model, x: torch.Tensor) -> torch.Tensor:
    """:func:`exact_score_matching_loss` on a checked batch (no host sync)."""
    x = x.detach().clone().requires_grad_(True)
    score = _score(model, x)
    flat_score = score.reshape(x.shape[0], -1)  # (N, D')
    trace = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for i in range(flat_score.shape[1]):
        # Summing over the batch is safe: example n's score depends on x_n only.
        gradient = torch.autograd.grad(flat_score[:, i].sum(), x, create_graph=True)[0]
        trace = trace + gradient.reshape(x.shape[0], -1)[:, i]
    return trace + 0.5 * sum_except_batch(score**2)


# ---------------------------------------------------------------------------------------------
# Batches, the exponential moving average, and the one training loop
# ---------------------------------------------------------------------------------------------


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


class Batches:
    """Endless mini-batches of a data set ``(N, *D)`` or of a sampler ``n -> (n, *D)``.

    From a tensor, batches are drawn with replacement (independent uniform indices) or by
    shuffled passes (a new permutation every pass; the incomplete last batch is dropped).
    The state of the passes (the permutation and the cursor in it) is saved and restored
    by :meth:`state_dict` and :meth:`load_state_dict`, so that a resumed run draws the
    batches an uninterrupted one would. Indices are drawn on the generator's device.

    Parameters
    ----------
    data : Tensor, shape (N, *D), or callable
        The data set, checked once here (non-empty, floating, finite), or a sampler whose
        batches are not checked (a NaN batch makes the loss NaN, which stops training).
    batch_size : int
        Examples per batch.
    replacement : bool
        Draw with replacement (default) or by shuffled passes (then ``batch_size <= N``).
    generator : torch.Generator, optional
        Source of the indices and permutations.
    device : str or torch.device, optional
        Move each batch there (default: leave it where the data are).
    """

    def __init__(self, data, batch_size: int, *, replacement: bool = True,
                 generator: torch.Generator | None = None, device=None) -> None:
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.replacement, self.generator = bool(replacement), generator
        self.device = None if device is None else _as_device(device)
        self.order: torch.Tensor | None = None
        self.cursor = 0
        if callable(data) and not isinstance(data, torch.Tensor):
            self.sampler, self.data = data, None
            return
        if not isinstance(data, torch.Tensor) or data.ndim < 2:
            raise ValueError("data must be a tensor of shape (N, *D) or a callable n -> batch")
        if data.shape[0] == 0:
            raise ValueError("data must hold at least one example, got an empty tensor")
        if not replacement and batch_size > data.shape[0]:
            raise ValueError(f"batch_size ({batch_size}) must not exceed the number of examples "
                             f"({data.shape[0]}) when sampling without replacement")
        self.sampler, self.data = None, check_batch("data", data)

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        batch = self.sampler(self.batch_size) if self.sampler is not None else self._draw()
        return batch if self.device is None else batch.to(self.device)

    def _draw(self) -> torch.Tensor:
        n, where = self.data.shape[0], self.data.device
        if self.replacement:
            return self.data[randint(n, (self.batch_size,), generator=self.generator, device=where)]
        if self.order is None or self.cursor + self.batch_size > n:  # a new pass
            self.order, self.cursor = randperm(n, generator=self.generator, device=where), 0
        chosen = self.order[self.cursor : self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return self.data[chosen]

    def state_dict(self) -> dict:
        """Where the shuffled passes stand: ``{"order": Tensor (N,) or None, "cursor": int}``."""
        return {"order": self.order, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        """Continue the shuffled passes from a :meth:`state_dict`.

        ``state`` must hold ``"order"``, None or a permutation of ``0..N-1`` (a LongTensor
        (N,), N the number of examples; None for a sampler), and ``"cursor"``, an int in
        ``0..N`` (0 without an order).
        """
        if not isinstance(state, dict) or not {"order", "cursor"} <= state.keys():
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"state must be a dict with keys 'order' and 'cursor' (from "
                             f"Batches.state_dict()), got {got}")
        order = None if state["order"] is None else self._check_order(state["order"])
        cursor = state["cursor"]
        if isinstance(cursor, torch.Tensor) and cursor.ndim == 0:
            cursor = cursor.item()
        end = 0 if order is None else len(order)
        if isinstance(cursor, bool) or not isinstance(cursor, int) or not 0 <= cursor <= end:
            raise ValueError(f"state['cursor'] must be an int in 0..{end} (the position in "
                             f"state['order']), got {state['cursor']!r}")
        self.order, self.cursor = order, cursor

    def _check_order(self, order) -> torch.Tensor:
        """A saved order: a permutation of 0..N-1 (N examples), moved to the data's device."""
        if self.data is None:
            raise ValueError("state['order'] must be None for batches drawn from a sampler, "
                             f"got {type(order).__name__}")
        n = self.data.shape[0]
        if (not isinstance(order, torch.Tensor) or order.shape != (n,)
                or order.dtype != torch.long):
            got = f"{order.dtype} {tuple(order.shape)}" if isinstance(order, torch.Tensor) else (
                type(order).__name__)
            raise ValueError(f"state['order'] must be a LongTensor of shape ({n},) (one index "
                             f"per example), got {got}")
        order = order.to(self.data.device)
        if not torch.equal(order.sort().values, torch.arange(n, device=order.device)):
            raise ValueError(f"state['order'] must be a permutation of 0..{n - 1}")
        return order


def _as_device(device) -> torch.device:
    """``device`` as a ``torch.device``, or a ValueError naming ``device``."""
    try:
        return torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device must be a torch.device or a device name such as 'cpu' or "
                         f"'cuda', got {device!r}") from None


class ExponentialMovingAverage:
    r"""A copy ``module`` of a model whose parameters follow
    :math:`\bar\theta \leftarrow r\,\bar\theta + (1 - r)\,\theta` (``r = rate``, :math:`\theta`
    the model's parameters, :math:`\bar\theta` their average).

    Started at the model's current weights; buffers are copied from the model at every
    update. The arithmetic of ``torch.optim.swa_utils.AveragedModel`` with
    ``get_ema_multi_avg_fn(rate)`` (one ``torch._foreach_lerp_``), without its per-step
    reads of a step counter on the device (a host synchronisation on a GPU).
    """

    def __init__(self, model: torch.nn.Module, rate: float) -> None:
        _check_model(model)
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 < rate < 1.0:
            raise ValueError(f"ema_rate must be in (0, 1), got {rate!r}")
        self.rate = float(rate)
        self.module = copy.deepcopy(model).requires_grad_(False)
        self._checked: torch.nn.Module | None = None  # the last model whose shapes matched

    @torch.no_grad()
    def update_parameters(self, model: torch.nn.Module) -> None:
        """One step of the average towards ``model``'s parameters; copy its buffers."""
        averaged = [p.detach() for p in self.module.parameters()]
        current = [p.detach() for p in _check_model(model).parameters()]
        if model is not self._checked:  # once per model: the training step calls this
            if [p.shape for p in current] != [p.shape for p in averaged]:
                raise ValueError(
                    f"model must have the parameters of the averaged model ({len(averaged)} "
                    f"tensors of its shapes), got {type(model).__name__} with {len(current)} of "
                    "other shapes: average one model from start to end")
            self._checked = model
        torch._foreach_lerp_(averaged, current, 1.0 - self.rate)
        for mine, theirs in zip(self.module.buffers(), model.buffers(), strict=True):
            mine.copy_(theirs)


def exponential_moving_average(model: torch.nn.Module, rate: float) -> ExponentialMovingAverage:
    """An :class:`ExponentialMovingAverage` of ``model`` at ``rate``, started at its weights.

    Sampling from the averaged weights gives visibly steadier samples than the last iterate
    (Song & Ermon 2020, Technique 5, rate 0.999).
    """
    return ExponentialMovingAverage(model, rate)


def mixed_precision(device, amp: bool) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """The autocast dtype and gradient scaler of ``amp`` training on ``device``.

    Without ``amp``: (None, None), plain float32. On CUDA: bfloat16 where the GPU computes it
    natively (no scaler needed: bf16 has float32's range), else float16 with a ``GradScaler``
    (older GPUs such as Colab's T4, where PyTorch would only emulate bf16, slowly). Elsewhere
    (the CPU): bfloat16 autocast.
    """
    if not check_flag("amp", amp):
        return None, None
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.float16, torch.amp.GradScaler("cuda")
    return torch.bfloat16, None


def _check_model(model) -> torch.nn.Module:
    """``model`` must be a ``torch.nn.Module`` with parameters (to train or to average)."""
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if next(model.parameters(), None) is None:
        raise ValueError(f"model must have parameters to train, got a {type(model).__name__} "
                         "with none")
    return model


def _as_hook(hook, index: int) -> tuple[int, Callable[[int, float], None]]:
    """A hook as (every, function): a plain callable runs after every step (every = 1).

    A pair ``(every, function)`` may carry a third item, the name of the argument that set
    ``every`` (for instance ``"checkpoint_every"``), which a bad period's error then names.
    """
    if callable(hook):
        return 1, hook
    if not isinstance(hook, (tuple, list)) or len(hook) not in (2, 3) or not callable(hook[1]):
        raise ValueError(f"hooks[{index}] must be a callable hook(done, loss) or a pair "
                         f"(every, hook), got {hook!r}")
    function = getattr(hook[1], "__name__", type(hook[1]).__name__)
    name = hook[2] if len(hook) == 3 else f"the period of hooks[{index}] ({function})"
    return check_positive_int(name, hook[0]), hook[1]


class ScoreMatchingTrainer:
    """A model, its Adam optimiser, an optional EMA of its weights, and the training loop.

    Subclasses define :meth:`per_example_loss` (calling the network as ``self.forward``);
    ``loss``, ``step``, ``train`` and ``run`` come from here. The arguments of the public
    methods are checked once per call; the loop itself (:meth:`run`) does one forward,
    backward and optimiser step per batch and reads the losses every ``log_every`` steps
    (the only synchronisation with the device).

    Parameters
    ----------
    model : nn.Module
        The score model.
    lr : float
        Adam learning rate (betas 0.9, 0.999, PyTorch's defaults; the NCSN paper, App. B.2,
        gives the learning rate 0.001).
    ema_rate : float, optional
        Keep an exponential moving average of the weights in ``self.ema`` (see
        :func:`exponential_moving_average`); :meth:`use_ema_weights` copies it into the model.
    amp : bool
        Mixed precision (see :func:`mixed_precision`): the forward pass and the loss under
        ``torch.autocast``, float32 weights and optimiser. Off by default.
    compile : bool
        Call the network through ``torch.compile`` (off by default; the first steps compile).
    """

    def __init__(self, model: torch.nn.Module, *, lr: float = 1e-3,
                 ema_rate: float | None = None, amp: bool = False, compile: bool = False) -> None:
        self.model = _check_model(model)
        self.lr = check_positive("lr", lr)
        device = next(model.parameters()).device
        fused = {"fused": True} if device.type == "cuda" else {}  # one kernel, no host sync
        self.optimizer = torch.optim.Adam(model.parameters(), lr=self.lr, betas=(0.9, 0.999),
                                          **fused)
        self.ema = None if ema_rate is None else exponential_moving_average(model, ema_rate)
        self.amp_dtype, self.scaler = mixed_precision(device, amp)
        self._device_type = device.type
        self.forward = self._wrap(model)
        if compile:
            self.forward = torch.compile(self.forward)

    def _wrap(self, model: torch.nn.Module):
        """What the losses call as ``self.forward`` (subclasses wrap it, e.g. for DDP)."""
        return model

    def per_example_loss(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The loss of every example of ``x`` (N, *D): shape (N,)."""
        raise NotImplementedError

    def loss(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """The mean of the per-example losses on the batch ``x`` (N, *D): a scalar tensor."""
        return self.per_example_loss(check_batch("x", x), generator).mean()

    def step(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> float:
        """One Adam step on the batch ``x``; returns the loss before the step.

        Raises :class:`TrainingDivergedError` (and leaves the weights untouched) when the
        loss is not finite.
        """
        self.model.train()
        loss = self._loss(check_batch("x", x), generator)
        (value,) = self._read([loss])
        if not math.isfinite(value):
            raise TrainingDivergedError(f"the loss is {value}")
        self._apply(loss)
        return value

    def _loss(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The batch's mean loss, under autocast with ``amp`` (a scalar tensor; no sync)."""
        if self.amp_dtype is None:
            return self.per_example_loss(x, generator).mean()
        with torch.autocast(self._device_type, dtype=self.amp_dtype):
            return self.per_example_loss(x, generator).float().mean()

    def _apply(self, loss: torch.Tensor) -> None:
        """Backward, Adam (through the gradient scaler with float16) and EMA: no sync."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def _read(self, losses: list[torch.Tensor]) -> list[float]:
        """The values of loss tensors, read in one transfer (the synchronisation)."""
        if len(losses) == 1:
            return [float(losses[0].detach())]
        return torch.stack([loss.detach() for loss in losses]).tolist()

    def use_ema_weights(self) -> None:
        """Copy the averaged weights into the model (no-op without an EMA)."""
        if self.ema is not None:
            self.model.load_state_dict(self.ema.module.state_dict())

    def train(
        self,
        data,
        n_steps: int,
        batch_size: int,
        *,
        replacement: bool = True,
        generator: torch.Generator | None = None,
        callback: Callable[[int, float], None] | None = None,
        progress: bool = True,
    ) -> list[float]:
        """Run ``n_steps`` optimiser steps on mini-batches.

        Parameters
        ----------
        data : Tensor, shape (N, *D), or callable
            A data set, or a sampler ``n -> Tensor (n, *D)`` that draws fresh data.
        n_steps : int
            Optimiser steps.
        batch_size : int
            Examples per step.
        replacement : bool
            Draw batches from a tensor with replacement (default) or by shuffled passes
            without replacement (then ``batch_size`` must not exceed N).
        generator : torch.Generator, optional
            Source of the batch indices and of the loss's noise.
        callback : callable, optional
            Called as ``callback(step, loss)`` after every step (``step`` from 0).
        progress : bool
            Show a ``tqdm`` progress bar with the running loss.

        Returns
        -------
        list of float
            The loss of every step.
        """
        n_steps = check_positive_int("n_steps", n_steps)
        if callback is not None and not callable(callback):
            raise ValueError(f"callback must be a callable callback(step, loss) or None, got "
                             f"{type(callback).__name__}")
        batches = Batches(data, batch_size, replacement=replacement, generator=generator)
        hooks = [] if callback is None else [lambda done, value: callback(done - 1, value)]
        return self.run(batches, n_steps, generator=generator, hooks=hooks, progress=progress)

    def run(
        self,
        batches: Iterable[torch.Tensor],
        n_steps: int,
        *,
        generator: torch.Generator | None = None,
        history: list[float] | None = None,
        hooks: Iterable = (),
        progress: bool = True,
        log_every: int = 1,
    ) -> list[float]:
        """The training loop: steps ``len(history) + 1 .. n_steps`` on batches of ``batches``.

        ``history`` (the losses of the steps already done, when resuming) is extended in
        place and returned. The losses stay on the device and are read every ``log_every``
        steps, at the last step, and whenever a hook is due; there they are checked: a
        non-finite loss raises :class:`TrainingDivergedError` naming the step, the steps read
        together and the last finite loss. With ``log_every=1`` the loss is read before the
        update, so a NaN never reaches the weights; with more, the weights may take up to
        ``log_every - 1`` bad steps before the error (a checkpoint is only written after a
        read, so the last one is sound).

        A hook is ``hook(done, loss)``, called after every step (which makes every step read
        its loss), or a pair ``(every, hook)``, called at the reads, which happen at least at
        every multiple of ``every``; ``done`` counts the steps done so far and ``loss`` is
        the last step's (checkpoints, sample grids, callbacks). A pair may carry a third item,
        the name of the argument that set ``every``, for its error message:
        ``(every, hook, "checkpoint_every")``.

        ``n_steps`` (the total, steps already done included) must be a positive int, and
        ``batches`` must not run out before it; every
        batch must be a non-empty floating tensor (N, *D) (its shape checked, not its values:
        a NaN batch makes the loss NaN, which stops training).
        """
        history = [] if history is None else history
        n_steps = check_positive_int("n_steps", n_steps)
        log_every = check_positive_int("log_every", log_every)
        if hooks is None or isinstance(hooks, (str, bytes)) or not isinstance(hooks, Iterable):
            raise ValueError("hooks must be an iterable of hooks hook(done, loss) or pairs "
                             f"(every, hook), got {hooks!r}")
        hooks = [_as_hook(hook, index) for index, hook in enumerate(hooks)]
        batches = iter(batches)
        bar = tqdm(range(len(history), n_steps), initial=len(history), total=n_steps,
                   disable=not progress, desc=type(self).__name__)
        self.model.train()
        pending: list[torch.Tensor] = []  # losses not read yet
        for step in bar:
            batch = next(batches, None)
            if batch is None:
                raise ValueError(
                    f"batches ran out before step {step + 1} of n_steps={n_steps}: pass an "
                    "endless source of batches, such as Batches(data, batch_size), or fewer "
                    "n_steps")
            loss = self._loss(check_batch_shape("every batch of batches", batch), generator)
            if log_every == 1:  # read before the update: the weights never see a NaN loss
                self._check_losses(history, self._read([loss]), step, log_every)
                self._apply(loss)
            else:
                self._apply(loss)
                pending.append(loss.detach())
            done = step + 1
            if pending and (done == n_steps or done % log_every == 0
                            or any(done % every == 0 for every, _ in hooks)):
                self._check_losses(history, self._read(pending), done - len(pending), log_every)
                pending = []
            if not pending:
                for _, hook in hooks:
                    hook(done, history[-1])
                if progress and (log_every > 1 or step % 10 == 0 or done == n_steps):
                    bar.set_postfix(loss=f"{history[-1]:.4g}", refresh=False)
        self.model.eval()
        return history

    @staticmethod
    def _check_losses(history: list[float], values: list[float], first: int, log_every: int):
        """Append the losses of steps ``first, first + 1, ...`` to ``history``; stop at a NaN."""
        for offset, value in enumerate(values):
            if not math.isfinite(value):
                last = f"{history[-1]:.4g}" if history else "none (the first step)"
                read = ("" if log_every == 1 else
                        f" (losses read every {log_every} steps; this read covered steps "
                        f"{first}-{first + len(values) - 1})")
                raise TrainingDivergedError(
                    f"training diverged at step {first + offset}{read}: the loss is {value}; "
                    f"last finite loss {last}. Try a smaller learning rate or a larger noise "
                    "level."
                )
            history.append(value)


class DenoisingScoreMatching(ScoreMatchingTrainer):
    """Train a score model by denoising score matching at one noise level (Vincent 2011).

    The model learns the score of the perturbed density ``p * N(0, sigma^2 I)``
    (see :func:`dsm_loss`).

    Parameters
    ----------
    model : nn.Module
        ``model(x) -> score``, (N, *D) -> (N, *D).
    sigma : float
        Perturbation standard deviation, > 0.
    lr, ema_rate
        As in :class:`ScoreMatchingTrainer`.
    """

    def __init__(self, model: torch.nn.Module, sigma: float, *, lr: float = 1e-3,
                 ema_rate: float | None = None) -> None:
        self.sigma = check_positive("sigma", sigma)
        super().__init__(model, lr=lr, ema_rate=ema_rate)

    def per_example_loss(self, x, generator=None):
        return _dsm_loss(self.forward, x, self.sigma, generator)


class SlicedScoreMatching(ScoreMatchingTrainer):
    """Train a score model by sliced score matching (Song et al. 2019), optionally SSM-VR.

    Parameters
    ----------
    model : nn.Module
        ``model(x) -> score``, (N, *D) -> (N, *D), twice differentiable (softplus, not ReLU).
    n_projections : int
        Random directions per example.
    variance_reduction : bool
        SSM-VR: the norm term in closed form (see :func:`sliced_score_matching_loss`).
    projection : {"gaussian", "rademacher", "sphere"}
        Distribution of the directions.
    lr, ema_rate
        As in :class:`ScoreMatchingTrainer`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        n_projections: int = 1,
        variance_reduction: bool = False,
        projection: str = "gaussian",
        *,
        lr: float = 1e-3,
        ema_rate: float | None = None,
    ) -> None:
        self.n_projections = check_positive_int("n_projections", n_projections)
        if projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
        self.variance_reduction = bool(variance_reduction)
        self.projection = projection
        super().__init__(model, lr=lr, ema_rate=ema_rate)

    def per_example_loss(self, x, generator=None):
        return _sliced_loss(self.forward, x, self.n_projections, self.variance_reduction,
                            self.projection, generator)


class ExactScoreMatching(ScoreMatchingTrainer):
    """Train a score model by exact score matching (Hyvärinen 2005): the reference.

    Parameters
    ----------
    model : nn.Module
        ``model(x) -> score``, twice differentiable.
    lr, ema_rate
        As in :class:`ScoreMatchingTrainer`.
    """

    def per_example_loss(self, x, generator=None):
        return _exact_loss(self.forward, x)


def process_group() -> tuple[int, int]:
    """(rank, world size) of the default ``torch.distributed`` process group, (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class AnnealedDenoisingScoreMatching(ScoreMatchingTrainer):
    """Train a noise-conditional score model over a ladder of noise levels (Song & Ermon 2019).

    The objective of :func:`annealed_dsm_loss`; :func:`scorelab.ncsn.train_NCSN` runs this
    trainer on images.

    **Several processes** (``distributed=True`` inside an initialised ``torch.distributed``
    process group, e.g. under ``torchrun``): the model is wrapped in
    ``DistributedDataParallel`` and every rank is given the same *global* batch (N, *D),
    draws the same levels and noise for all N examples from an identically seeded
    generator, and computes the loss of its own slice of N / world_size examples. DDP
    averages the gradients, so a step equals one process's step on the whole global batch
    up to the order of float sums; the losses read are averaged over the ranks.

    Parameters
    ----------
    model : nn.Module
        ``model(x, labels) -> score`` with integer level labels (N,).
    sigmas : sequence of float or Tensor, shape (L,)
        The noise ladder, strictly decreasing (see :func:`scorelab.noise.check_sigmas`); as
        many levels as the model has, where it says (``n_levels``, or ``num_classes`` as
        the NCSN's network).
    lr, ema_rate, amp, compile
        As in :class:`ScoreMatchingTrainer`.
    distributed : bool
        Shard every batch over the ranks of the process group (see above).
    """

    def __init__(self, model: torch.nn.Module, sigmas, *, lr: float = 1e-3,
                 ema_rate: float | None = None, amp: bool = False, compile: bool = False,
                 distributed: bool = False) -> None:
        self.sigmas = check_sigmas(sigmas)
        check_ladder_fits(_check_model(model), len(self.sigmas))
        self._ladder = self.sigmas  # the ladder on the data's device and dtype (see _ladder_like)
        self.rank, self.world_size = process_group() if distributed else (0, 1)
        super().__init__(model, lr=lr, ema_rate=ema_rate, amp=amp, compile=compile)

    def _ladder_like(self, x: torch.Tensor) -> torch.Tensor:
        """The ladder (L,) on ``x``'s device and dtype, copied there once and kept.

        A copy from the CPU to a GPU makes the host wait for the GPU; copied every step, the
        ladder would synchronise every training step.
        """
        if self._ladder.device != x.device or self._ladder.dtype != x.dtype:
            self._ladder = self.sigmas.to(x)
        return self._ladder

    def _wrap(self, model: torch.nn.Module):
        if self.world_size == 1:
            return model
        device = next(model.parameters()).device
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None)

    def per_example_loss(self, x, generator=None):
        if self.world_size == 1:
            return _annealed_dsm_loss(self.forward, x, self._ladder_like(x), generator=generator)
        n = x.shape[0]
        if n % self.world_size:
            raise ValueError(f"the global batch ({n}) must split evenly over "
                             f"{self.world_size} ranks")
        # Every rank draws the whole batch's levels and noise, in annealed_dsm_loss's order.
        labels = randint(len(self.sigmas), (n,), generator=generator, device=x.device)
        noise = randn_like(x, generator=generator)
        size = n // self.world_size
        mine = slice(self.rank * size, (self.rank + 1) * size)
        return _annealed_dsm_loss(self.forward, x[mine], self._ladder_like(x),
                                  labels=labels[mine], noise=noise[mine])

    def _read(self, losses: list[torch.Tensor]) -> list[float]:
        if self.world_size == 1:
            return super()._read(losses)
        stacked = torch.stack([loss.detach().float() for loss in losses])  # (k,)
        torch.distributed.all_reduce(stacked)  # the sum over the ranks, then their mean
        return (stacked / self.world_size).tolist()
