"""Stop training at the first non-finite loss, gradient or buffer, before a checkpoint holds it."""

from __future__ import annotations

import math

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from tlx.checkpoint_guards import non_finite_tensors
from tlx.errors import TLXError


class NonFiniteLossError(TLXError, FloatingPointError):
    """The loss (or a gradient) became NaN or infinite."""


def _last_good_checkpoint(trainer: Trainer) -> str:
    for cb in trainer.checkpoint_callbacks:
        path = getattr(cb, "last_model_path", "") or getattr(cb, "best_model_path", "")
        if path:
            return f"The last good checkpoint, {path}, is kept: resume from it with --ckpt_path last."
    return "No checkpoint had been saved yet."


class StopOnNonFinite(Callback):
    """Raise :class:`NonFiniteLossError` when the training loss or the gradients are not finite.

    Checked before ``backward`` (loss) and before the optimizer step (gradients), so the weights are
    never updated with NaN/inf and no checkpoint holding them is written. Gradients are not checked
    under a mixed-precision GradScaler, which skips such steps by design.

    A finite loss does not make finite weights: with a huge learning rate BatchNorm's running
    statistics (buffers, which no gradient touches) overflow while the loss stays finite. So after
    every training batch the buffers are checked too (small: one fused reduction, one sync; weights
    that overflow make the next loss non-finite), and the checkpoint writer refuses any non-finite
    tensor as the last guard (tlx/checkpoint_guards.py).
    """

    def __init__(self, check_gradients: bool = True):
        self.check_gradients = check_gradients

    def _stop(self, trainer: Trainer, what: str, value: float) -> None:
        raise NonFiniteLossError(
            f"The training {what} became {value} at epoch {trainer.current_epoch}, global step "
            f"{trainer.global_step}: training stopped before the weights were updated. "
            f"{_last_good_checkpoint(trainer)} Common fixes: a lower learning rate "
            "(model.init_args.optimizer.init_args.lr), gradient clipping (trainer.gradient_clip_val), "
            "or checking the data."
        )

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: Tensor) -> None:
        value = float(loss.detach())
        if not math.isfinite(value):
            self._stop(trainer, "loss", value)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        bad = non_finite_tensors({"state_dict": dict(pl_module.named_buffers())})
        if bad:
            raise NonFiniteLossError(
                f"{len(bad)} tensor(s) of the model became non-finite at epoch {trainer.current_epoch}, global "
                f"step {trainer.global_step} (e.g. {', '.join(bad[:3])}), although the loss was finite: training "
                f"stopped and no checkpoint holding them is written. {_last_good_checkpoint(trainer)} Common "
                "fixes: a lower learning rate (model.init_args.optimizer.init_args.lr), gradient clipping "
                "(trainer.gradient_clip_val)."
            )

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        if not self.check_gradients or getattr(trainer.precision_plugin, "scaler", None) is not None:
            return
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if grads:
            norm = float(torch.nn.utils.get_total_norm(grads))
            if not math.isfinite(norm):
                self._stop(trainer, "gradient norm", norm)
