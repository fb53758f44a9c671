"""Gradual unfreezing (ULMFiT): the head first, then one layer group more, top down, every k epochs."""

from __future__ import annotations

from lightning.pytorch import LightningModule
from torch.optim import Optimizer

from tlx.finetuning.groups import FinetuningError
from tlx.finetuning.layer_lr import LayerwiseStrategy


class GradualUnfreeze(LayerwiseStrategy):
    """Epoch ``e`` trains the head and the top ``e // unfreeze_every`` layer groups.

    Groups come from :func:`tlx.finetuning.groups.layer_groups` (timm's ``group_matcher``, or the
    top-level children of a torchvision model). Each has its own optimizer group, named after
    its modules, present (inert) from the start.

    Args:
        unfreeze_every: epochs between two unfreezes.
        num_groups: merge the backbone's groups into this many (fewer, larger steps).
        fine: timm models: one group per block instead of per stage.
        backbone_lr_scale: LR of the top backbone group relative to the head's...
        layer_decay: ...multiplied by this for every group further down (1.0: all equal).
        warmup_steps: linear LR warm-up of each group over this many steps after its unfreeze.
        train_bn, freeze_bn_stats: BatchNorm policy, see :class:`~tlx.finetuning.base.FinetuneStrategy`.
    """

    def __init__(
        self,
        unfreeze_every: int = 1,
        num_groups: int | None = None,
        fine: bool = False,
        backbone_lr_scale: float = 1.0,
        layer_decay: float = 1.0,
        warmup_steps: int = 0,
        train_bn: bool = False,
        freeze_bn_stats: bool = False,
    ):
        super().__init__(num_groups, fine, train_bn=train_bn, freeze_bn_stats=freeze_bn_stats,
                         warmup_steps=warmup_steps)
        if unfreeze_every < 1:
            raise FinetuningError(f"GradualUnfreeze: unfreeze_every must be at least 1, got {unfreeze_every}.")
        self.unfreeze_every = unfreeze_every
        self.backbone_lr_scale = backbone_lr_scale
        self.layer_decay = layer_decay

    def freeze_before_training(self, pl_module: LightningModule) -> None:
        super().freeze_before_training(pl_module)  # the layer groups
        for group in self._layer_groups:
            self.freeze_group(group)

    def scale(self, depth: int, n: int) -> float:
        return self.backbone_lr_scale * self.layer_decay ** (depth - 1)  # the top group: backbone_lr_scale

    def finetune_function(self, pl_module: LightningModule, epoch: int, optimizer: Optimizer) -> None:
        # The state as of `epoch` (a resumed run calls this once): the top k groups, k capped at
        # all of them (an uncapped k would slice from a negative index, i.e. from the top again).
        n = len(self._layer_groups)
        k = min(epoch // self.unfreeze_every, n)
        for group in self._layer_groups[n - k :]:
            self.unfreeze_group(group, pl_module)
