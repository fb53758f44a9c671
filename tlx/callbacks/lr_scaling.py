"""Learning rate scaled with the global batch size (an explicit opt-in for multi-GPU runs)."""

from __future__ import annotations

import math
from typing import Literal

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from tlx.errors import TLXError


class ScaleLearningRate(Callback):
    """Multiply the configured learning rate by ``(global_batch / reference_batch_size)``.

    The config's ``lr`` is read as tuned for ``reference_batch_size`` images per optimiser step.
    The global batch is the per-process batch size x processes (devices x nodes) x
    ``accumulate_grad_batches``. ``linear`` is the rule of Goyal et al. (2017); ``sqrt`` is milder
    (often better for Adam-type optimisers). Every learning rate the optimiser and scheduler start
    from is scaled; absolute floors (``eta_min``, ReduceLROnPlateau's ``min_lr``) are not. A resumed
    run continues with the checkpoint's learning rates.

    Args:
        reference_batch_size: the global batch size the configured ``lr`` was chosen for.
        rule: ``linear`` or ``sqrt``.
        batch_size: per-process batch size; by default the datamodule's ``batch_size``.
    """

    def __init__(self, reference_batch_size: int, rule: Literal["linear", "sqrt"] = "linear",
                 batch_size: int | None = None):
        if reference_batch_size < 1:
            raise TLXError(f"ScaleLearningRate: reference_batch_size must be >= 1, got {reference_batch_size}.")
        if rule not in ("linear", "sqrt"):
            raise TLXError(f"ScaleLearningRate: rule must be 'linear' or 'sqrt', got {rule!r}.")
        self.reference_batch_size = reference_batch_size
        self.rule = rule
        self.batch_size = batch_size
        self.factor: float | None = None

    def global_batch_size(self, trainer: Trainer) -> int:
        batch = self.batch_size
        if batch is None:
            datamodule = trainer.datamodule
            batch = getattr(datamodule, "batch_size", None) or getattr(datamodule, "hparams", {}).get("batch_size")
        if not batch:
            raise TLXError("ScaleLearningRate: the batch size is unknown; set its batch_size argument.")
        return int(batch) * trainer.world_size * trainer.accumulate_grad_batches

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Hands the factor to the model, which applies it with the groups' scales in one place
        # (tlx.optim.scale_learning_rates) when it builds the optimizer. A resumed run then
        # continues with the checkpoint's (already scaled) learning rates.
        if stage != "fit":
            return
        if not hasattr(pl_module, "lr_factor"):
            raise TLXError(f"ScaleLearningRate needs a tlx model (with `lr_factor`), not {type(pl_module).__name__}.")
        global_batch = self.global_batch_size(trainer)
        ratio = global_batch / self.reference_batch_size
        self.factor = ratio if self.rule == "linear" else math.sqrt(ratio)
        pl_module.lr_factor = self.factor
        rank_zero_info(
            f"[tlx] learning rate x{self.factor:.4g} ({self.rule}): global batch {global_batch} "
            f"vs reference {self.reference_batch_size}"
        )
