"""NCSN: CondRefineNetDilated with the noise ladder it was trained on, its loss and its sampler.

Song & Ermon (2019), *Generative Modeling by Estimating Gradients of the Data Distribution*:
the loss is their Eq. 5-6 (with lambda(sigma) = sigma^2), the sampler their Algorithm 1.
Training lives in :mod:`scorelab.ncsn.training`, checkpoints in :mod:`scorelab.ncsn.checkpoints`
and figures in :mod:`scorelab.plotting`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from scorelab._tensors import rand
from scorelab._validation import check_positive, check_positive_int, clamp_to_unit_interval
from scorelab.langevin import annealed_langevin_dynamics
from scorelab.ncsn.refinenet import CondRefineNetDilated, check_images
from scorelab.noise import check_sigmas, geometric_sigmas
from scorelab.scores import as_score_fn
from scorelab.training import annealed_dsm_loss

#: The paper's ladder for images on [0, 1]: 10 levels from 1 down to 0.01.
DEFAULT_SIGMA_MAX = 1.0
DEFAULT_SIGMA_MIN = 0.01
DEFAULT_N_LEVELS = 10


def _refresh_host_sigmas(model: "NCSN", incompatible_keys) -> None:
    """After ``load_state_dict``: the CPU copy of the ladder follows the loaded buffer."""
    model._host_sigmas = check_sigmas(model.sigmas)


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
        Base width of the network (at least 2).
    sigmas : sequence of float or Tensor (L,), optional
        Strictly decreasing positive noise levels. Default: the paper's geometric ladder
        from 1 to 0.01 with L = 10 (for MNIST/CIFAR-10 on the [0, 1] scale).
    step_size, n_steps_each : float, int
        Default sampling settings (paper convention, see :meth:`sample`): the authors' code's
        ``step_lr = 2e-5`` (its convention), which is epsilon = 4e-5 in ours (the paper's text
        states 2e-5), and 100 steps per level.
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
        if sigmas is None:
            sigmas = geometric_sigmas(DEFAULT_SIGMA_MAX, DEFAULT_SIGMA_MIN, DEFAULT_N_LEVELS)
        sigmas = check_sigmas(sigmas)
        self.step_size = check_positive("step_size", step_size)
        self.n_steps_each = check_positive_int("n_steps_each", n_steps_each)
        self.net = CondRefineNetDilated(channels, image_size, ngf, num_classes=len(sigmas))
        self.register_buffer("sigmas", sigmas)  # (L,)
        # The ladder's values on the CPU, for the score adapter: reading the buffer on a GPU at
        # every score call (every sampling or inpainting step) would wait for the device.
        self._host_sigmas = sigmas.clone()
        self.register_load_state_dict_post_hook(_refresh_host_sigmas)
        self.to(device)

    @property
    def device(self) -> torch.device:
        return self.sigmas.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the network's weights (float32 unless converted), which inputs must have."""
        return self.net.begin_conv.weight.dtype

    def config(self) -> dict:
        """The constructor arguments as plain Python types (stored in every checkpoint)."""
        return {
            "channels": self.net.channels,
            "image_size": self.net.image_size,
            "ngf": self.net.ngf,
            "sigmas": [float(s) for s in self.sigmas.cpu()],
        }

    def check_images(self, name: str, x: torch.Tensor, *,
                     match_weights: bool = True) -> torch.Tensor:
        """Raise ValueError unless ``x`` is a floating tensor (N, C, H, H) of this model's shape.

        With ``match_weights`` (the default), ``x`` must also have the dtype and the device of
        the model's weights (the error says how to convert it); without, any floating dtype
        and device pass (for data the caller converts, as :func:`train_NCSN` does).
        """
        weight = self.net.begin_conv.weight if match_weights else None
        return check_images(name, x, self.net.channels, self.net.image_size, weight)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Score estimate at level indices ``labels`` (N,) for images ``x`` (N, C, H, H).

        ``labels`` is an integer tensor (N,) of indices into ``self.sigmas`` (``0..L-1``), one
        per image; ``x`` has the model's shape, dtype (float32 unless the model was
        converted) and device. The network checks both on every call (shapes and dtypes;
        the label values on the CPU only, so that a call never waits for an accelerator),
        raising a ValueError that names them.
        """
        return self.net(x, labels)

    def score(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """The estimated score of p_sigma at ``x`` (N, C, H, H): the score contract.

        ``sigma`` is a float or a tensor (N,) of levels of the ladder
        (:func:`scorelab.scores.as_score_fn`); any other value is a ValueError, and so is an
        ``x`` of another shape, dtype or device than the model's (see :meth:`check_images`).
        """
        return as_score_fn(self, self._host_sigmas)(self.check_images("x", x), sigma)

    def loss(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Annealed DSM loss (Eq. 6, lambda = sigma^2): the mean over images ``x`` (N, C, H, H).

        ``x`` must have the model's shape, dtype and device (see :meth:`check_images`).
        """
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
            Source of the initial and the Langevin noise (on the CPU or the model's device).
        n_steps_each, step_size : int, float, optional
            Steps per level and epsilon; default: the model's ``n_steps_each``/``step_size``.
        snapshots, record_every : bool, int
            Also return the trajectory, every ``record_every``-th step of it (a positive
            integer; default ``n_steps_each``: one image per level).
        denoise, progress : bool
            Finish with the denoising step; show a progress bar.

        Returns
        -------
        Tensor, shape (n, C, H, H)
            Images clamped to the data's [0, 1] scale; with ``snapshots`` a pair (images,
            trajectory (F, n, C, H, H) of F recorded frames, also clamped).
        """
        n = check_positive_int("n", n)
        n_steps_each = self.n_steps_each if n_steps_each is None else n_steps_each
        step_size = self.step_size if step_size is None else step_size
        record_every = (n_steps_each if record_every is None
                        else check_positive_int("record_every", record_every))
        shape = (n, self.net.channels, self.net.image_size, self.net.image_size)
        x0 = rand(shape, generator=generator, device=self.device)  # uniform prior on [0, 1]
        was_training = self.training
        self.eval()
        try:
            out = annealed_langevin_dynamics(
                as_score_fn(self, self._host_sigmas), x0, self._host_sigmas, step_size,
                n_steps_each, generator=generator, return_trajectory=snapshots,
                record_every=record_every, progress=progress, denoise=denoise,
            )
        finally:
            self.train(was_training)
        if snapshots:
            images, trajectory = out
            return clamp_to_unit_interval(images, "NCSN.sample"), trajectory.clamp(0, 1)
        return clamp_to_unit_interval(out, "NCSN.sample")
