"""Temperature scaling at the end of fit (:mod:`tlx.calibration`): ``T`` fitted on the validation set
with the best checkpoint's weights, then written into that checkpoint, so ``tlx.load(...).predict``,
``python -m tlx predict``/``test`` and ``export`` use ``softmax(logits / T)``.

The validation logits are computed once (in the run's precision context, through the model's own
input path: cached features when the feature cache is on, else images) and ``T`` is fitted on them.
Only the best checkpoint gets ``T``: it is fitted for those weights (``last.ckpt``, which a resumed
run continues from, keeps ``T = 1``). Under DDP every rank's shard of the logits is gathered, so all
ranks fit the same ``T``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from tlx.calibration import CalibrationReport, calibrate
from tlx.checkpointing import atomic_torch_save, safe_torch_load
from tlx.errors import TLXError
from tlx.modes import evaluating

log = logging.getLogger("tlx")


class TemperatureScaling(Callback):
    """Fit one temperature on validation at the end of fit (Guo et al., 2017).

    Args:
        max_iter: LBFGS iterations (the fit is a 1-D convex problem; a handful suffice).
    """

    def __init__(self, max_iter: int = 100):
        self.max_iter = max_iter
        self.report: CalibrationReport | None = None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # refused before training, not after it: a multi-label model's calibration is its thresholds
        if getattr(pl_module, "task", None) == "multilabel":
            raise TLXError("TemperatureScaling calibrates a softmax over classes; a multi-label model's per-label "
                           "thresholds, fitted on validation, are its calibration: remove the callback "
                           "(configs/callbacks/temperature.yaml) from this run.")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not isinstance(getattr(pl_module, "temperature", None), Tensor):
            raise TLXError(f"TemperatureScaling needs a tlx classifier (a `temperature` buffer); "
                           f"{type(pl_module).__name__} has none.")
        datamodule = trainer.datamodule
        loader = datamodule.val_dataloader() if datamodule is not None else trainer.val_dataloaders
        if loader is None:
            log.warning("TemperatureScaling: no validation data, so no temperature fitted (T stays 1).")
            return
        checkpoint = getattr(trainer.checkpoint_callback, "best_model_path", "") or ""
        logits, labels = self._logits(trainer, pl_module, loader, checkpoint)
        self.report = calibrate(logits, labels, self.max_iter)
        pl_module.temperature.fill_(self.report.temperature)
        where = f"validation images, weights of {checkpoint or 'the end of fit'}"
        if trainer.is_global_zero:
            log.info(self.report.line(where))
            for logger in trainer.loggers:
                logger.log_metrics({f"calibration/{k}": float(v) for k, v in self.report.to_dict().items()},
                                   step=trainer.global_step)
            if checkpoint:
                ckpt = safe_torch_load(checkpoint)
                ckpt["state_dict"]["temperature"] = pl_module.temperature.detach().cpu().clone()
                ckpt["calibration"] = self.report.to_dict()
                atomic_torch_save(ckpt, checkpoint)
        if not checkpoint:
            log.warning("TemperatureScaling: no best checkpoint to store T in; it is set on the model only "
                        "(trainer.save_checkpoint keeps it).")

    @torch.no_grad()
    def _logits(self, trainer: Trainer, pl_module: LightningModule, loader: Any, checkpoint: str) -> tuple[Tensor, Tensor]:
        """The validation logits and labels of the checkpoint's weights (the model keeps its own)."""
        current = {k: v.detach().clone() for k, v in pl_module.state_dict().items()} if checkpoint else None
        try:
            if checkpoint:
                pl_module.load_state_dict(safe_torch_load(checkpoint)["state_dict"])
            with evaluating(pl_module):
                outputs, targets = [], []
                for batch in loader:
                    x, y = batch[0].to(pl_module.device), batch[1]
                    with trainer.precision_plugin.forward_context():
                        outputs.append(pl_module(x).float().cpu())
                    targets.append(y.cpu())
        finally:
            if current is not None:
                pl_module.load_state_dict(current)
        logits, labels = torch.cat(outputs), torch.cat(targets)
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            shards: list[Any] = [None] * trainer.world_size
            dist.all_gather_object(shards, (logits, labels))
            logits, labels = torch.cat([s[0] for s in shards]), torch.cat([s[1] for s in shards])
        return logits, labels
