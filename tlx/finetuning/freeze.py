"""Feature extraction: the backbone stays frozen, only the head trains."""

from __future__ import annotations

from lightning.pytorch import LightningModule

from tlx.finetuning.base import FinetuneStrategy, head_params
from tlx.optim import ParamGroup


class FreezeBackbone(FinetuneStrategy):
    """Freeze ``pl_module.backbone`` for the whole run (the tutorial's "ConvNet as fixed feature
    extractor"). The frozen backbone runs in eval mode, so its BatchNorm statistics and dropout
    stay fixed and it computes the same features every epoch.

    Args:
        train_bn: let BatchNorm layers inside the backbone train (affine parameters, in their own
            optimizer group ``backbone.bn``, and running statistics).
        freeze_bn_stats: see :class:`~tlx.finetuning.base.FinetuneStrategy`.
    """

    def __init__(self, train_bn: bool = False, freeze_bn_stats: bool = False):
        super().__init__(train_bn=train_bn, freeze_bn_stats=freeze_bn_stats)

    def freeze_before_training(self, pl_module: LightningModule) -> None:
        self.freeze_group(pl_module.backbone)

    def groups(self, pl_module: LightningModule) -> list[ParamGroup]:
        # Only what can ever train: with train_bn, the backbone's BatchNorm parameters.
        bn = [p for p in pl_module.backbone.parameters() if p.requires_grad]
        return [ParamGroup("head", head_params(pl_module)), ParamGroup("backbone.bn", bn)]
