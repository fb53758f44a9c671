"""One row per evaluated image (true class, predicted class, loss, probability of the true class):
what the run report keeps of an evaluation, and what it makes of it (confusion counts, the
worst-predicted images with thumbnails of their files). Four numbers an image: no images kept."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from tlx.report_html import Worst
from tlx.visuals import never_fatal

TRUE, PREDICTED, LOSS, P_TRUE = range(4)


def image_rows(logits: Tensor, targets: Tensor) -> Tensor:
    """``(B, 4)`` on the CPU: true, predicted, cross-entropy loss, p(true)."""
    logits = logits.detach().float()
    probs = logits.softmax(dim=-1)
    loss = F.cross_entropy(logits, targets, reduction="none")
    return torch.stack([targets.float(), probs.argmax(1).float(), loss, probs.gather(1, targets[:, None])[:, 0]], 1).cpu()


def confusion_counts(rows: Tensor, num_classes: int) -> Tensor:
    """The flat ``num_classes**2`` confusion counts (row: true, column: predicted)."""
    n = num_classes
    return torch.bincount(rows[:, TRUE].long() * n + rows[:, PREDICTED].long(), minlength=n * n)[: n * n]


def thumbnail_png(path: str, size: int = 160) -> bytes:
    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((size, size))
        buffer = io.BytesIO()
        im.save(buffer, format="PNG")
    return buffer.getvalue()


def worst_images(rows: Tensor, names: Sequence[str], k: int, samples: Sequence[tuple[Any, int]] | None) -> list[Worst]:
    """The ``k`` rows of highest loss; with ``samples`` (the split's ``(path, label)`` list, in the
    loader's order) their files and thumbnails, when the labels agree row for row."""
    order = rows[:, LOSS].argsort(descending=True)[:k].tolist()
    if samples is not None and (len(samples) != len(rows) or
                                any(int(samples[i][1]) != int(rows[i, TRUE]) for i in order)):
        samples = None  # not the loader's order after all: no file names rather than wrong ones
    worst = []
    for i in order:
        t, p, loss, prob = rows[i].tolist()
        w = Worst(names[int(t)], names[int(p)], loss, prob)
        if samples is not None:
            w.file = str(samples[i][0])
            with never_fatal(f"the thumbnail of {w.file}"):
                w.png = thumbnail_png(w.file)
        worst.append(w)
    return worst
