"""Score-matching objectives and the loops that minimise them.

Per-example losses (module-level functions returning a tensor (N,)) and trainers that hold a
model and its Adam optimiser (``.loss``, ``.step``, ``.train``).

References
----------
Hyvärinen (2005), *Estimation of non-normalized statistical models by score matching*.
Vincent (2011), *A connection between score matching and denoising autoencoders*.
Song, Garg, Shi & Ermon (2019), *Sliced score matching*.
Song & Ermon (2019), *Generative Modeling by Estimating Gradients of the Data Distribution*.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from tqdm.auto import tqdm

from scorelab._tensors import broadcast_like, sum_except_batch
from scorelab._validation import check_batch, check_positive, check_positive_int


def annealed_dsm_loss(
    model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-example annealed denoising score-matching loss (Song & Ermon 2019, Eq. 5-6).

    For each example a noise level ``sigma_i`` is drawn (or given by ``labels``), the
    example is perturbed as ``x~ = x + sigma_i z`` and the model is regressed onto the
    score of the perturbation kernel, ``-(x~ - x) / sigma_i^2 = -z / sigma_i``, with the
    weighting ``lambda(sigma) = sigma^2`` that makes every level contribute equally:

        l_i = 1/2 * sigma_i^2 * || s(x~, i) + z / sigma_i ||^2
            = 1/2 * || sigma_i s(x~, i) + z ||^2.

    Parameters
    ----------
    model : callable
        ``model(x_noisy, labels)`` with ``x_noisy`` of shape (N, *D) and ``labels`` a
        LongTensor (N,) of level indices; returns a score of shape (N, *D).
    x : Tensor, shape (N, *D)
        Clean data (2-D points or images).
    sigmas : Tensor, shape (L,)
        The noise ladder, indexed by ``labels``.
    labels : LongTensor, shape (N,), optional
        Level of each example; drawn uniformly from ``0..L-1`` when omitted.
    generator : torch.Generator, optional
        Source of the level draws and the noise.

    Returns
    -------
    Tensor, shape (N,)
        The per-example losses; the caller takes the mean.
    """
    if labels is None:
        labels = torch.randint(len(sigmas), (x.shape[0],), generator=generator, device="cpu")
        labels = labels.to(x.device)
    sigma = broadcast_like(sigmas.to(x)[labels], x)  # (N, 1, ..., 1)
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
    score = model(x + sigma * noise, labels)
    return 0.5 * sum_except_batch((sigma * score + noise) ** 2)


# ---------------------------------------------------------------------------------------------
# Per-example losses: each takes a model and a batch (N, *D) and returns (N,)
# ---------------------------------------------------------------------------------------------

PROJECTIONS = ("gaussian", "rademacher", "sphere")


def _scores(model, x: torch.Tensor, *args) -> torch.Tensor:
    """Run the model and check that it returns a score shaped like its input."""
    score = model(x, *args)
    if not isinstance(score, torch.Tensor) or score.shape != x.shape:
        got = tuple(score.shape) if isinstance(score, torch.Tensor) else type(score).__name__
        raise ValueError(
            f"model must return a score of the input's shape {tuple(x.shape)}, got {got}"
        )
    return score


def _randn_like(x: torch.Tensor, generator: torch.Generator | None, shape=None) -> torch.Tensor:
    shape = x.shape if shape is None else shape
    return torch.randn(shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)


def dsm_loss(
    model, x: torch.Tensor, sigma: float, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Per-example denoising score-matching loss (Vincent 2011, Eq. 10 with a Gaussian kernel).

    The data are perturbed as ``x~ = x + sigma z``, ``z ~ N(0, I)``, and the model is regressed
    onto the score of the kernel ``q_sigma(x~ | x)``, ``-(x~ - x) / sigma^2 = -z / sigma``:

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
    sigma = check_positive("sigma", sigma)
    noise = _randn_like(x, generator)
    score = _scores(model, x + sigma * noise)
    return 0.5 * sum_except_batch((score + noise / sigma) ** 2)


def _projections(
    x: torch.Tensor, n_projections: int, projection: str, generator: torch.Generator | None
) -> torch.Tensor:
    """Random directions v with E[v v^T] = I, shape (M, N, *D)."""
    v = _randn_like(x, generator, shape=(n_projections, *x.shape))  # (M, N, *D)
    if projection == "rademacher":
        return v.sign()
    if projection == "sphere":
        # Unit-sphere directions must be scaled by sqrt(D) so that E[v v^T] = I; without
        # the scaling the loss learns score / D (the origin's bug).
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
    """Per-example sliced score-matching loss (Song, Garg, Shi & Ermon 2019, Eq. 7-8).

    For random directions ``v`` with ``E[v v^T] = I`` (Gaussian, Rademacher, or unit-sphere
    scaled by sqrt(D)):

        l = mean_v [ v^T (d s / d x) v + 1/2 (v^T s)^2 ]            (SSM, Eq. 7)
        l = mean_v [ v^T (d s / d x) v ] + 1/2 ||s||^2                (SSM-VR, Eq. 8)

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
    n_projections = check_positive_int("n_projections", n_projections)
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
    v = _projections(x, n_projections, projection, generator)  # (M, N, *D)
    # One forward pass on M copies of the batch gives every (x, v) pair its own graph.
    x_copies = x.detach().unsqueeze(0).expand_as(v).reshape(-1, *x.shape[1:])  # (M N, *D)
    x_copies = x_copies.clone().requires_grad_(True)
    v = v.reshape(x_copies.shape)  # (M N, *D)
    score = _scores(model, x_copies)  # (M N, *D)
    # grad_x (v . s) = (ds/dx)^T v; dotting with v again gives v^T (ds/dx) v.
    jacobian_v = torch.autograd.grad((score * v).sum(), x_copies, create_graph=True)[0]
    trace_term = sum_except_batch(jacobian_v * v)  # (M N,)
    if variance_reduction:
        norm_term = 0.5 * sum_except_batch(score**2)  # (M N,)
    else:
        norm_term = 0.5 * sum_except_batch(score * v) ** 2  # (M N,)
    return (trace_term + norm_term).reshape(n_projections, x.shape[0]).mean(dim=0)  # (N,)


def exact_score_matching_loss(model, x: torch.Tensor) -> torch.Tensor:
    """Per-example score-matching loss of Hyvärinen (2005, Eq. 4), the trace taken exactly.

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
    x = x.detach().clone().requires_grad_(True)
    score = _scores(model, x)
    flat_score = score.reshape(x.shape[0], -1)  # (N, D')
    trace = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for i in range(flat_score.shape[1]):
        # Summing over the batch is safe: example n's score depends on x_n only.
        gradient = torch.autograd.grad(flat_score[:, i].sum(), x, create_graph=True)[0]
        trace = trace + gradient.reshape(x.shape[0], -1)[:, i]
    return trace + 0.5 * sum_except_batch(score**2)


# ---------------------------------------------------------------------------------------------
# Trainers: a model, an Adam optimiser and a loop
# ---------------------------------------------------------------------------------------------


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


def _batches(data, batch_size: int, replacement: bool, generator: torch.Generator | None):
    """An endless iterator of batches drawn from a tensor (N, *D) or a sampler ``n -> batch``.

    The arguments are checked here, before the first batch is drawn.
    """
    if callable(data) and not isinstance(data, torch.Tensor):
        return (data(batch_size) for _ in iter(int, 1))
    if not isinstance(data, torch.Tensor) or data.ndim < 2:
        raise ValueError("data must be a tensor of shape (N, *D) or a callable n -> batch")
    n = data.shape[0]
    if n == 0:
        raise ValueError("data must hold at least one example, got an empty tensor")
    if replacement:
        return (data[torch.randint(n, (batch_size,), generator=generator)] for _ in iter(int, 1))
    if batch_size > n:
        raise ValueError(
            f"batch_size ({batch_size}) must not exceed the number of examples ({n}) "
            "when sampling without replacement"
        )
    return _shuffled_passes(data, batch_size, generator)


def _shuffled_passes(data: torch.Tensor, batch_size: int, generator: torch.Generator | None):
    while True:
        # Shuffle once per pass over the data; the incomplete last batch is dropped.
        order = torch.randperm(data.shape[0], generator=generator)
        for start in range(0, data.shape[0] - batch_size + 1, batch_size):
            yield data[order[start : start + batch_size]]


class _ScoreMatchingTrainer:
    """Shared optimiser, step and loop; subclasses define ``per_example_loss``."""

    def __init__(self, model: torch.nn.Module, *, lr: float = 1e-3) -> None:
        self.model = model
        self.lr = check_positive("lr", lr)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=self.lr)

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
        loss = self.loss(x, generator=generator)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise TrainingDivergedError(f"the loss is {value}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return value

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
            Called as ``callback(step, loss)`` after every step.
        progress : bool
            Show a ``tqdm`` progress bar with the running loss.

        Returns
        -------
        list of float
            The loss of every step.
        """
        n_steps = check_positive_int("n_steps", n_steps)
        batch_size = check_positive_int("batch_size", batch_size)
        batches = _batches(data, batch_size, replacement, generator)
        history: list[float] = []
        bar = tqdm(range(n_steps), disable=not progress, desc=type(self).__name__)
        for step in bar:
            try:
                value = self.step(next(batches), generator=generator)
            except TrainingDivergedError as error:
                last = f"{history[-1]:.4g}" if history else "none (the first step)"
                raise TrainingDivergedError(
                    f"training diverged at step {step}: {error}; last finite loss {last}. "
                    "Try a smaller learning rate or a larger noise level."
                ) from None
            history.append(value)
            if callback is not None:
                callback(step, value)
            if step % 10 == 0 or step == n_steps - 1:
                bar.set_postfix(loss=f"{value:.4g}")
        self.model.eval()
        return history


class DenoisingScoreMatching(_ScoreMatchingTrainer):
    """Train a score model by denoising score matching at one noise level (Vincent 2011).

    The model learns the score of the perturbed density ``p * N(0, sigma^2 I)``
    (see :func:`dsm_loss`).

    Parameters
    ----------
    model : nn.Module
        ``model(x) -> score``, (N, *D) -> (N, *D).
    sigma : float
        Perturbation standard deviation, > 0.
    lr : float
        Adam learning rate.
    """

    def __init__(self, model: torch.nn.Module, sigma: float, *, lr: float = 1e-3) -> None:
        self.sigma = check_positive("sigma", sigma)
        super().__init__(model, lr=lr)

    def per_example_loss(self, x, generator=None):
        return dsm_loss(self.model, x, self.sigma, generator=generator)


class SlicedScoreMatching(_ScoreMatchingTrainer):
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
    lr : float
        Adam learning rate.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        n_projections: int = 1,
        variance_reduction: bool = False,
        projection: str = "gaussian",
        *,
        lr: float = 1e-3,
    ) -> None:
        self.n_projections = check_positive_int("n_projections", n_projections)
        if projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
        self.variance_reduction = bool(variance_reduction)
        self.projection = projection
        super().__init__(model, lr=lr)

    def per_example_loss(self, x, generator=None):
        return sliced_score_matching_loss(
            self.model,
            x,
            n_projections=self.n_projections,
            variance_reduction=self.variance_reduction,
            projection=self.projection,
            generator=generator,
        )


class ExactScoreMatching(_ScoreMatchingTrainer):
    """Train a score model by exact score matching (Hyvärinen 2005): the reference.

    Parameters
    ----------
    model : nn.Module
        ``model(x) -> score``, twice differentiable.
    lr : float
        Adam learning rate.
    """

    def per_example_loss(self, x, generator=None):
        return exact_score_matching_loss(self.model, x)


class AnnealedDenoisingScoreMatching(_ScoreMatchingTrainer):
    """Train a noise-conditional score model over a ladder of noise levels (Song & Ermon 2019).

    Parameters
    ----------
    model : nn.Module
        ``model(x, labels) -> score`` with integer level labels (N,).
    sigmas : Tensor, shape (L,)
        The noise levels, all > 0.
    lr : float
        Adam learning rate.
    """

    def __init__(self, model: torch.nn.Module, sigmas: torch.Tensor, *, lr: float = 1e-3) -> None:
        sigmas = torch.as_tensor(sigmas, dtype=torch.get_default_dtype()).reshape(-1)
        valid = len(sigmas) > 0 and bool((sigmas > 0).all()) and bool(torch.isfinite(sigmas).all())
        if not valid:
            raise ValueError(f"sigmas must be a non-empty tensor of positive levels, got {sigmas}")
        if len(sigmas) > 1 and not bool((sigmas[1:] < sigmas[:-1]).all()):
            raise ValueError(f"sigmas must be strictly decreasing (largest noise first, the order "
                             f"of geometric_sigmas and the sampler), got {sigmas}")
        self.sigmas = sigmas
        super().__init__(model, lr=lr)

    def per_example_loss(self, x, generator=None):
        return annealed_dsm_loss(self._checked_model, x, self.sigmas, generator=generator)

    def _checked_model(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return _scores(self.model, x, labels)
