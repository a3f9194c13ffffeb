"""Conditional instance normalisation with mean correction (Song & Ermon 2019, Appendix A.1).

``ConditionalInstanceNorm2dPlus`` ("CondInstanceNorm++") is how CondRefineNetDilated is told
which noise level it is looking at: every normalisation layer carries one scale, one shift
and one mean-correction coefficient per noise level.
"""

from __future__ import annotations

import torch
from torch import nn

from scorelab._validation import check_int_at_least, check_positive, check_positive_int

#: Why a conditional norm needs two channels: the mean correction divides by their spread.
TWO_CHANNELS = (" (every ConditionalInstanceNorm2dPlus needs 2 channels: its mean correction "
                "divides by the spread of the channel means)")


class ConditionalInstanceNorm2dPlus(nn.Module):
    r"""Instance normalisation with per-level scale, shift and mean correction.

    For a feature map :math:`x_k` (channel :math:`k`) with spatial mean :math:`\mu_k` and
    (biased) standard deviation :math:`s_k`, let :math:`m` and :math:`v` be the mean and (unbiased)
    variance of the channel means :math:`\mu_1..\mu_C` of one example. Then (Song & Ermon 2019,
    Appendix A.1, "CondInstanceNorm++")

    .. math::

        y_k = \gamma[i, k] \left( \frac{x_k - \mu_k}{\sqrt{s_k^2 + \eta}}
              + \delta[i, k] \frac{\mu_k - m}{\sqrt{v + \eta}} \right) + \beta[i, k]

    where :math:`i` is the noise level and :math:`\eta` is ``eps``. Appendix A.1 writes the
    correction outside the :math:`\gamma`; the authors' code, followed here, scales it by
    :math:`\gamma` too. The paper and the code call the mean-correction
    weight :math:`\alpha`; the course writes :math:`\delta`, keeping :math:`\alpha` for the
    Langevin step (chapter 6). Plain instance norm throws the channel means away, which shifts
    colours in generated images; the :math:`\delta` term puts the relative channel means back.

    Parameters
    ----------
    num_features : int
        Number of channels C, at least 2: :math:`v` is the unbiased variance of the C
        channel means, undefined (NaN) for one channel.
    num_classes : int
        Number of noise levels L (rows of the embedding).
    bias : bool
        Whether to learn the shift :math:`\beta`.
    eps : float
        Added to variances before the square root (> 0).

    Notes
    -----
    :math:`\gamma` and :math:`\delta` start at N(1, 0.02^2), :math:`\beta` at zero, as in the
    authors' code. They live in one ``nn.Embedding(num_classes, 3C)`` (2C without bias).
    """

    def __init__(self, num_features: int, num_classes: int, *, bias: bool = True, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features = check_int_at_least(
            "num_features", num_features, 2, TWO_CHANNELS)
        num_classes = check_positive_int("num_classes", num_classes)
        self.bias = bias
        self.eps = check_positive("eps", eps)
        self.embed = nn.Embedding(num_classes, num_features * (3 if bias else 2))
        with torch.no_grad():
            self.embed.weight[:, : 2 * num_features].normal_(1.0, 0.02)
            self.embed.weight[:, 2 * num_features :].zero_()

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` (N, C, H, W) with the parameters of levels ``labels`` (N,)."""
        var, mean = torch.var_mean(x, dim=(2, 3), unbiased=False, keepdim=True)  # (N, C, 1, 1) each
        spread, centre = torch.var_mean(mean, dim=1, keepdim=True)  # (N, 1, 1, 1), unbiased as the authors'
        corrected = (mean - centre) / torch.sqrt(spread + self.eps)  # (N, C, 1, 1)
        params = self.embed(labels)[..., None, None]  # (N, 3C, 1, 1) or (N, 2C, 1, 1)
        gamma, delta = params[:, : self.num_features], params[:, self.num_features : 2 * self.num_features]
        shift = gamma * delta * corrected
        if self.bias:
            shift = shift + params[:, 2 * self.num_features :]
        # gamma (x - mean) / s + shift, written as one scale and one offset per channel so that
        # the full-size tensor is touched by a single multiply-add.
        scale = gamma * torch.rsqrt(var + self.eps)
        return torch.addcmul(shift - mean * scale, x, scale)
