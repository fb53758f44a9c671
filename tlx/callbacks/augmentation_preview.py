"""A grid of augmented training samples, exactly as the model receives them."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from tlx.callbacks.tensorboard_images import class_name, preprocessing
from tlx.figures import figure_loggers, log_figure
from tlx.visuals import denormalize, image_grid_figure, never_fatal


class AugmentationPreview(Callback):
    """The first training batch of fit (after crops, flips, auto-augment, MixUp/CutMix),
    denormalised with the preprocessing's mean and std, titled with its labels.

    Args:
        num_images: how many images of the batch to show.
        every_n_epochs: also draw the first batch of every n-th epoch (0: only at the start).
    """

    tag = "train/augmented_samples"

    def __init__(self, num_images: int = 16, every_n_epochs: int = 0):
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self._drawn = False

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._drawn = False

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if batch_idx != 0 or not figure_loggers(trainer):
            return
        periodic = self.every_n_epochs > 0 and trainer.current_epoch % self.every_n_epochs == 0
        if self._drawn and not periodic:
            return
        x, y = batch
        x, y = x[: self.num_images], y[: self.num_images].detach().cpu()
        cfg = preprocessing(trainer, pl_module)
        if y.ndim == 2:  # MixUp/CutMix soft labels: the two classes mixed, with their weights
            titles = []
            for row in y:
                w, i = row.topk(min(2, len(row)))
                titles.append(" + ".join(f"{class_name(pl_module, int(c))} {float(v):.2f}" for v, c in zip(w, i) if v > 0.005))
        else:
            titles = [class_name(pl_module, int(t)) for t in y]
        with never_fatal(self.tag):
            fig = image_grid_figure(denormalize(x, cfg.mean, cfg.std), titles)
            log_figure(trainer, self.tag, fig, trainer.current_epoch)
        self._drawn = True
