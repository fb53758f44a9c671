"""A gallery of validation predictions: image, predicted class, confidence, true class."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor

from tlx.callbacks.tensorboard_images import ValidationImages, class_name, preprocessing
from tlx.visuals import BAD, GOOD, denormalize, image_grid_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure  # drawn lazily (tlx.visuals.new_figure)


class PredictionGallery(ValidationImages):
    """The first ``num_images`` validation images with their predictions (green right, red wrong).

    Images are taken in validation order with at most ``num_images / num_classes`` per true
    class, so every class shows up (validation data is sorted by class); when classes run short
    (few batches, small classes), the first other images fill the grid. The loader is not
    shuffled: the same images come back every epoch and their titles show the model change its mind.

    Args:
        num_images: how many images to show.
        every_n_epochs: draw every n validation epochs (0: only at the end of fit).
        at_fit_end: also draw the last validation epoch at the end of fit.
    """

    tag = "val/predictions"

    def __init__(self, num_images: int = 16, every_n_epochs: int = 1, at_fit_end: bool = True):
        super().__init__(every_n_epochs, at_fit_end)
        self.num_images = num_images
        self.reset()

    def reset(self) -> None:
        self._images: list[Tensor] = []
        self._targets: list[Tensor] = []
        self._probs: list[Tensor] = []
        self._spare: list[tuple[Tensor, Tensor, Tensor]] = []  # over-quota images, to fill the grid

    def _count(self) -> int:
        return sum(len(t) for t in self._targets)

    def collect(self, images: Tensor, targets: Tensor, logits: Tensor) -> None:
        if self._count() >= self.num_images or targets.ndim != 1:
            return
        quota = max(1, self.num_images // logits.shape[1])
        per_class = torch.bincount(torch.cat(self._targets), minlength=logits.shape[1]) if self._targets else \
            torch.zeros(logits.shape[1], dtype=torch.long)
        keep, total = [], self._count()
        for i, t in enumerate(targets.tolist()):
            if total < self.num_images and per_class[t] < quota:
                keep.append(i)
                per_class[t] += 1
                total += 1
            elif len(self._spare) < self.num_images:
                self._spare.append((images[i].cpu(), targets[i].cpu(), logits[i].softmax(dim=-1).cpu()))
        if keep:
            idx = torch.tensor(keep, device=targets.device)
            self._images.append(images[idx].cpu())
            self._targets.append(targets[idx].cpu())
            self._probs.append(logits[idx].softmax(dim=-1).cpu())

    def render(self, trainer: Trainer, pl_module: LightningModule) -> Figure | None:
        fill = self._spare[: max(0, self.num_images - self._count())]
        if fill:
            self._images.append(torch.stack([f[0] for f in fill]))
            self._targets.append(torch.stack([f[1] for f in fill]))
            self._probs.append(torch.stack([f[2] for f in fill]))
            self._spare = self._spare[len(fill):]
        if not self._targets:
            return None
        cfg = preprocessing(trainer, pl_module)
        images = denormalize(torch.cat(self._images), cfg.mean, cfg.std)
        targets, probs = torch.cat(self._targets), torch.cat(self._probs)
        conf, pred = probs.max(dim=1)
        titles, colors = [], []
        for t, p, c in zip(targets.tolist(), pred.tolist(), conf.tolist()):
            titles.append(f"{class_name(pl_module, p)} ({c:.0%})\ntrue: {class_name(pl_module, t)}")
            colors.append(GOOD if p == t else BAD)
        return image_grid_figure(images, titles, colors)
