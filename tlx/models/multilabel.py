"""Multi-label classification: a sigmoid per label, binary cross-entropy, mAP and F1, and a decision
threshold per label fitted on validation.

The thresholds maximise each label's F1 on the validation images, at every validation of ``fit``,
so that each checkpoint (``best.ckpt`` included) carries the thresholds fitted to its own weights;
they live in the model's ``label_thresholds`` buffer, hence in the checkpoint, and ``test``,
``predict`` and :func:`tlx.inference.predict` decide with them. Validation's own F1 and accuracy
are taken at 0.5: at thresholds fitted on the same images they would flatter the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MultilabelAccuracy,
    MultilabelAveragePrecision,
    MultilabelF1Score,
    MultilabelPrecisionRecallCurve,
)

# Candidate thresholds 0, 0.01, ..., 1: binned counts, so memory and DDP sync stay fixed in size.
THRESHOLD_GRID = 101
DEFAULT_THRESHOLD = 0.5


def multilabel_loss(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Binary cross-entropy on each label; smoothing pulls the 0/1 targets towards 0.5."""
    targets = targets.float()
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + 0.5 * label_smoothing
    return F.binary_cross_entropy_with_logits(logits.float(), targets)


def chosen(probs: Tensor, thresholds: Tensor | float) -> Tensor:
    """Which labels an image gets: every one at or above its threshold."""
    return probs >= thresholds


class MultilabelMetrics(nn.Module):
    """One split's metrics: average precision per label (mAP: their mean over labels with a positive),
    macro and micro F1 and label-wise accuracy of the decisions, and the precision/recall counts that
    :meth:`best_thresholds` reads."""

    def __init__(self, num_labels: int):
        super().__init__()
        self.average_precision = MultilabelAveragePrecision(num_labels, average=None)
        self.decisions = MetricCollection({
            "acc": MultilabelAccuracy(num_labels, average="micro"),
            "f1_macro": MultilabelF1Score(num_labels, average="macro"),
            "f1_micro": MultilabelF1Score(num_labels, average="micro"),
        })
        self.curve = MultilabelPrecisionRecallCurve(num_labels, thresholds=THRESHOLD_GRID)

    def update(self, probs: Tensor, targets: Tensor, thresholds: Tensor | float) -> None:
        targets = targets.round().long()  # 0/1 (a smoothed or float target rounds back)
        self.average_precision.update(probs, targets)
        self.curve.update(probs, targets)
        self.decisions.update(chosen(probs, thresholds).float(), targets)

    def compute(self, prefix: str, class_names: list[str]) -> dict[str, Tensor]:
        """``{prefix}mAP``, ``{prefix}acc``, ``{prefix}f1_macro``, ``{prefix}f1_micro`` and
        ``{prefix}ap_class/<label>``; synced over DDP ranks by torchmetrics."""
        ap = self.average_precision.compute()
        # A label without a positive among these images has no AP (nan): left out of the mean.
        values = {f"{prefix}mAP": ap.nanmean() if not ap.isnan().all() else ap.new_tensor(0.0)}
        values.update({f"{prefix}{k}": v for k, v in self.decisions.compute().items()})
        values.update({f"{prefix}ap_class/{name}": v for name, v in zip(class_names, ap) if not v.isnan()})
        return values

    def best_thresholds(self) -> Tensor:
        """Per label, the grid threshold of highest F1 (the middle one where several tie: a margin
        on both sides); 0.5 for a label that no threshold gives a true positive."""
        precision, recall, grid = self.curve.compute()
        precision, recall = precision[:, :-1], recall[:, :-1]  # the last point is the (1, 0) end
        f1 = (2 * precision * recall / (precision + recall).clamp(min=1e-12)).nan_to_num(0.0)  # nan: nothing predicted
        best = f1.max(dim=1).values
        out = torch.full((f1.shape[0],), DEFAULT_THRESHOLD, device=f1.device)
        for label in range(f1.shape[0]):
            if best[label] > 0:
                ties = torch.nonzero(f1[label] >= best[label] - 1e-6).flatten()
                out[label] = grid[ties[len(ties) // 2]]
        return out

    def reset(self) -> None:
        self.average_precision.reset()
        self.decisions.reset()
        self.curve.reset()
