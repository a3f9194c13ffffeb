"""CondRefineNetDilated, the score network of NCSN (Song & Ermon 2019, Appendix A).

The paper's appendix gives its three parts: conditional instance normalisation "++" (A.1),
dilated convolutions in place of every subsampling layer but the first (A.2), and a 4-cascaded
RefineNet, a U-Net with residual blocks, its dilation doubling from one stage to the next (A.3).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from scorelab._validation import (check_floating, check_int_at_least, check_labels,
                                  check_positive_int)
from scorelab.ncsn.layers import CondRefineBlock, ConditionalResidualBlock, conv3x3
from scorelab.ncsn.normalization import TWO_CHANNELS, ConditionalInstanceNorm2dPlus


def check_images(name: str, x, channels: int, size: int, weight: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """Raise ValueError unless ``x`` is a floating tensor (N, channels, size, size).

    With ``weight`` (a parameter of the network), ``x`` must also have its dtype and device:
    a float64 batch for float32 weights is an error that says how to convert it.
    """
    shape = (channels, size, size)
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != shape:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must have shape (N, {', '.join(map(str, shape))}), got {got}")
    check_floating(name, x)
    if weight is not None and x.dtype != weight.dtype:
        convert = (f"{name}.float()" if weight.dtype == torch.float32
                   else f"{name}.to({weight.dtype})")
        raise ValueError(
            f"{name} must have the dtype of the network's weights, {weight.dtype}, got {x.dtype}: "
            f"convert it with {convert}"
        )
    if weight is not None and x.device != weight.device:
        raise ValueError(
            f"{name} must be on the network's device {weight.device}, got {x.device}: "
            f"move it with {name}.to({str(weight.device)!r})"
        )
    return x


class CondRefineNetDilated(nn.Module):
    """The noise-conditional score network s(x, i) of NCSN.

    A dilated residual encoder (four stages of two :class:`ConditionalResidualBlock` each;
    stage 2 halves the resolution, stages 3 and 4 use dilations 2 and 4 instead of further
    downsampling) followed by a RefineNet decoder (four :class:`CondRefineBlock` cascades,
    from the deepest stage back to full resolution). Every normalisation is a
    :class:`ConditionalInstanceNorm2dPlus` indexed by the noise level.

    Parameters
    ----------
    channels : int
        Image channels C (1 for digits/MNIST, 3 for CIFAR-10).
    image_size : int
        Height = width H of the images; must be even (stage 2 halves it). 8, 28 and 32 work.
    ngf : int
        Base width: stage 1 has ``ngf`` channels, the deeper stages ``2 * ngf``. At least 2:
        every :class:`ConditionalInstanceNorm2dPlus` needs two channels.
    num_classes : int
        Number of noise levels L.

    Notes
    -----
    **Data scale.** The network takes images on the data's [0, 1] scale (plus noise) as they
    are: no hidden rescaling. The authors' code maps inputs to ``2x - 1`` first; that affine
    map is absorbed by the first convolution (up to its zero padding at the border), so we
    leave it out.

    **Size.** With the authors' MNIST configuration (``channels=1, image_size=28, ngf=64,
    num_classes=10``) this network has exactly 7,638,657 parameters, the count of the
    authors' model: the blocks, widths, bias choices and the 3C-wide norm embeddings are the
    same. The count does not depend on ``image_size`` (the network is fully convolutional)
    and grows as ``ngf**2`` (ngf=32, 10 levels: 1,964,865 parameters). The shipped digits
    model (ngf=16, 22 levels, 8x8) has 583,905; see :func:`summary_table` for the breakdown.
    """

    def __init__(self, channels: int, image_size: int, ngf: int, num_classes: int):
        super().__init__()
        self.channels = channels = check_positive_int("channels", channels)
        self.image_size = image_size = check_positive_int("image_size", image_size)
        if image_size % 2:
            raise ValueError(f"image_size must be even (stage 2 halves it), got {image_size}")
        self.ngf = ngf = check_int_at_least("ngf", ngf, 2, TWO_CHANNELS)
        self.num_classes = num_classes = check_positive_int("num_classes", num_classes)
        wide = 2 * ngf
        self.begin_conv = conv3x3(channels, ngf)
        self.res1 = nn.ModuleList([
            ConditionalResidualBlock(ngf, ngf, num_classes),
            ConditionalResidualBlock(ngf, ngf, num_classes),
        ])
        self.res2 = nn.ModuleList([
            ConditionalResidualBlock(ngf, wide, num_classes, resample="down"),
            ConditionalResidualBlock(wide, wide, num_classes),
        ])
        self.res3 = nn.ModuleList([
            ConditionalResidualBlock(wide, wide, num_classes, resample="down", dilation=2),
            ConditionalResidualBlock(wide, wide, num_classes, dilation=2),
        ])
        self.res4 = nn.ModuleList([
            ConditionalResidualBlock(wide, wide, num_classes, resample="down", dilation=4),
            ConditionalResidualBlock(wide, wide, num_classes, dilation=4),
        ])
        self.refine1 = CondRefineBlock([wide], wide, num_classes, start=True)
        self.refine2 = CondRefineBlock([wide, wide], wide, num_classes)
        self.refine3 = CondRefineBlock([wide, wide], ngf, num_classes)
        self.refine4 = CondRefineBlock([ngf, ngf], ngf, num_classes, end=True)
        self.end_norm = ConditionalInstanceNorm2dPlus(ngf, num_classes)
        self.end_conv = conv3x3(ngf, channels)

    @staticmethod
    def _stage(blocks: nn.ModuleList, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        for block in blocks:
            x = block(x, labels)
        return x

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Score of the level-``labels`` perturbed density at ``x``.

        Parameters
        ----------
        x : Tensor, shape (N, C, H, H)
            Noisy images on the data's [0, 1] scale, of the network's ``channels`` and
            ``image_size``, dtype and device (a float64 batch for float32 weights is an
            error: convert it with ``x.float()``).
        labels : integer Tensor, shape (N,)
            Noise-level indices in ``0..num_classes-1``, one per image, on x's device.

        Returns
        -------
        Tensor, shape (N, C, H, H)
            The estimated score.

        Raises
        ------
        ValueError
            For any other ``x`` or ``labels`` (the label values are read on the CPU only,
            so that a call never waits for an accelerator).
        """
        x = check_images("x", x, self.channels, self.image_size, self.begin_conv.weight)
        labels = check_labels(labels, x.shape[0], self.num_classes, x.device)
        h = self.begin_conv(x)  # (N, ngf, H, H)
        layer1 = self._stage(self.res1, h, labels)  # (N, ngf, H, H)
        layer2 = self._stage(self.res2, layer1, labels)  # (N, 2ngf, H/2, H/2)
        layer3 = self._stage(self.res3, layer2, labels)  # (N, 2ngf, H/2, H/2), dilation 2
        layer4 = self._stage(self.res4, layer3, labels)  # (N, 2ngf, H/2, H/2), dilation 4
        ref1 = self.refine1([layer4], labels, layer4.shape[2:])
        ref2 = self.refine2([layer3, ref1], labels, layer3.shape[2:])
        ref3 = self.refine3([layer2, ref2], labels, layer2.shape[2:])  # (N, ngf, H/2, H/2)
        ref4 = self.refine4([layer1, ref3], labels, layer1.shape[2:])  # (N, ngf, H, H)
        return self.end_conv(F.elu(self.end_norm(ref4, labels)))  # (N, C, H, H)


def block_shapes(net: CondRefineNetDilated, *, batch_size: int = 1) -> dict[str, tuple[int, ...]]:
    """The output shape of each top-level block of the network, from one forward pass on zeros
    of the network's image size.

    Returns
    -------
    dict
        Block name (``begin_conv``, ``res1``..``res4``, ``refine1``..``refine4``, ``end_norm``,
        ``end_conv``, in forward order) to its output shape ``(C, H, W)``; a stage of several
        blocks gives its last block's output.
    """
    batch_size = check_positive_int("batch_size", batch_size)
    net = _refinenet_of(net)
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name):
        def hook(module, inputs, output):
            shapes[name] = tuple(output.shape[1:])

        return hook

    # A stage is a ModuleList (never called itself): its last block gives the stage's output.
    hooks = [
        (module[-1] if isinstance(module, nn.ModuleList) else module).register_forward_hook(record(name))
        for name, module in net.named_children()
    ]
    try:
        size, weight = net.image_size, net.begin_conv.weight
        with torch.no_grad():
            net(torch.zeros(batch_size, net.channels, size, size, dtype=weight.dtype,
                            device=weight.device),
                torch.zeros(batch_size, dtype=torch.long, device=weight.device))
    finally:
        for hook in hooks:
            hook.remove()
    return {name: shapes[name] for name, _ in net.named_children()}


def _refinenet_of(net) -> CondRefineNetDilated:
    """``net`` itself, or the CondRefineNetDilated an NCSN holds as ``.net``."""
    if isinstance(net, CondRefineNetDilated):
        return net
    inner = getattr(net, "net", None)
    if not isinstance(inner, CondRefineNetDilated):
        raise ValueError(f"net must be a CondRefineNetDilated (or an NCSN, whose .net it "
                         f"is), got {type(net).__name__}")
    return inner


def summary_table(net: CondRefineNetDilated, *, batch_size: int = 1) -> str:
    """A text table of the network's top-level blocks: output shape and parameter count.

    Runs one forward pass on zeros of the network's image size to read the shapes.

    Returns
    -------
    str
        One line per block (``begin_conv``, ``res1``..``res4``, ``refine1``..``refine4``,
        ``end_norm``, ``end_conv``) and a total.
    """
    net = _refinenet_of(net)
    shapes = block_shapes(net, batch_size=batch_size)
    lines = [f"{'block':<11}{'output (C, H, W)':>18}{'parameters':>13}"]
    for name, module in net.named_children():
        count = sum(p.numel() for p in module.parameters())
        lines.append(f"{name:<11}{str(shapes[name]):>18}{count:>13,}")
    lines.append(f"{'total':<11}{'':>18}{sum(p.numel() for p in net.parameters()):>13,}")
    return "\n".join(lines)
