"""Building blocks of CondRefineNetDilated (Song & Ermon 2019, Appendix A.3).

Every block takes the noise-level labels ``labels`` (LongTensor (N,), values in 0..L-1 for
L = ``num_classes`` levels) beside its features, because every normalisation inside it is a
:class:`ConditionalInstanceNorm2dPlus`. The RefineNet blocks (RCU, CRP, MSF, RefineBlock)
follow Lin et al. (2017) with batch norm replaced by conditional instance norm and max pooling
replaced by average pooling.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from scorelab._validation import check_int_at_least, check_positive_int
from scorelab.ncsn.normalization import TWO_CHANNELS, ConditionalInstanceNorm2dPlus


def _normed_channels(name: str, value) -> int:
    """``value`` as the channels of a conditional norm (an integer >= 2), else ValueError."""
    return check_int_at_least(name, value, 2, TWO_CHANNELS)


def _channel_list(name: str, values) -> list[int]:
    """``values`` as a non-empty list of normalised channel counts (each >= 2), else ValueError."""
    if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"{name} must be a non-empty list of channel counts, got {values!r}")
    return [_normed_channels(f"{name}[{i}]", value) for i, value in enumerate(values)]


def _check_inputs(name: str, xs, expected: int) -> None:
    """Raise ValueError unless ``xs`` is a list of ``expected`` tensors (one per input path)."""
    if not isinstance(xs, (list, tuple)) or len(xs) != expected:
        got = f"{len(xs)} inputs" if isinstance(xs, (list, tuple)) else type(xs).__name__
        raise ValueError(
            f"{name} must be a list of {expected} tensors (one per entry of in_channels), got {got}"
        )


def conv3x3(in_channels: int, out_channels: int, *, bias: bool = True) -> nn.Conv2d:
    """A 3x3 convolution with stride 1 and padding 1 (keeps H and W)."""
    in_channels = check_positive_int("in_channels", in_channels)
    out_channels = check_positive_int("out_channels", out_channels)
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=bias)


def dilated_conv3x3(
    in_channels: int, out_channels: int, *, dilation: int, bias: bool = True
) -> nn.Conv2d:
    """A 3x3 convolution with the given dilation, padded so that H and W are kept.

    Dilation widens the receptive field without downsampling, so the deep stages of the
    encoder still see the image at the resolution of stage 2.
    """
    in_channels = check_positive_int("in_channels", in_channels)
    out_channels = check_positive_int("out_channels", out_channels)
    dilation = check_positive_int("dilation", dilation)
    return nn.Conv2d(
        in_channels, out_channels, kernel_size=3, padding=dilation, dilation=dilation, bias=bias
    )


class ConvMeanPool(nn.Module):
    """Convolution followed by 2x2 mean pooling: (N, C_in, H, W) -> (N, C_out, H // 2, W // 2).

    The downsampling layer of :class:`ConditionalResidualBlock` (``resample="down"`` without
    dilation): a ``kernel_size`` convolution padded by ``kernel_size // 2``, then
    non-overlapping 2x2 averages.
    """

    def __init__(self, in_channels: int, out_channels: int, *, kernel_size: int = 3):
        super().__init__()
        in_channels = check_positive_int("in_channels", in_channels)
        out_channels = check_positive_int("out_channels", out_channels)
        kernel_size = check_positive_int("kernel_size", kernel_size)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve and pool ``x`` (N, C_in, H, W) -> (N, C_out, H // 2, W // 2).

        With an odd ``kernel_size`` (the default 3, or 1) the convolution keeps H and W and the
        pooling floors odd sizes: 7x9 -> 3x4; H and W must be at least 2. An even
        ``kernel_size`` adds one row and column first: H' = (H + 1) // 2, W' = (W + 1) // 2.
        """
        h = self.conv(x)  # (N, C_out, H_c, W_c): H_c = H (odd kernel_size) or H + 1 (even)
        return F.avg_pool2d(h, kernel_size=2)  # (N, C_out, H_c // 2, W_c // 2): odd sizes floored


class ConditionalResidualBlock(nn.Module):
    """Pre-activation residual block: norm-ELU-conv-norm-ELU-conv plus a shortcut.

    The residual unit of the encoder of CondRefineNetDilated (Song & Ermon 2019, Appendix
    A.3), every norm a :class:`ConditionalInstanceNorm2dPlus` and ``i`` the noise levels:
    ``y = shortcut(x) + conv2(ELU(norm2(conv1(ELU(norm1(x, i))), i)))``. The shortcut is the
    identity when ``resample`` is None and in_channels == out_channels; else a 1x1 conv
    (followed by mean pooling when the block downsamples), or with a dilation a 3x3 conv
    with that dilation.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels in and out (in_channels >= 2, and out_channels >= 2 unless the block
        downsamples: every normalised feature map needs two channels).
    num_classes : int
        Number of noise levels.
    resample : {None, "down"}
        ``"down"`` without dilation halves H and W (second conv and the 1x1 shortcut are
        followed by mean pooling). With a dilation the block keeps H and W, as in the
        authors' dilated network, where only stage 2 downsamples.
    dilation : int or None
        Dilation (a positive integer) of both 3x3 convolutions (and of the shortcut conv
        when there is one); None: none.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_classes: int,
        *,
        resample: str | None = None,
        dilation: int | None = None,
    ):
        super().__init__()
        if resample not in (None, "down"):
            raise ValueError(f"resample must be None or 'down', got {resample!r}")
        in_channels = _normed_channels("in_channels", in_channels)
        out_channels = check_positive_int("out_channels", out_channels)
        if resample is None:  # out_channels is also the width of the second norm
            _normed_channels("out_channels", out_channels)
        dilation = None if dilation is None else check_positive_int("dilation", dilation)
        self.norm1 = ConditionalInstanceNorm2dPlus(in_channels, num_classes)
        if resample == "down" and dilation is None:
            self.conv1 = conv3x3(in_channels, in_channels)
            self.norm2 = ConditionalInstanceNorm2dPlus(in_channels, num_classes)
            self.conv2 = ConvMeanPool(in_channels, out_channels)
            self.shortcut = ConvMeanPool(in_channels, out_channels, kernel_size=1)
        else:
            middle = in_channels if resample == "down" else out_channels
            conv = (lambda i, o: dilated_conv3x3(i, o, dilation=dilation)) if dilation else conv3x3
            self.conv1 = conv(in_channels, middle)
            self.norm2 = ConditionalInstanceNorm2dPlus(middle, num_classes)
            self.conv2 = conv(middle, out_channels)
            needs_shortcut = resample is not None or in_channels != out_channels
            if not needs_shortcut:
                self.shortcut = None
            elif dilation:
                self.shortcut = dilated_conv3x3(in_channels, out_channels, dilation=dilation)
            else:
                self.shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Map ``x`` (N, C_in, H, W), ``labels`` (N,) long in 0..L-1 -> (N, C_out, H', W').

        H' = H // 2 and W' = W // 2 (odd sizes floored, see :class:`ConvMeanPool`) for
        ``resample="down"`` without dilation; otherwise H' = H and W' = W.
        """
        h = self.conv1(F.elu(self.norm1(x, labels)))  # (N, C_in or C_out, H, W)
        h = self.conv2(F.elu(self.norm2(h, labels)))  # (N, C_out, H', W')
        return h + (x if self.shortcut is None else self.shortcut(x))


class CondRCUBlock(nn.Module):
    """Residual conv unit: ``n_blocks`` residual blocks of ``n_stages`` norm-ELU-conv stages.

    RefineNet's RCU (Lin et al. 2017) with conditional instance norm++ in front of every
    3x3 convolution (no bias): each block computes ``x <- x + f(x)``, ``f`` the chain of
    ``n_stages`` ``conv(ELU(norm(., i)))``. ``features`` (>= 2) channels in and out;
    ``n_blocks`` and ``n_stages`` positive integers.
    """

    def __init__(self, features: int, num_classes: int, *, n_blocks: int, n_stages: int):
        super().__init__()
        features = _normed_channels("features", features)
        n_blocks = check_positive_int("n_blocks", n_blocks)
        self.n_stages = n_stages = check_positive_int("n_stages", n_stages)
        self.norms = nn.ModuleList(
            ConditionalInstanceNorm2dPlus(features, num_classes) for _ in range(n_blocks * n_stages)
        )
        self.convs = nn.ModuleList(
            conv3x3(features, features, bias=False) for _ in range(n_blocks * n_stages)
        )

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Map ``x`` (N, features, H, W), ``labels`` (N,) long in 0..L-1 -> (N, features, H, W)."""
        for start in range(0, len(self.convs), self.n_stages):
            residual = x
            stages = slice(start, start + self.n_stages)
            for norm, conv in zip(self.norms[stages], self.convs[stages]):
                x = conv(F.elu(norm(x, labels)))
            x = x + residual
        return x


class CondCRPBlock(nn.Module):
    """Chained residual pooling: a chain of norm-avgpool(5x5)-conv stages, each added to the input.

    RefineNet's CRP (Lin et al. 2017) with conditional instance norm++: with ``h = ELU(x)``
    and ``p_0 = h``, ``p_j = conv_j(avgpool(norm_j(p_{j-1}, i)))`` and the output is
    ``h + p_1 + ... + p_n`` (``n = n_stages``; 5x5 pooling with stride 1 and zero padding 2,
    the zeros counted in the average; 3x3 convolutions without bias). The pooling chain
    gathers context from a growing neighbourhood; average pooling (rather than RefineNet's
    max pooling) keeps the score a smooth function of the input. ``features`` (>= 2)
    channels in and out; ``n_stages`` a positive integer.
    """

    def __init__(self, features: int, num_classes: int, *, n_stages: int):
        super().__init__()
        features = _normed_channels("features", features)
        n_stages = check_positive_int("n_stages", n_stages)
        self.norms = nn.ModuleList(
            ConditionalInstanceNorm2dPlus(features, num_classes) for _ in range(n_stages)
        )
        self.convs = nn.ModuleList(conv3x3(features, features, bias=False) for _ in range(n_stages))

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Map ``x`` (N, features, H, W), ``labels`` (N,) long in 0..L-1 -> (N, features, H, W)."""
        x = F.elu(x)
        path = x
        for norm, conv in zip(self.norms, self.convs):
            path = conv(F.avg_pool2d(norm(path, labels), kernel_size=5, stride=1, padding=2))
            x = path + x
        return x


class CondMSFBlock(nn.Module):
    """Multi-resolution fusion: norm and conv each input to ``features`` channels, resize, sum.

    RefineNet's MSF (Lin et al. 2017) with conditional instance norm++:
    ``y = sum_k up_k(conv_k(norm_k(x_k, i)))``, ``conv_k`` a 3x3 convolution to ``features``
    channels and ``up_k`` bilinear resizing (``align_corners=True``) to ``output_size``.
    ``in_channels`` (a non-empty list, each >= 2) gives the channels of each input path;
    :meth:`forward` takes one tensor per entry. ``features`` is a positive integer.
    """

    def __init__(self, in_channels: list[int], features: int, num_classes: int):
        super().__init__()
        in_channels = _channel_list("in_channels", in_channels)
        self.features = features = check_positive_int("features", features)
        self.norms = nn.ModuleList(
            ConditionalInstanceNorm2dPlus(c, num_classes) for c in in_channels
        )
        self.convs = nn.ModuleList(conv3x3(c, features) for c in in_channels)

    def forward(
        self, xs: list[torch.Tensor], labels: torch.Tensor, output_size: tuple[int, int]
    ) -> torch.Tensor:
        """Fuse ``xs`` [(N, C_k, H_k, W_k) per path k], ``labels`` (N,) -> (N, features, H', W').

        ``labels`` is long in 0..L-1; ``output_size`` is (H', W'), any size: each path is
        resized to it, up or down (resizing a path that already has that size changes nothing).
        """
        _check_inputs("xs", xs, len(self.convs))
        total = 0.0
        for x, norm, conv in zip(xs, self.norms, self.convs):
            h = conv(norm(x, labels))
            total = total + F.interpolate(h, size=output_size, mode="bilinear", align_corners=True)
        return total  # (N, features, *output_size)


class CondRefineBlock(nn.Module):
    """One RefineNet cascade: RCU on every input, MSF fusion, CRP, output RCU.

    The RefineNet block of Lin et al. (2017) with conditional instance norm++, one of the
    four cascades of the decoder of CondRefineNetDilated (Song & Ermon 2019, Appendix A.3):
    ``y = RCU_out(CRP(MSF(RCU_1(x_1), ..., RCU_K(x_K))))``. Each input RCU has two blocks
    of two stages and keeps its path's channels; CRP has two stages; the output RCU has one
    block of two stages (three with ``end``).

    Parameters
    ----------
    in_channels : list of int
        Channels of each input path, each >= 2 (one for the first cascade, two afterwards:
        the encoder skip connection and the previous cascade); :meth:`forward` takes one
        tensor per entry.
    features : int
        Channels out (>= 2).
    num_classes : int
        Number of noise levels.
    start : bool
        First cascade: a single input of ``features`` channels, no fusion.
    end : bool
        Last cascade: three output RCU blocks instead of one.
    """

    def __init__(
        self,
        in_channels: list[int],
        features: int,
        num_classes: int,
        *,
        start: bool = False,
        end: bool = False,
    ):
        super().__init__()
        in_channels = _channel_list("in_channels", in_channels)
        features = _normed_channels("features", features)
        if start and in_channels != [features]:
            raise ValueError(
                f"in_channels must be [features] = [{features}] for the first cascade "
                f"(start=True: a single input, no fusion), got {in_channels}"
            )
        self.adapt_convs = nn.ModuleList(
            CondRCUBlock(c, num_classes, n_blocks=2, n_stages=2) for c in in_channels
        )
        self.msf = None if start else CondMSFBlock(in_channels, features, num_classes)
        self.crp = CondCRPBlock(features, num_classes, n_stages=2)
        self.output_convs = CondRCUBlock(
            features, num_classes, n_blocks=3 if end else 1, n_stages=2
        )

    def forward(
        self, xs: list[torch.Tensor], labels: torch.Tensor, output_size: tuple[int, int]
    ) -> torch.Tensor:
        """Refine ``xs`` [(N, C_k, H_k, W_k) per path k], ``labels`` (N,) -> (N, features, H', W').

        ``labels`` is long in 0..L-1. (H', W') is ``output_size``: every path is resized to
        it by the fusion. With ``start`` there is no fusion: ``xs`` is one
        (N, features, H, W), ``output_size`` is ignored and the output is (N, features, H, W).
        """
        _check_inputs("xs", xs, len(self.adapt_convs))
        hs = [adapt(x, labels) for adapt, x in zip(self.adapt_convs, xs)]
        h = hs[0] if self.msf is None else self.msf(hs, labels, output_size)
        return self.output_convs(self.crp(h, labels), labels)
