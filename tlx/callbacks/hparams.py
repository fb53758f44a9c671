"""TensorBoard's hyperparameters view, with the run's final metrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from tlx.tensorboard import tensorboard_loggers


class HParamsMetrics(Callback):
    """The model's and the data's hyperparameters in TensorBoard's HPARAMS tab, with one column per
    final metric, so that runs compare side by side.

    TensorBoard keeps the first hyperparameters record of a run and its list of metric columns, so
    this writes that record at the start of fit (before Lightning's own, which only has
    ``hp_metric``) with every column, and logs the values at the end of fit:
    ``final/<metric>`` (last logged value) and ``hp_metric`` = the best checkpoint score
    (``val/acc`` in tlx), else the last ``val/acc``.

    Args:
        metrics: logged metrics to show (their last values); ``*acc_top5`` only with > 5 classes.
    """

    def __init__(self, metrics: Sequence[str] = ("val/acc", "val/f1", "val/loss", "val/acc_top5", "train/loss")):
        self.metrics = list(metrics)

    def _columns(self, pl_module: LightningModule) -> list[str]:
        n = getattr(pl_module, "num_classes", None) or 0
        return ["hp_metric"] + [f"final/{m}" for m in self.metrics if not (m.endswith("acc_top5") and n <= 5)]

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        params: dict[str, Any] = dict(pl_module.hparams_initial)
        datamodule = trainer.datamodule
        if datamodule is not None and getattr(datamodule, "hparams_initial", None):
            params.update({f"data/{k}": v for k, v in datamodule.hparams_initial.items()})
        params["class_names"] = getattr(pl_module, "class_names", None)
        params["trainer/max_epochs"] = trainer.max_epochs
        # NaN until measured; the values logged at the end of fit are the latest, so they show.
        columns = {name: float("nan") for name in self._columns(pl_module)}
        for logger in tensorboard_loggers(trainer):
            saved = dict(logger.hparams)
            logger.log_hyperparams(params, metrics=columns, step=0)
            # hparams.yaml stays the model's own (these flattened keys are for the HPARAMS tab only)
            logger.hparams = saved

    def final_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, float]:
        values: dict[str, float] = {}
        for name in self._columns(pl_module)[1:]:
            v = trainer.callback_metrics.get(name.removeprefix("final/"))
            if v is not None and v.numel() == 1:
                values[name] = float(v)
        ckpt = trainer.checkpoint_callback
        if isinstance(ckpt, ModelCheckpoint) and ckpt.best_model_score is not None:
            values["hp_metric"] = float(ckpt.best_model_score)
        elif "final/val/acc" in values:
            values["hp_metric"] = values["final/val/acc"]
        return values

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        loggers = tensorboard_loggers(trainer)
        if not loggers:
            return
        metrics = self.final_metrics(trainer, pl_module)
        for logger in loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            logger.save()
