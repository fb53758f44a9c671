"""BitFit: only the backbone's biases (and the head) train."""

from __future__ import annotations

from lightning.pytorch import LightningModule

from tlx.finetuning.base import FinetuneStrategy, head_params
from tlx.finetuning.trainable import backbone_parameters
from tlx.optim import ParamGroup


class BitFit(FinetuneStrategy):
    """Freeze every backbone weight except the biases (Ben Zaken et al., 2022).

    In a convnet most convolutions have no bias, so what trains is mostly the BatchNorm shifts;
    BatchNorm layers with a trainable shift run in training mode (their statistics adapt to the
    new data) unless ``freeze_bn_stats``.

    Args:
        backbone_lr_scale: the biases' LR relative to the head's.
        freeze_bn_stats: keep every BatchNorm's running statistics.
    """

    def __init__(self, backbone_lr_scale: float = 1.0, freeze_bn_stats: bool = False):
        super().__init__(freeze_bn_stats=freeze_bn_stats)
        self.backbone_lr_scale = backbone_lr_scale

    def _biases(self, pl_module: LightningModule):
        return [p for n, p in backbone_parameters(pl_module.backbone, self.bottom) if n.rpartition(".")[2] == "bias"]

    def freeze_before_training(self, pl_module: LightningModule) -> None:
        pl_module.backbone.requires_grad_(False)
        for p in self._biases(pl_module):
            p.requires_grad_(True)

    def groups(self, pl_module: LightningModule) -> list[ParamGroup]:
        return [ParamGroup("head", head_params(pl_module)), ParamGroup("backbone.bias", self._biases(pl_module), self.backbone_lr_scale)]
