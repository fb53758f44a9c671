"""Full fine-tuning: every weight trains, the backbone at a fraction of the head's learning rate."""

from __future__ import annotations

from tlx.finetuning.base import FinetuneStrategy


class FullFinetune(FinetuneStrategy):
    """Train everything; the backbone's LR is ``backbone_lr_scale`` x the head's (the optimizer's).

    Args:
        backbone_lr_scale: ratio of the backbone's LR to the head's; 0.1 is the usual choice
            (pretrained weights need small steps, the new head large ones); 1.0 trains all alike.
        freeze_bn_stats: keep every BatchNorm's running statistics (small batches).
    """

    def __init__(self, backbone_lr_scale: float = 0.1, freeze_bn_stats: bool = False):
        super().__init__(freeze_bn_stats=freeze_bn_stats)
        self.backbone_lr_scale = backbone_lr_scale
