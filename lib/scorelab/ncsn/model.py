"""NCSN: CondRefineNetDilated, its noise ladder, the annealed DSM loss, training and sampling.

Song & Ermon (2019), *Generative Modeling by Estimating Gradients of the Data Distribution*:
the loss is their Eq. 5-6 (with lambda(sigma) = sigma^2), the sampler their Algorithm 1.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from scorelab._validation import check_positive, check_positive_int
from scorelab.ncsn.refinenet import CondRefineNetDilated

DEFAULT_SIGMA_MAX = 1.0
DEFAULT_SIGMA_MIN = 0.01
DEFAULT_N_LEVELS = 10


def default_sigmas(
    sigma_max: float = DEFAULT_SIGMA_MAX,
    sigma_min: float = DEFAULT_SIGMA_MIN,
    n_levels: int = DEFAULT_N_LEVELS,
) -> torch.Tensor:
    """The geometric ladder sigma_1 = sigma_max > ... > sigma_L = sigma_min, shape (L,)."""
    check_positive("sigma_max", sigma_max)
    check_positive("sigma_min", sigma_min)
    check_positive_int("n_levels", n_levels)
    return torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), n_levels))


def _check_sigmas(sigmas) -> torch.Tensor:
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32).flatten()
    if sigmas.numel() < 1 or not torch.isfinite(sigmas).all() or (sigmas <= 0).any():
        raise ValueError(f"sigmas must be finite positive numbers, got {sigmas.tolist()}")
    if (sigmas[1:] >= sigmas[:-1]).any():
        raise ValueError(
            f"sigmas must be strictly decreasing (sigma_1 > ... > sigma_L), got {sigmas.tolist()}"
        )
    return sigmas


class NCSN(nn.Module):
    r"""A noise-conditional score network with its noise ladder.

    Holds a :class:`CondRefineNetDilated` and the decreasing noise ladder
    :math:`\sigma_1 > \dots > \sigma_L` it was trained on; ``score(x, sigma)`` is the
    network's estimate of :math:`\nabla_x \log p_\sigma(x)`, the score the annealed
    Langevin sampler needs.

    Parameters
    ----------
    channels : int
        Image channels C.
    image_size : int
        Image height = width H (even).
    ngf : int
        Base width of the network.
    sigmas : sequence of float or Tensor (L,), optional
        Strictly decreasing positive noise levels. Default: the paper's geometric ladder
        from 1 to 0.01 with L = 10 (for MNIST/CIFAR-10 on the [0, 1] scale).
    step_size, n_steps_each : float, int
        Default sampling settings (paper convention, see :meth:`sample`): the paper's
        epsilon = 2e-5 in the authors' code is 4e-5 in ours, and 100 steps per level.
    device : str or torch.device
        Where the network lives.

    Notes
    -----
    **Choosing the ladder for other data** (Song & Ermon 2020, NCSNv2, Techniques 1-2):
    take :math:`\sigma_1` about the largest Euclidean distance between two training
    points, so that the first level can move a sample between any two modes;
    :math:`\sigma_L` below the smallest detail of interest (the paper's 0.01 on [0, 1]
    images); and a geometric ratio :math:`\gamma` with
    :math:`\Phi(\sqrt{2D}(\gamma-1)+3\gamma) - \Phi(\sqrt{2D}(\gamma-1)-3\gamma) \approx 0.5`
    so that neighbouring perturbed distributions overlap. For the 8x8 digits on [0, 1]
    (D = 64, largest pairwise distance 4.81) this gives :math:`\sigma_1 = 5`,
    :math:`\sigma_L = 0.01` and L = 22 (gamma = 1.344), the ladder of the shipped model.

    **Data scale.** Images live on [0, 1]; nothing is rescaled inside the model.
    """

    def __init__(
        self,
        *,
        channels: int = 1,
        image_size: int = 8,
        ngf: int = 32,
        sigmas: Sequence[float] | torch.Tensor | None = None,
        step_size: float = 4e-5,
        n_steps_each: int = 100,
        device: str | torch.device = "cpu",
    ):
        super().__init__()
        sigmas = _check_sigmas(default_sigmas() if sigmas is None else sigmas)
        self.step_size = check_positive("step_size", step_size)
        self.n_steps_each = check_positive_int("n_steps_each", n_steps_each)
        self.net = CondRefineNetDilated(channels, image_size, ngf, num_classes=len(sigmas))
        self.register_buffer("sigmas", sigmas)  # (L,)
        self.to(device)

    @property
    def device(self) -> torch.device:
        return self.sigmas.device

    def config(self) -> dict:
        """The constructor arguments as plain Python types (stored in every checkpoint)."""
        return {
            "channels": self.net.channels,
            "image_size": self.net.image_size,
            "ngf": self.net.ngf,
            "sigmas": [float(s) for s in self.sigmas.cpu()],
        }

    def check_images(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Raise ValueError unless ``x`` is a floating tensor (N, C, H, H) of this model's shape."""
        shape = (self.net.channels, self.net.image_size, self.net.image_size)
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != shape:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name} must have shape (N, {', '.join(map(str, shape))}), got {got}")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
        return x

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Score estimate at level indices ``labels`` (N,) for images ``x`` (N, C, H, H)."""
        return self.net(self.check_images("x", x), labels)

    def level(self, sigma: float) -> int:
        """Index i of ``sigma`` in the ladder (relative tolerance 1e-4), else ValueError."""
        sigma = check_positive("sigma", sigma)
        ladder = self.sigmas.cpu().double()
        index = int(torch.argmin((ladder.log() - math.log(sigma)).abs()))
        if abs(ladder[index].item() - sigma) > 1e-4 * sigma:
            raise ValueError(
                f"sigma must be one of the model's noise levels {ladder.tolist()}, got {sigma}"
            )
        return index

    def score(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """The estimated score of the perturbed density p_sigma at ``x`` (N, C, H, H)."""
        labels = torch.full((x.shape[0],), self.level(sigma), dtype=torch.long, device=x.device)
        return self(x, labels)

    def loss(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Annealed DSM loss (Eq. 6, lambda = sigma^2), the mean over the batch ``x`` (N, C, H, H)."""
        from scorelab.training import annealed_dsm_loss

        x = self.check_images("x", x)
        return annealed_dsm_loss(self, x, self.sigmas, generator=generator).mean()

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        n_steps_each: int | None = None,
        step_size: float | None = None,
        snapshots: bool = False,
        record_every: int | None = None,
        denoise: bool = True,
        progress: bool = False,
    ):
        r"""Draw ``n`` images by annealed Langevin dynamics (Algorithm 1).

        Starts from uniform noise on [0, 1] (as the paper) and runs ``n_steps_each`` steps
        at every level with step :math:`\alpha_i = \epsilon\,\sigma_i^2/\sigma_L^2`,
        :math:`x \leftarrow x + \tfrac{\alpha_i}{2} s(x, \sigma_i) + \sqrt{\alpha_i}\, z`
        (paper convention; the authors' ``step_lr`` is half our ``step_size``). With
        ``denoise`` a last step :math:`x + \sigma_L^2 s(x, \sigma_L)` removes the noise of
        the smallest level (NCSNv2).

        Parameters
        ----------
        n : int
            Number of images.
        generator : torch.Generator, optional
            CPU generator for the initial noise and the Langevin noise.
        n_steps_each, step_size : int, float, optional
            Steps per level and epsilon; default: the model's ``n_steps_each``/``step_size``.
        snapshots : bool
            Also return the trajectory (images along the way).
        record_every : int, optional
            With ``snapshots``: keep every ``record_every``-th step (default ``n_steps_each``,
            one image per level).
        denoise : bool
            Finish with the denoising step.
        progress : bool
            Show a progress bar.

        Returns
        -------
        Tensor, shape (n, C, H, H)
            Images clamped to the data's [0, 1] scale; with ``snapshots`` a pair (images,
            trajectory (T, n, C, H, H), also clamped).
        """
        from scorelab.langevin import annealed_langevin_dynamics

        n = check_positive_int("n", n)
        n_steps_each = self.n_steps_each if n_steps_each is None else n_steps_each
        step_size = self.step_size if step_size is None else step_size
        shape = (n, self.net.channels, self.net.image_size, self.net.image_size)
        x0 = torch.rand(shape, generator=generator).to(self.device)  # uniform prior on [0, 1]
        was_training = self.training
        self.eval()
        try:
            out = annealed_langevin_dynamics(
                self.score, x0, self.sigmas.cpu(), step_size, n_steps_each, generator=generator,
                return_trajectory=snapshots, record_every=record_every or n_steps_each,
                progress=progress, denoise=denoise,
            )
        finally:
            self.train(was_training)
        if snapshots:
            images, trajectory = out
            return images.clamp(0, 1), trajectory.clamp(0, 1)
        return out.clamp(0, 1)


class EMA:
    """Exponential moving average of a model's parameters: ``avg <- rate * avg + (1 - rate) * p``.

    Sampling from the averaged weights gives visibly steadier samples than the last
    iterate (Song & Ermon 2020, Technique 5, rate 0.999).
    """

    def __init__(self, model: nn.Module, rate: float = 0.999):
        if not 0.0 < rate < 1.0:
            raise ValueError(f"ema_rate must be in (0, 1), got {rate!r}")
        self.rate = rate
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for key, value in model.state_dict().items():
            if value.is_floating_point():
                self.shadow[key].mul_(self.rate).add_(value, alpha=1 - self.rate)
            else:
                self.shadow[key].copy_(value)


def _next_batch(
    data: torch.Tensor, state: dict, batch_size: int, generator: torch.Generator
) -> torch.Tensor:
    """Next batch of a shuffled pass over ``data``; ``state`` holds the permutation and cursor."""
    if state["cursor"] + batch_size > len(state["order"]):
        state["order"] = torch.randperm(len(data), generator=generator)
        state["cursor"] = 0
    chosen = state["order"][state["cursor"] : state["cursor"] + batch_size]
    state["cursor"] += batch_size
    return data[chosen]


def train_NCSN(
    model: NCSN,
    data: torch.Tensor,
    *,
    n_steps: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    ema_rate: float | None = 0.999,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    sample_every: int | None = None,
    n_samples: int = 64,
    resume: bool = False,
    progress: bool = True,
    callback: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``model`` with the annealed DSM loss (Eq. 6) and Adam.

    Each step draws a batch from a shuffled pass over ``data`` (a new permutation every
    epoch), a noise level per example and the noise, all from one ``torch.Generator``
    seeded with ``seed``, so a run is reproducible and resumable: a checkpoint holds the
    model, the optimiser, the EMA weights, the step, the generator state and the data
    order, and ``resume=True`` continues from the latest one in ``out_dir`` bit for bit.

    Parameters
    ----------
    model : NCSN
        Trained in place.
    data : Tensor, shape (N, C, H, H)
        Training images on [0, 1] (on any device; batches are moved to the model's).
    n_steps : int
        Total number of optimiser steps (including those done before a resume).
    batch_size, lr : int, float
        Adam with betas (0.9, 0.999) as in the paper.
    ema_rate : float or None
        Keep an exponential moving average of the weights (None: none). At the end the
        model holds the EMA weights when there is one.
    seed : int
        Seeds the generator (ignored on resume: the generator state comes from the checkpoint).
    out_dir : path, optional
        Folder for ``checkpoints/step_XXXXXXX.pt`` and ``samples_step_XXXXXXX.png``.
    checkpoint_every, sample_every : int, optional
        Write a checkpoint / a sample grid every that many steps (needs ``out_dir``).
        A checkpoint is always written at the last step when ``out_dir`` is given.
    n_samples : int
        Images in each sample grid.
    resume : bool
        Continue from the latest checkpoint in ``out_dir`` (start fresh if there is none).
    progress : bool
        Show a tqdm bar with the loss.
    callback : callable, optional
        ``callback(step, loss)`` after every step.

    Returns
    -------
    list of float
        Loss of every step (of the whole run, also across a resume).
    """
    from tqdm.auto import tqdm

    from scorelab.ncsn import checkpoints

    n_steps = check_positive_int("n_steps", n_steps)
    batch_size = check_positive_int("batch_size", batch_size)
    check_positive("lr", lr)
    model.check_images("data", data)
    if batch_size > len(data):
        raise ValueError(f"batch_size must be at most len(data) = {len(data)}, got {batch_size}")
    if (checkpoint_every or sample_every or resume) and out_dir is None:
        raise ValueError("out_dir is required for checkpoint_every, sample_every or resume")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999))
    ema = EMA(model, ema_rate) if ema_rate is not None else None
    generator = torch.Generator().manual_seed(seed)
    order = {"order": torch.randperm(len(data), generator=generator), "cursor": 0}
    losses: list[float] = []
    step = 0
    if resume and checkpoints.latest_checkpoint(out_dir) is not None:
        state = checkpoints.load_training_state(checkpoints.latest_checkpoint(out_dir), model=model)
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.shadow = state["ema"]
        generator.set_state(state["generator"])
        order = {"order": state["data_order"], "cursor": state["data_cursor"]}
        losses, step = list(state["losses"]), state["step"]
    model.train()
    bar = tqdm(
        range(step, n_steps), initial=step, total=n_steps, disable=not progress, desc="train_NCSN"
    )
    for step in bar:
        x = _next_batch(data, order, batch_size, generator).to(model.device)
        loss = model.loss(x, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update(model)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        done = step + 1
        if callback is not None:
            callback(done, losses[-1])
        due = done == n_steps or (checkpoint_every and done % checkpoint_every == 0)
        if out_dir is not None and due:
            checkpoints.save_checkpoint(
                out_dir, model=model, optimizer=optimizer, ema=ema and ema.shadow, step=done,
                generator=generator, data_order=order, losses=losses,
            )
        if sample_every and done % sample_every == 0:
            _write_sample_grid(model, ema, out_dir, done, n_samples, seed)
    if ema is not None:
        model.load_state_dict(ema.shadow)
    return losses


def _write_sample_grid(
    model: NCSN, ema: EMA | None, out_dir, step: int, n_samples: int, seed: int
) -> None:
    """Sample the (EMA) weights into ``out_dir/samples_step_XXXXXXX.png``; restore the weights."""
    import matplotlib.pyplot as plt

    current = {k: v.clone() for k, v in model.state_dict().items()}
    if ema is not None:
        model.load_state_dict(ema.shadow)
    try:
        # A separate generator, so that drawing samples does not change the training stream.
        figure = image_samples(model, n=n_samples, generator=torch.Generator().manual_seed(seed))
        figure.savefig(os.path.join(out_dir, f"samples_step_{step:07d}.png"), dpi=100)
        plt.close(figure)
    finally:
        model.load_state_dict(current)


def image_samples(
    model: NCSN,
    *,
    n: int = 64,
    nrow: int | None = None,
    generator: torch.Generator | None = None,
    images: torch.Tensor | None = None,
    **sample_kwargs,
):
    """A figure with a grid of ``n`` samples of ``model`` (or of the given ``images``).

    Parameters
    ----------
    model : NCSN
        Sampled with ``model.sample(n, generator=generator, **sample_kwargs)``.
    n : int
        Number of images.
    nrow : int, optional
        Images per row (default: about sqrt(n)).
    images : Tensor (n, C, H, W), optional
        Draw these instead of sampling.

    Returns
    -------
    matplotlib.figure.Figure
        The caller saves or shows it (and closes it).
    """
    import matplotlib.pyplot as plt

    from scorelab.plotting import image_grid

    if images is None:
        images = model.sample(n, generator=generator, **sample_kwargs)
    images = images.detach().cpu()
    nrow = nrow or max(1, math.ceil(math.sqrt(len(images))))
    figure, ax = plt.subplots(figsize=(0.5 * nrow, 0.5 * math.ceil(len(images) / nrow)))
    image_grid(images, nrow=nrow, ax=ax)
    ax.set_axis_off()
    figure.tight_layout(pad=0.1)
    return figure
