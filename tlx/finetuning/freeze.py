"""Feature extraction: the backbone stays frozen, only the head trains."""

from __future__ import annotations

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn


def frozen_norm_layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]


class FreezeBackbone(BaseFinetuning):
    """Freeze ``pl_module.backbone`` for the whole run.

    Args:
        train_bn: let BatchNorm layers inside the backbone train (affine parameters and running
            statistics). Off by default: a frozen feature extractor should compute the same
            features every epoch, so the whole backbone is kept in eval mode, which also keeps
            BN statistics and dropout fixed. (Lightning's ``BaseFinetuning.freeze`` alone leaves
            frozen BN updating its running statistics: Lightning issues 15062, 13902.)
    """

    def __init__(self, train_bn: bool = False):
        super().__init__()
        self.train_bn = train_bn

    def freeze_before_training(self, pl_module: LightningModule) -> None:
        self.freeze(pl_module.backbone, train_bn=self.train_bn)

    def finetune_function(self, pl_module: LightningModule, epoch: int, optimizer) -> None:
        pass  # never unfrozen

    def _hold_eval(self, pl_module: LightningModule) -> None:
        # Lightning calls model.train() at every epoch start and after every validation run, so
        # the eval mode of the frozen part is restored right before each training batch.
        if self.train_bn:
            for module in pl_module.backbone.modules():
                if not isinstance(module, nn.modules.batchnorm._NormBase):
                    module.eval()
        else:
            pl_module.backbone.eval()

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        self._hold_eval(pl_module)
