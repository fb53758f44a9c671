"""Self-training on the target: information maximisation (SHOT, Liang et al., 2020) and
confidence-thresholded pseudo-labels (Lee, 2013; FixMatch's threshold, Sohn et al., 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tlx.domain_adaptation.objectives.base import DomainBatch, Objective, ObjectiveOutput, entropy, float32


def information_maximization(logits: Tensor) -> tuple[Tensor, Tensor]:
    """SHOT's two terms on one batch of target logits: the mean entropy of the predictions (made
    small: each sample confident) and the entropy of their mean (made large: the classes used
    evenly, which keeps the first term from collapsing every sample onto one class)."""
    with float32(logits):
        p = logits.float().softmax(dim=1)
        return entropy(p).mean(), entropy(p.mean(dim=0, keepdim=True)).squeeze(0)


def pseudo_label_loss(logits: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """Cross-entropy of the target logits against their own argmax, for the samples predicted with
    probability above ``threshold`` (others count 0; the mean is over the whole batch, as in
    TLlib's ``ConfidenceBasedSelfTrainingLoss``), and the fraction of samples kept."""
    with float32(logits):
        confidence, labels = logits.detach().float().softmax(dim=1).max(dim=1)
        mask = (confidence > threshold).float()
        return (F.cross_entropy(logits.float(), labels, reduction="none") * mask).mean(), mask.mean()


class InformationMaximization(Objective):
    """Make target predictions confident and diverse (SHOT's information maximisation), optionally
    adding cross-entropy on confidently pseudo-labelled target samples. Trains through the shared
    bottleneck and head with the source cross-entropy, so no discriminator is needed.

    The pseudo-labels come from the same (single) view of the target that is trained on: with
    cached features there is no second, strongly augmented view, so this is Lee's pseudo-labelling
    with FixMatch's confidence threshold, not FixMatch's weak/strong consistency.

    Args:
        trade_off: weight of ``entropy - diversity_weight * diversity``.
        diversity_weight: weight of the diversity term (SHOT: 1).
        pseudo_label_weight: weight of the pseudo-label cross-entropy (0: none).
        threshold: confidence a target prediction needs to serve as a pseudo-label.
    """

    def __init__(self, trade_off: float = 1.0, diversity_weight: float = 1.0, pseudo_label_weight: float = 0.0,
                 threshold: float = 0.9):
        super().__init__(trade_off)
        self.diversity_weight = diversity_weight
        self.pseudo_label_weight = pseudo_label_weight
        self.threshold = threshold

    def forward(self, batch: DomainBatch) -> ObjectiveOutput:
        ent, div = information_maximization(batch.target_logits)
        loss = self.trade_off * (ent - self.diversity_weight * div)
        logs = {"target_entropy": ent.detach(), "target_diversity": div.detach()}
        if self.pseudo_label_weight:
            pl, kept = pseudo_label_loss(batch.target_logits, self.threshold)
            loss = loss + self.pseudo_label_weight * pl
            logs.update(pseudo_label_loss=pl.detach(), pseudo_label_kept=kept)
        return ObjectiveOutput(loss, logs=logs)
