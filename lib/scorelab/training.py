"""Score-matching objectives and the loops that minimise them.

References
----------
Song & Ermon (2019), *Generative Modeling by Estimating Gradients of the Data Distribution*.
"""

from __future__ import annotations

import torch

from scorelab._tensors import broadcast_like, sum_except_batch


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
