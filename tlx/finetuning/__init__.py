"""Fine-tuning strategies: Lightning callbacks that decide which weights move, and how fast.

Choose one strategy per run in ``trainer.callbacks`` (``L2SP`` combines with any):

* :class:`FreezeBackbone` - feature extraction, head only.
* :class:`FullFinetune` - everything, backbone at a fraction of the head's LR.
* :class:`FreezeUnfreeze` - head first, backbone from epoch N, with its own LR and a warm-up.
* :class:`GradualUnfreeze` - ULMFiT: one layer group more every k epochs, top down.
* :class:`LayerDecay`, :class:`DiscriminativeLR` - layer-wise learning rates.
* :class:`LoRA`, :class:`BitFit` - parameter-efficient.
* :class:`L2SP` - penalty toward the pretrained weights.

Every strategy takes the BatchNorm policy (``train_bn``, ``freeze_bn_stats``) and reports its
trainable and frozen parameters per group.
"""

from tlx.finetuning.base import FinetuneStrategy
from tlx.finetuning.bitfit import BitFit
from tlx.finetuning.freeze import FreezeBackbone
from tlx.finetuning.full import FullFinetune
from tlx.finetuning.gradual import GradualUnfreeze
from tlx.finetuning.groups import FinetuningError, LayerGroup, layer_groups
from tlx.finetuning.l2sp import L2SP
from tlx.finetuning.layer_lr import DiscriminativeLR, LayerDecay
from tlx.finetuning.lora import LoRA, merge_lora
from tlx.finetuning.unfreeze import FreezeUnfreeze
from tlx.optim import ParamGroup

__all__ = [
    "BitFit",
    "DiscriminativeLR",
    "FinetuneStrategy",
    "FinetuningError",
    "FreezeBackbone",
    "FreezeUnfreeze",
    "FullFinetune",
    "GradualUnfreeze",
    "L2SP",
    "LayerDecay",
    "LayerGroup",
    "LoRA",
    "ParamGroup",
    "layer_groups",
    "merge_lora",
]
