"""Multi-label classification: a sigmoid per label, binary cross-entropy, mAP and F1, and a decision
threshold per label fitted on validation.

The thresholds maximise each label's F1 on the validation images, at every validation of ``fit``,
so that each checkpoint (``best.ckpt`` included) carries the thresholds fitted to its own weights;
they live in the model's ``label_thresholds`` buffer, hence in the checkpoint, and ``test``,
``predict`` and :func:`tlx.inference.predict` decide with them. Validation's own F1 and accuracy
are taken at 0.5: at thresholds fitted on the same images they would flatter the model.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MultilabelAccuracy,
    MultilabelAveragePrecision,
    MultilabelF1Score,
    MultilabelPrecisionRecallCurve,
    MultilabelStatScores,
)

DEFAULT_THRESHOLD = 0.5


@contextmanager
def _labels_without_positives_allowed():
    """A label with no positive among the validation images is normal in multi-label data (a rare
    one); torchmetrics warns about it at every epoch. Its AP is left out of mAP, its threshold stays 0.5."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*positive samples.*")
        yield


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
        # Exact (every validation score a candidate), not a grid: early in training a label's scores
        # can all lie within 0.01 of each other. It keeps the scores, as the exact AP does.
        self.curve = MultilabelPrecisionRecallCurve(num_labels)
        self.counts = MultilabelStatScores(num_labels, average=None)  # support: positives per label

    def update(self, probs: Tensor, targets: Tensor, thresholds: Tensor | float) -> None:
        targets = targets.round().long()  # 0/1 (a smoothed or float target rounds back)
        self.average_precision.update(probs, targets)
        self.curve.update(probs, targets)
        self.counts.update(probs, targets)
        self.decisions.update(chosen(probs, thresholds).float(), targets)

    def compute(self, prefix: str, class_names: list[str]) -> dict[str, Tensor]:
        """``{prefix}mAP``, ``{prefix}acc``, ``{prefix}f1_macro``, ``{prefix}f1_micro`` and
        ``{prefix}ap_class/<label>``; synced over DDP ranks by torchmetrics."""
        with _labels_without_positives_allowed():
            ap = self.average_precision.compute()
        # A label without a positive among these images has no AP (torchmetrics says 0): left out.
        has_positives = self.counts.compute()[:, 4] > 0  # (tp, fp, tn, fn, support) per label
        values = {f"{prefix}mAP": ap[has_positives].mean() if has_positives.any() else ap.new_tensor(0.0)}
        values.update({f"{prefix}{k}": v for k, v in self.decisions.compute().items()})
        values.update({f"{prefix}ap_class/{name}": v for name, v, ok in zip(class_names, ap, has_positives) if ok})
        return values

    def best_thresholds(self) -> Tensor:
        """Per label, the threshold of highest F1 on these images (the lowest where several tie), put
        half-way down to the next lower score so that it does not sit on a validation score; 0.5 for
        a label that no threshold gives a true positive (none among these images, say)."""
        with _labels_without_positives_allowed():
            precision, recall, scores = self.curve.compute()  # per label; scores ascending
        out = []
        for p, r, t in zip(precision, recall, scores):
            p, r = p[:-1], r[:-1]  # the last point is the (precision 1, recall 0) end
            f1 = (2 * p * r / (p + r).clamp(min=1e-12)).nan_to_num(0.0)  # nan: nothing predicted
            if len(t) == 0 or f1.max() <= 0:
                out.append(DEFAULT_THRESHOLD)
                continue
            k = int(f1.argmax())
            out.append(float((t[k] + t[k - 1]) / 2 if k > 0 else t[k]))
        return torch.tensor(out, device=self.curve.device)

    def reset(self) -> None:
        self.average_precision.reset()
        self.decisions.reset()
        self.curve.reset()
        self.counts.reset()
