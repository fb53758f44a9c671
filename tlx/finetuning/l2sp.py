"""L2-SP (Li et al., 2018): weight decay toward the pretrained weights instead of toward zero."""

from __future__ import annotations

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.optim import Optimizer

from tlx.finetuning.trainable import backbone_parameters, frozen_bottom


class L2SP(Callback):
    """Adds ``alpha/2 ||w - w0||^2`` over the backbone (``w0``: its pretrained weights) and
    ``beta/2 ||w||^2`` over the head's weights to the objective.

    The penalty's gradient is added to the parameters' gradients right before each optimizer
    step (after gradient accumulation, before clipping), which is the same as adding the penalty
    to the loss; its value is logged as ``train/l2sp``. Combine it with any strategy (or none);
    set the optimizer's ``weight_decay`` to 0, since decay toward zero is what L2-SP replaces.
    ``w0`` is taken in ``setup``, before a checkpoint's weights load, so resumed runs keep
    pulling toward the pretrained weights; with a bottom frozen for the run (a cut backbone's
    cache), over the part above it only.

    Args:
        alpha: strength of the pull toward the pretrained backbone (the paper uses 0.01 to 0.1).
        beta: plain L2 strength on the head's weights (biases excluded).
    """

    def __init__(self, alpha: float = 0.01, beta: float = 0.01):
        super().__init__()
        self.alpha = alpha
        self.beta = beta
        self._reference: dict[str, torch.Tensor] = {}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" and not self._reference:
            # Anchors above a bottom frozen for the run only (tlx.finetuning.trainable): it never moves.
            bottom = frozen_bottom(trainer, pl_module)
            self._reference = {n: p.detach().clone() for n, p in backbone_parameters(pl_module.backbone, bottom)}

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer) -> None:
        penalty = torch.zeros((), device=pl_module.device)
        with torch.no_grad():
            for n, p in pl_module.backbone.named_parameters():
                if p.grad is None or n not in self._reference:
                    continue
                ref = self._reference[n]
                if ref.device != p.device:
                    ref = self._reference[n] = ref.to(p.device)
                diff = p - ref
                p.grad.add_(diff, alpha=self.alpha)
                penalty += 0.5 * self.alpha * diff.pow(2).sum()
            for n, p in pl_module.named_parameters():
                if n.startswith("backbone.") or p.grad is None or n.endswith("bias"):
                    continue
                p.grad.add_(p, alpha=self.beta)
                penalty += 0.5 * self.beta * p.pow(2).sum()
        pl_module.log("train/l2sp", penalty, on_step=False, on_epoch=True, batch_size=1)
