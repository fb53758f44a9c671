"""Classification metrics (torchmetrics) and their figures."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCalibrationError,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
)

from tlx.calibration import ECE_BINS
from tlx.visuals import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class LogitCalibrationError(MulticlassCalibrationError):
    """Expected calibration error (15 equal-width confidence bins, l1, as Guo et al. 2017) of the
    softmax of the logits it is given. The softmax is taken here: torchmetrics would take logits
    that happen to lie within [0, 1] for probabilities."""

    def __init__(self, num_classes: int):
        super().__init__(num_classes, n_bins=ECE_BINS, norm="l1")

    def update(self, preds: Tensor, target: Tensor) -> None:
        super().update(preds.float().softmax(dim=-1), target)


def scalar_metrics(num_classes: int, prefix: str) -> MetricCollection:
    """Top-1 accuracy, macro F1, expected calibration error (``ece``, of the logits given: the model
    passes them divided by its temperature), and top-5 accuracy when there are more than 5 classes."""
    metrics = {
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "f1": MulticlassF1Score(num_classes, average="macro"),
        "ece": LogitCalibrationError(num_classes),
    }
    if num_classes > 5:
        metrics["acc_top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
    return MetricCollection(metrics, prefix=prefix)


def per_class_metrics(num_classes: int) -> MetricCollection:
    return MetricCollection(
        {
            "acc_per_class": MulticlassAccuracy(num_classes, average=None),
            "confusion": MulticlassConfusionMatrix(num_classes),
        }
    )


def confusion_figure(matrix: Tensor, class_names: list[str]) -> Figure:
    """The confusion matrix with class names on both axes (rows: true, columns: predicted)."""
    n = len(class_names)
    size = min(max(4.0, 0.35 * n + 2.0), 20.0)
    fig = new_figure(figsize=(size, size), dpi=100)
    ax = fig.add_subplot()
    m = matrix.detach().cpu().float()
    ax.imshow(m.numpy(), cmap="Blues")
    # parse_math=False: class names are data ('price_$5'), never mathtext.
    ax.set_xticks(range(n), labels=class_names, rotation=90, fontsize=8, parse_math=False)
    ax.set_yticks(range(n), labels=class_names, fontsize=8, parse_math=False)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 31:
        threshold = m.max().item() / 2
        for i in range(n):
            for j in range(n):
                v = int(m[i, j])
                if v:
                    ax.text(j, i, v, ha="center", va="center", fontsize=7,
                            color="white" if m[i, j] > threshold else "black")
    fig.tight_layout()
    return fig


def wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of an accuracy measured as ``correct`` of ``total`` (95% for z=1.96):
    how far the true accuracy may lie from a small validation set's."""
    if total <= 0:
        return 0.0, 1.0
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = wilson_half_width(p, total, z)
    return max(0.0, centre - half), min(1.0, centre + half)


def wilson_half_width(p: float, total: int, z: float = 1.96) -> float:
    """Half the width of the Wilson interval of an accuracy ``p`` on ``total`` images (unclipped;
    ``p`` may be a mean over runs, not a count)."""
    return z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)


def per_class_rows(matrix: Tensor, class_names: list[str]) -> list[dict]:
    """Per true class of a confusion matrix (rows: true): images, correct, accuracy (recall) with
    its 95% Wilson interval, and precision (the share of that class's predictions that are right)."""
    m = matrix.detach().cpu().long()
    rows = []
    for i, name in enumerate(class_names):
        total, correct, predicted = int(m[i].sum()), int(m[i, i]), int(m[:, i].sum())
        low, high = wilson_interval(correct, total)
        rows.append({"class": name, "images": total, "correct": correct,
                     "accuracy": correct / total if total else float("nan"), "low": low, "high": high,
                     "precision": correct / predicted if predicted else float("nan")})
    return rows


def most_confused(matrix: Tensor, class_names: list[str], k: int = 10) -> list[tuple[str, str, int, float]]:
    """The ``k`` largest off-diagonal counts: ``(true, predicted, count, share of the true class)``."""
    m = matrix.detach().cpu().long()
    flat = m.clone().fill_diagonal_(0).flatten()
    n = len(m)
    # a stable sort of the counts: ties in row-major order (true class, then predicted)
    order = flat.argsort(descending=True, stable=True)[:k].tolist()
    return [(class_names[f // n], class_names[f % n], int(flat[f]), int(flat[f]) / int(m[f // n].sum()))
            for f in order if flat[f] > 0]
