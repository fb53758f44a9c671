"""An exponential moving average of the weights: Lightning's ``EMAWeightAveraging``, taken once the
model is whole.

Lightning copies the model into its ``AveragedModel`` in the callback's ``setup``. A tlx classifier
has no head yet at that point: it learns its classes in its own ``setup`` (which Lightning calls
after the callbacks') and builds the head in ``configure_model``. The copy would lack the head, and
the swap of weights before every validation would pair tensors of different layers. So the copy
is taken later: when a checkpoint is restored (which needs it) or at ``on_fit_start``, whichever
comes first; both follow ``configure_model``. The average is updated as ``lerp(average, current, 1 - decay)`` rather than Lightning's
``decay * average + (1 - decay) * current``: the same average, but exact for a tensor that does not
change, so a frozen backbone stays bit for bit the pretrained one (the other form drifts it by
float rounding, ~1e-7, every step). Everything else (updates, the swap for validation, the average
in checkpoints with the raw weights beside it, resuming) is Lightning's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import EMAWeightAveraging, WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor


def exact_ema(decay: float) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """``AveragedModel``'s ``avg_fn``: an EMA that leaves an unchanged tensor exactly as it is."""

    def update(average: Tensor, current: Tensor, num_averaged: Tensor) -> Tensor:
        if not average.is_floating_point():  # counters (BatchNorm's num_batches_tracked)
            return current
        return torch.lerp(average, current, 1.0 - decay)

    return update


class EMA(EMAWeightAveraging):
    """``EMAWeightAveraging`` (same arguments: ``decay``, ``update_every_n_steps``,
    ``update_starting_at_step``/``_epoch``, ``use_buffers``, ``device``) for tlx models."""

    def __init__(
        self,
        decay: float = 0.999,
        update_every_n_steps: int = 1,
        update_starting_at_step: int | None = None,
        update_starting_at_epoch: int | None = None,
        use_buffers: bool = True,
        device: str | None = None,
    ):
        # EMAWeightAveraging's own __init__ fixes its avg_fn; its update rule (should_update) is kept.
        WeightAveraging.__init__(self, device=device, use_buffers=use_buffers, avg_fn=exact_ema(decay))
        self.decay = decay
        self.update_every_n_steps = update_every_n_steps
        self.update_starting_at_step = update_starting_at_step
        self.update_starting_at_epoch = update_starting_at_epoch

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        pass  # too early: see the module docstring

    def _take_average(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._average_model is None and trainer.state.fn == TrainerFn.FITTING:
            super().setup(trainer, pl_module, "fit")

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        self._take_average(trainer, pl_module)
        super().on_load_checkpoint(trainer, pl_module, checkpoint)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._take_average(trainer, pl_module)
        super().on_fit_start(trainer, pl_module)
