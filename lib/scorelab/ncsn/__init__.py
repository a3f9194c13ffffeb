"""Noise Conditional Score Networks (Song & Ermon 2019) on images.

- :class:`ConditionalInstanceNorm2dPlus` (``normalization``): the noise-conditional norm;
- conv helpers and the blocks :class:`ConditionalResidualBlock`, :class:`CondRCUBlock`,
  :class:`CondCRPBlock`, :class:`CondMSFBlock`, :class:`CondRefineBlock` (``layers``);
- :class:`CondRefineNetDilated` (``refinenet``): the score network;
- :class:`NCSN` (``model``): the network with its noise ladder, its loss and its sampler;
- :func:`train_NCSN` (``training``): the package's training loop with an EMA, checkpoints and
  sample grids, mixed precision, channels-last, ``torch.compile`` and several processes
  (``torchrun``);
- :func:`load_checkpoint`, :func:`load_pretrained` (``checkpoints``): safe, exact checkpoints
  and the model shipped with the package;
- :func:`digits_quality` (``quality``): the sample-quality figures of chapter 6 and the benchmark.

Grids of samples are drawn by :func:`scorelab.plotting.image_samples`.
Run ``python -m scorelab.ncsn --help`` for the command line.
"""

from scorelab.ncsn.checkpoints import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    load_pretrained,
    pretrained_info,
    save_weights,
)
from scorelab.ncsn.layers import (
    CondCRPBlock,
    CondMSFBlock,
    CondRCUBlock,
    CondRefineBlock,
    ConditionalResidualBlock,
    ConvMeanPool,
    conv3x3,
    dilated_conv3x3,
)
from scorelab.ncsn.inpaint import inpaint
from scorelab.ncsn.model import NCSN
from scorelab.ncsn.normalization import ConditionalInstanceNorm2dPlus
from scorelab.ncsn.quality import digits_quality
from scorelab.ncsn.refinenet import CondRefineNetDilated, block_shapes, summary_table
from scorelab.ncsn.training import train_NCSN

__all__ = [
    "CheckpointError",
    "CondCRPBlock",
    "CondMSFBlock",
    "CondRCUBlock",
    "CondRefineBlock",
    "CondRefineNetDilated",
    "ConditionalInstanceNorm2dPlus",
    "ConditionalResidualBlock",
    "ConvMeanPool",
    "NCSN",
    "block_shapes",
    "conv3x3",
    "digits_quality",
    "dilated_conv3x3",
    "inpaint",
    "latest_checkpoint",
    "load_checkpoint",
    "load_pretrained",
    "pretrained_info",
    "save_weights",
    "summary_table",
    "train_NCSN",
]


def __getattr__(name: str):
    # image_samples draws a figure, so it lives in scorelab.plotting; importing it from here
    # still works, without making `import scorelab.ncsn` import matplotlib.
    if name == "image_samples":
        from scorelab.plotting import image_samples

        return image_samples
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
