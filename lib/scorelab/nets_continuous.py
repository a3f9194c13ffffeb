r"""A score network conditioned on a continuous noise level sigma, for low-dimensional data.

The NCSN of chapter 6 knows L noise levels by their index; the samplers and likelihoods of
:mod:`scorelab.sde` query the score at any :math:`\sigma \in [\sigma_{\min}, \sigma_{\max}]`.
:class:`SigmaConditionedMLP` takes :math:`\sigma` itself, through Fourier features of
:math:`\log \sigma` (as Song et al. 2021's networks for the VE SDE embed it, with random
Fourier features; here the frequencies are fixed), and is called as ``net(x, sigma)`` with
sigma a tensor (N,): :func:`scorelab.scores.as_score_fn` (without ``sigmas``) turns it into
the score contract.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from scorelab._validation import check_positive, check_positive_int, check_positive_values

__all__ = ["SigmaConditionedMLP"]


class SigmaConditionedMLP(nn.Module):
    r"""An MLP score model :math:`s_\theta(x, \sigma)` for points x (N, D) at noise sigma (N,).

    With :math:`c(\sigma) = 1 / \sqrt{\sigma_d^2 + \sigma^2}` (:math:`\sigma_d` the data's scale),

    .. math:: s_\theta(x, \sigma) = c(\sigma) \big( F_\theta(c(\sigma) x,\; e(\log\sigma)) - c(\sigma) x \big),

    where :math:`e` holds :math:`\log \sigma` itself and ``n_frequencies`` sines and cosines of
    it (2 n_f + 1 features, n_f = ``n_frequencies``; fixed frequencies, geometric from 0.25 to 8 per unit of log sigma) and
    :math:`F_\theta` is the MLP. The input scaling keeps the network's inputs of order one at
    every noise level, and with :math:`F_\theta = 0` the model is the score of
    :math:`N(0, (\sigma_d^2 + \sigma^2) I)`, the right answer at large sigma for centred data: the
    network learns the correction.

    Parameters
    ----------
    input_dim : int
        D.
    hidden_dims : sequence of int
        Widths of the hidden layers (SiLU activations: smooth, so the divergence is too).
    n_frequencies : int
        Frequencies n_f of the sigma embedding (2 features each, plus log sigma itself).
    data_scale : float
        :math:`\sigma_d`, about the data's standard deviation per coordinate.
    """

    def __init__(self, input_dim: int = 2, hidden_dims: Sequence[int] = (128, 128), *,
                 n_frequencies: int = 8, data_scale: float = 1.0) -> None:
        super().__init__()
        self.input_dim = check_positive_int("input_dim", input_dim)
        n_frequencies = check_positive_int("n_frequencies", n_frequencies)
        self.data_scale = check_positive("data_scale", data_scale)
        if isinstance(hidden_dims, (str, bytes)) or not isinstance(hidden_dims, Sequence):
            raise ValueError(f"hidden_dims must be a non-empty sequence of positive integers, "
                             f"such as (128, 128), got {hidden_dims!r}")
        hidden_dims = tuple(hidden_dims)
        if not hidden_dims or any(isinstance(h, bool) or not isinstance(h, int) or h < 1
                                  for h in hidden_dims):
            raise ValueError(f"hidden_dims must be a non-empty sequence of positive integers, "
                             f"got {hidden_dims!r}")
        frequencies = torch.logspace(math.log10(0.25), math.log10(8.0), n_frequencies)
        self.register_buffer("frequencies", frequencies)  # (F,)
        layers: list[nn.Module] = []
        width = self.input_dim + 2 * n_frequencies + 1
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, self.input_dim))
        self.net = nn.Sequential(*layers)

    def embed(self, sigma: torch.Tensor) -> torch.Tensor:
        """The sigma features (N, 2F + 1): log sigma, its sines and cosines."""
        log_sigma = sigma.log()[:, None]  # (N, 1)
        angles = log_sigma * self.frequencies.to(sigma)  # (N, F)
        return torch.cat([log_sigma, angles.sin(), angles.cos()], dim=1)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The score (N, D) at points ``x`` (N, D) and noise levels ``sigma`` (N,)."""
        if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != self.input_dim:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be a tensor of shape (N, {self.input_dim}), got {got}")
        if not isinstance(sigma, torch.Tensor) or sigma.shape != (x.shape[0],):
            got = tuple(sigma.shape) if isinstance(sigma, torch.Tensor) else type(sigma).__name__
            raise ValueError(f"sigma must be a tensor of shape ({x.shape[0]},) (one noise level "
                             f"per point; scorelab.scores.as_score_fn(net) makes one from a "
                             f"float), got {got}")
        if x.dtype != self.frequencies.dtype:
            raise ValueError(f"x must have the network's dtype {self.frequencies.dtype}, got "
                             f"{x.dtype} (convert the data, or the network with .to({x.dtype}))")
        sigma = sigma.to(x)
        # The values are read on the CPU only: on an accelerator every training step would wait.
        if sigma.device.type == "cpu":
            check_positive_values("sigma", sigma)
        scale = torch.rsqrt(self.data_scale**2 + sigma.square())[:, None]  # (N, 1)
        inputs = scale * x
        correction = self.net(torch.cat([inputs, self.embed(sigma)], dim=1))
        return scale * (correction - inputs)
