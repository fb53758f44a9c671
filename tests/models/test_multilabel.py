"""tlx.models.multilabel: the thresholds fitted on validation, mAP over labels with positives, BCE."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tlx.models.multilabel import MultilabelMetrics, multilabel_loss

# 4 images, 3 labels: "a" separable between 0.55 and 0.6, "b" between 0.3 and 0.7, "c" never positive.
PROBS = torch.tensor([[0.8, 0.3, 0.1], [0.6, 0.7, 0.2], [0.4, 0.9, 0.3], [0.55, 0.2, 0.4]])
TARGETS = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]])


def test_thresholds_maximise_each_labels_f1_half_way_between_scores():
    metrics = MultilabelMetrics(3)
    metrics.update(PROBS, TARGETS, 0.5)
    thresholds = metrics.best_thresholds()
    # half-way between the highest negative and the lowest positive; 0.5 without a positive
    assert thresholds.tolist() == pytest.approx([0.575, 0.5, 0.5])
    assert torch.equal(PROBS[:, :2] >= thresholds[:2], TARGETS[:, :2].bool())


def test_map_leaves_out_labels_without_positives_and_f1_uses_the_given_thresholds(recwarn):
    metrics = MultilabelMetrics(3)
    metrics.update(PROBS, TARGETS, torch.tensor([0.575, 0.5, 0.5]))
    values = metrics.compute("val/", ["a", "b", "c"])
    assert float(values["val/mAP"]) == pytest.approx(1.0)  # "c" (no positive) would pull it to 2/3
    assert "val/ap_class/c" not in values and float(values["val/ap_class/a"]) == pytest.approx(1.0)
    assert float(values["val/f1_micro"]) == pytest.approx(1.0)  # every decision right at these thresholds
    assert not [w for w in recwarn if "positive samples" in str(w.message)]
    metrics.reset()
    metrics.update(PROBS, TARGETS, 0.5)  # at 0.5, image 4's 0.55 is a false "a"
    assert float(metrics.compute("val/", ["a", "b", "c"])["val/f1_micro"]) < 1.0


def test_loss_is_binary_cross_entropy_with_smoothing_towards_one_half():
    logits, targets = torch.tensor([[2.0, -1.0]]), torch.tensor([[1.0, 0.0]])
    assert multilabel_loss(logits, targets) == pytest.approx(float(F.binary_cross_entropy_with_logits(logits, targets)))
    smoothed = torch.tensor([[0.95, 0.05]])
    assert multilabel_loss(logits, targets, 0.1) == pytest.approx(float(F.binary_cross_entropy_with_logits(logits, smoothed)))
