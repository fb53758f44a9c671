"""Shared plumbing of the callbacks that draw images for the loggers (any logger: tlx.figures)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from tlx.preprocessing import Preprocessing, fed_preprocessing
from tlx.figures import log_figure
from tlx.visuals import never_fatal

if TYPE_CHECKING:
    from matplotlib.figure import Figure  # drawn lazily (tlx.visuals.new_figure)


def preprocessing(trainer: Trainer, pl_module: LightningModule) -> Preprocessing:
    """The preprocessing the images went through (to show them as they were)."""
    return fed_preprocessing(pl_module, trainer.datamodule)


def batch_logits(pl_module: LightningModule, outputs: Any, x: Tensor) -> Tensor:
    """The logits of an evaluation batch: ``*_step``'s output when the model returns them (a
    tensor, or a dict with ``logits``), else one more forward pass."""
    logits = outputs.get("logits") if isinstance(outputs, dict) else outputs
    if not isinstance(logits, Tensor) or logits.shape[0] != x.shape[0]:
        with torch.no_grad():
            logits = pl_module(x)
    return logits


def class_name(pl_module: LightningModule, index: int) -> str:
    names = getattr(pl_module, "class_names", None)
    return names[index] if names and 0 <= index < len(names) else str(index)


class ValidationImages(Callback):
    """Collects what a subclass needs from each validation epoch and draws it as a figure.

    The figure goes to every logger (:func:`tlx.figures.log_figure`) every ``every_n_epochs`` epochs (0: never periodically) and,
    with ``at_fit_end``, once more at the end of fit for the last validation epoch when that one
    was not drawn already. The sanity check is never drawn. Logits come from ``validation_step``'s
    output when the model returns them, else from one more forward pass.
    """

    tag = "val/images"

    def __init__(self, every_n_epochs: int = 1, at_fit_end: bool = True):
        self.every_n_epochs = every_n_epochs
        self.at_fit_end = at_fit_end
        self._collected_epoch: int | None = None
        self._drawn_epoch: int | None = None

    # subclass interface ------------------------------------------------------------------------
    def reset(self) -> None:
        raise NotImplementedError

    def collect(self, images: Tensor, targets: Tensor, logits: Tensor) -> None:
        raise NotImplementedError

    def render(self, trainer: Trainer, pl_module: LightningModule) -> Figure | None:
        raise NotImplementedError

    # hooks -------------------------------------------------------------------------------------
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self.reset()

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        x, y = batch
        self.collect(x.detach(), y.detach(), batch_logits(pl_module, outputs, x).detach().float())

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        self._collected_epoch = trainer.current_epoch
        if self.every_n_epochs > 0 and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._draw(trainer, pl_module)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.at_fit_end and self._collected_epoch is not None and self._drawn_epoch != self._collected_epoch:
            self._draw(trainer, pl_module)

    def _draw(self, trainer: Trainer, pl_module: LightningModule) -> None:
        with never_fatal(self.tag):
            fig = self.render(trainer, pl_module)
            if fig is not None:
                log_figure(trainer, self.tag, fig, self._collected_epoch)
        self._drawn_epoch = self._collected_epoch
