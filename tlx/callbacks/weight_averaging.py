"""Lightning's ``WeightAveraging`` made to fit tlx models: the base of :class:`tlx.callbacks.EMA` and
:class:`tlx.callbacks.SWA`.

Three changes to Lightning's behaviour, the rest (the swap of weights for validation, the average
in checkpoints with the raw weights beside it, resuming) is Lightning's:

* The copy of the model is taken once the model is whole. Lightning copies it in the callback's
  ``setup``; a tlx classifier has no head yet then (it learns its classes in its own ``setup``,
  which Lightning calls after the callbacks', and builds the head in ``configure_model``). The copy
  would lack the head, and every swap would pair tensors of different layers. So it is taken when
  a checkpoint is restored (which needs it) or at ``on_fit_start``, whichever comes first; both
  follow ``configure_model`` and the strategies' ``setup`` (LoRA's layers exist by then).
* Updates are exact for a tensor that does not change (``lerp``; integer counters are copied), so
  a frozen backbone, BatchNorm statistics included, stays bit for bit the pretrained one.
* Until the first update the average is only the copy taken at the start (a random head):
  validation, checkpoints and the end of fit then use the current weights, so an average that
  starts late (SWA's ``swa_epoch_start``) never puts the untrained head into ``best.ckpt``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

AvgFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def exact_average(weight: Callable[[Tensor], float]) -> AvgFn:
    """``AveragedModel``'s ``avg_fn``: ``lerp(average, current, weight(num_averaged))``, which leaves
    an unchanged tensor exactly as it is (``a * avg + b * cur`` drifts it by float rounding, ~1e-7,
    every update); counters (BatchNorm's ``num_batches_tracked``) take the current value."""

    def update(average: Tensor, current: Tensor, num_averaged: Tensor) -> Tensor:
        if not average.is_floating_point():
            return current
        return torch.lerp(average, current, weight(num_averaged))

    return update


class LateWeightAveraging(WeightAveraging):
    """``WeightAveraging`` whose copy of the model is taken once the head exists (see the module
    docstring); subclasses say when to update (``should_update``) and how (``avg_fn``)."""

    @property
    def started(self) -> bool:
        """Whether the average holds at least one update (before that it is only the initial copy)."""
        return self._average_model is not None and int(self._average_model.n_averaged) > 0

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        pass  # too early: see the module docstring

    def _take_average(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._average_model is None and trainer.state.fn == TrainerFn.FITTING:
            super().setup(trainer, pl_module, "fit")

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        self._take_average(trainer, pl_module)
        if self._average_model is not None and "current_model_state" not in checkpoint:
            return  # saved before the first update: the fresh copy of the restored model is the average
        super().on_load_checkpoint(trainer, pl_module, checkpoint)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._take_average(trainer, pl_module)
        super().on_fit_start(trainer, pl_module)

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.started:
            super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.started:
            super().on_validation_epoch_end(trainer, pl_module)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        if self.started:
            super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.started:
            super().on_train_end(trainer, pl_module)
