"""A grid of the validation images the model gets most wrong (fastai's plot_top_losses)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor

from tlx.callbacks.tensorboard_images import ValidationImages, class_name, preprocessing
from tlx.visuals import BAD, GOOD, denormalize, image_grid_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure  # drawn lazily (tlx.visuals.new_figure)


class TopLosses(ValidationImages):
    """The ``k`` validation images with the highest cross-entropy loss, titled
    ``predicted / true / loss / probability of the true class``.

    Only a running top-k is kept (images on the CPU), so memory does not grow with the data.

    Args:
        k: how many images to show.
        every_n_epochs: draw every n validation epochs (0: only at the end of fit).
        at_fit_end: also draw the last validation epoch at the end of fit.
    """

    tag = "val/top_losses"

    def __init__(self, k: int = 9, every_n_epochs: int = 1, at_fit_end: bool = True):
        super().__init__(every_n_epochs, at_fit_end)
        self.k = k
        self.reset()

    def reset(self) -> None:
        self._losses = torch.empty(0)
        self._images = torch.empty(0)
        self._targets = torch.empty(0, dtype=torch.long)
        self._probs = torch.empty(0)

    def collect(self, images: Tensor, targets: Tensor, logits: Tensor) -> None:
        if targets.ndim != 1:
            return
        losses = F.cross_entropy(logits.float(), targets, reduction="none")
        # This batch's top k on its device first: only k images ever travel to the CPU.
        top = losses.topk(min(self.k, len(losses))).indices
        losses, images, targets = losses[top].cpu(), images[top].cpu(), targets[top].cpu()
        probs = logits[top].float().softmax(dim=-1).cpu()
        if len(self._losses):
            losses = torch.cat([self._losses, losses])
            images = torch.cat([self._images, images])
            targets = torch.cat([self._targets, targets])
            probs = torch.cat([self._probs, probs])
        keep = losses.topk(min(self.k, len(losses))).indices
        self._losses, self._images, self._targets, self._probs = losses[keep], images[keep], targets[keep], probs[keep]

    def render(self, trainer: Trainer, pl_module: LightningModule) -> Figure | None:
        if not len(self._losses):
            return None
        cfg = preprocessing(trainer, pl_module)
        images = denormalize(self._images, cfg.mean, cfg.std)
        pred = self._probs.argmax(dim=1)
        titles, colors = [], []
        for i, (t, p) in enumerate(zip(self._targets.tolist(), pred.tolist())):
            titles.append(
                f"{class_name(pl_module, p)} / {class_name(pl_module, t)}\n"
                f"{float(self._losses[i]):.2f} / {float(self._probs[i, t]):.2f}"
            )
            colors.append(GOOD if p == t else BAD)
        fig = image_grid_figure(images, titles, colors)
        fig.suptitle("predicted / true\nloss / probability of true", fontsize=9)
        fig.tight_layout()
        return fig
