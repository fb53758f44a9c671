"""``report.html`` in the run folder at the end of ``fit`` and of ``test``: the run in one file that
opens without TensorBoard (metric curves, confusion matrix, per-class accuracy, most-confused
pairs, top losses, trainable/frozen parameters, resolved config, timing; see tlx.report_html).

Curves come from ``trainer.callback_metrics`` after each training epoch and each validation, so
they do not depend on which logger (if any) the run has. The confusion matrix is counted from
the evaluation steps' logits and summed over processes; the top losses are rank 0's, with
thumbnails read from the data module's files (``samples(split)``) in loader order, which also
works when the batches are cached features (FeatureCache) rather than images.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor

from tlx.callbacks.tensorboard_images import batch_logits
from tlx.callbacks.trainable_summary import trainable_table
from tlx.evaluation_rows import confusion_counts, image_rows, worst_images
from tlx.phase_clock import PhaseClock
from tlx.report_html import Evaluation, RunSummary, render_report
from tlx.visuals import never_fatal

log = logging.getLogger("tlx")

TITLES = {"val": "Validation (last epoch of fit)", "test": "Test"}


def epoch_scalars(metrics: dict[str, Tensor], prefix: str = "") -> dict[str, float]:
    """The one-number metrics under ``prefix``, once each: no ``*_step`` values, no ``x_epoch`` when
    ``x`` is there too (Lightning keeps both for ``on_step`` + ``on_epoch``), no per-class entries
    (the report has its own table)."""
    values = {k: float(v) for k, v in metrics.items()
              if k.startswith(prefix) and not k.endswith("_step") and "/acc_class/" not in k and v.numel() == 1}
    return {k: v for k, v in values.items() if not (k.endswith("_epoch") and k.removesuffix("_epoch") in values)}


class RunReport(Callback):
    """Writes ``report.html`` into ``trainer.log_dir`` when ``fit`` or ``test`` ends (and, with what
    it has, when a run stops on an error).

    Args:
        enabled: write the report (``--run_report.enabled false`` turns it off).
        filename: the report's file name in the run folder.
        top_losses: how many of the worst-predicted evaluation images to show.
    """

    def __init__(self, enabled: bool = True, filename: str = "report.html", top_losses: int = 12):
        self.enabled = enabled
        self.filename = filename
        self.top_losses = top_losses
        self.history: list[dict] = []
        self.evaluations: dict[str, Evaluation] = {}
        self._batches: dict[str, list[Tensor]] = {}
        self._log_dir: str | None = None
        self.clock = PhaseClock()

    # ---- hooks -------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.enabled:  # a collective under DDP: every rank asks (see tlx.cli.SaveRunInfo)
            self._log_dir = trainer.log_dir
        # from setup on: other callbacks' on_fit_start (a feature cache's extraction) counts too
        if stage in ("fit", "test"):
            self.clock.start(stage)
        if stage == "fit":  # before a resumed checkpoint's history is loaded (load_state_dict)
            self.history = []

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}  # a resumed run's report shows its whole curves

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))

    def on_sanity_check_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.clock.start("sanity")

    def on_sanity_check_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.clock.stop("sanity")

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.clock.start("train")

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.clock.stop("train")
        self._record(trainer, "train/")

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self.clock.start("val")
            self._batches["val"] = []

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._batches["test"] = []

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking:
            self._collect("val", pl_module, outputs, batch)

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect("test", pl_module, outputs, batch)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._evaluate(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._evaluate(trainer, pl_module, "test")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:  # the epoch's reduced values are in callback_metrics by now
            self.clock.stop("val")
            self._record(trainer, "val/")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.clock.stop("fit")
        self.write(trainer, pl_module, "fit finished")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.clock.stop("test")
        self.write(trainer, pl_module, "test finished")

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.clock.stop_all()
        if self.history or self.evaluations:  # a run that failed in its setup has nothing to show
            self.write(trainer, pl_module, f"stopped early ({type(exception).__name__}); this is what the run had")

    # ---- collecting --------------------------------------------------------------------------
    def _record(self, trainer: Trainer, prefix: str) -> None:
        values = epoch_scalars(trainer.callback_metrics, prefix)
        if values:
            self.history.append({"epoch": trainer.current_epoch + 1, "step": trainer.global_step, **values})

    def _collect(self, stage: str, pl_module: LightningModule, outputs: Any, batch: Any) -> None:
        if not self.enabled or stage not in self._batches or not isinstance(batch, (tuple, list)) or len(batch) != 2:
            return
        try:
            self._collect_batch(stage, pl_module, outputs, batch)
        except Exception as e:  # a model this report does not understand: no matrix, and the run goes on
            self._batches.pop(stage, None)
            log.warning("run report: no confusion matrix for %s (%s: %s).", stage, type(e).__name__, e)

    def _collect_batch(self, stage: str, pl_module: LightningModule, outputs: Any, batch: Any) -> None:
        x, y = batch
        if not isinstance(y, Tensor) or y.ndim != 1 or y.is_floating_point():
            return  # soft or multi-label targets: no confusion matrix
        logits = batch_logits(pl_module, outputs, x)
        if logits.ndim == 2 and len(logits) == len(y):
            self._batches[stage].append(image_rows(logits, y))

    def _evaluate(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        names = list(getattr(pl_module, "class_names", None) or [])
        rows = torch.cat(self._batches.pop(stage, None) or [torch.empty(0, 4)])
        if not self.enabled or not names:
            return
        n = len(names)
        # every rank takes part (a collective), each with its shard's counts
        counts = trainer.strategy.reduce(confusion_counts(rows, n).to(pl_module.device), reduce_op="sum").cpu()
        if not int(counts.sum()):  # nothing this report could read (not a single-label classifier)
            return
        self.evaluations[stage] = Evaluation(TITLES[stage], names, counts.view(n, n),
                                             worst_images(rows, names, self.top_losses, self._samples(trainer, stage)))

    @staticmethod
    def _samples(trainer: Trainer, stage: str) -> list | None:
        """The split's ``(path, label)`` list, in the loader's order (evaluation is not shuffled),
        where the data module offers it; one process only (a shard's order is not the list's)."""
        samples_of = getattr(trainer.datamodule, "samples", None)
        if trainer.world_size != 1 or not callable(samples_of):
            return None
        with never_fatal("the top-loss file names"):
            return samples_of(stage)
        return None

    # ---- writing -----------------------------------------------------------------------------
    def summary(self, trainer: Trainer, pl_module: LightningModule, status: str) -> RunSummary:
        backbone = getattr(getattr(pl_module, "backbone", None), "name", None) or type(pl_module).__name__
        root = getattr(trainer.datamodule, "root", None)
        metrics = epoch_scalars(trainer.callback_metrics)
        ckpt = trainer.checkpoint_callback
        best = None
        if isinstance(ckpt, ModelCheckpoint) and ckpt.best_model_path and ckpt.best_model_score is not None:
            best = (ckpt.best_model_path, float(ckpt.best_model_score))
        if best and "val" in self.evaluations:
            self.evaluations["val"].note = (f"The model after the last epoch. The best checkpoint (score {best[1]:.4g}) "
                                            "may differ: `tlx test --ckpt_path` on it reports its own figures.")
        config_path = os.path.join(self._log_dir or "", "config.yaml")
        config = open(config_path).read() if os.path.isfile(config_path) else None
        notes = [] if trainer.world_size == 1 else [
            f"{trainer.world_size} processes: the confusion matrix counts all of them, the top losses are rank 0's."]
        return RunSummary(
            title=f"{backbone} on {root}" if root else str(backbone), log_dir=str(self._log_dir),
            status=f"{status}, {datetime.now():%Y-%m-%d %H:%M:%S}",
            metrics=metrics, best=best, history=self.history,
            evaluations=[self.evaluations[s] for s in ("val", "test") if s in self.evaluations],
            trainable=trainable_table(pl_module), config=config, timing=self.clock.rows(), notes=notes)

    def write(self, trainer: Trainer, pl_module: LightningModule, status: str) -> str | None:
        """Write the report now (global rank 0); its path, or None."""
        if not self.enabled or not trainer.is_global_zero or self._log_dir is None:
            return None
        path = os.path.join(self._log_dir, self.filename)
        with never_fatal(self.filename):
            page = render_report(self.summary(trainer, pl_module, status))
            os.makedirs(self._log_dir, exist_ok=True)
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                f.write(page)
            os.replace(path + ".tmp", path)  # a reader never sees half a page
            log.info("Run report: %s", path)
            return path
        return None
