"""Noise Conditional Score Networks (Song & Ermon 2019) on images.

- :class:`ConditionalInstanceNorm2dPlus` (``normalization``): the noise-conditional norm;
- conv helpers and the blocks :class:`ConditionalResidualBlock`, :class:`CondRCUBlock`,
  :class:`CondCRPBlock`, :class:`CondMSFBlock`, :class:`CondRefineBlock` (``layers``);
- :class:`CondRefineNetDilated` (``refinenet``): the score network;
- :class:`NCSN`, :func:`train_NCSN`, :func:`image_samples` (``model``);
- :func:`load_checkpoint`, :func:`load_pretrained` (``checkpoints``): safe, exact checkpoints
  and the model shipped with the package;
- :func:`digits_quality` (``quality``): the sample-quality figures of chapter 6 and the benchmark.

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
from scorelab.ncsn.model import EMA, NCSN, default_sigmas, image_samples, train_NCSN
from scorelab.ncsn.normalization import ConditionalInstanceNorm2dPlus
from scorelab.ncsn.quality import digits_quality
from scorelab.ncsn.refinenet import CondRefineNetDilated, summary_table

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
    "EMA",
    "NCSN",
    "conv3x3",
    "default_sigmas",
    "digits_quality",
    "dilated_conv3x3",
    "image_samples",
    "inpaint",
    "latest_checkpoint",
    "load_checkpoint",
    "load_pretrained",
    "pretrained_info",
    "save_weights",
    "summary_table",
    "train_NCSN",
]
