"""Freeze, then unfreeze: train the head on a frozen backbone, then the whole network."""

from __future__ import annotations

from lightning.pytorch import LightningModule
from torch.optim import Optimizer

from tlx.finetuning.base import FinetuneStrategy


class FreezeUnfreeze(FinetuneStrategy):
    """The backbone is frozen until epoch ``unfreeze_at_epoch``, then trains at its own LR.

    The backbone's optimizer group (``backbone``) exists from the start, inert while frozen, so
    the LR scheduler and a resumed run treat it like any other group.

    Args:
        unfreeze_at_epoch: first epoch (0-based) in which the backbone trains.
        backbone_lr_scale: the backbone's LR as a fraction of the head's.
        warmup_steps: linear LR warm-up of the backbone over this many steps after the unfreeze.
        train_bn: BatchNorm layers train while the backbone is frozen.
        freeze_bn_stats: keep every BatchNorm's running statistics, also after the unfreeze.
    """

    def __init__(
        self,
        unfreeze_at_epoch: int = 5,
        backbone_lr_scale: float = 0.1,
        warmup_steps: int = 0,
        train_bn: bool = False,
        freeze_bn_stats: bool = False,
    ):
        super().__init__(train_bn=train_bn, freeze_bn_stats=freeze_bn_stats, warmup_steps=warmup_steps)
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self.backbone_lr_scale = backbone_lr_scale

    def freeze_before_training(self, pl_module: LightningModule) -> None:
        self.freeze_group(self.backbone_group(pl_module))

    def finetune_function(self, pl_module: LightningModule, epoch: int, optimizer: Optimizer) -> None:
        if epoch >= self.unfreeze_at_epoch:
            self.unfreeze_group(self.backbone_group(pl_module), pl_module)
