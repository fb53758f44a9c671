"""Instance weighting: source samples re-weighted by ``p(target|x) / p(source|x)``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tlx.domain_adaptation.objectives.base import DomainBatch, Objective, ObjectiveOutput, domain_loss


def importance_weights(source_logits: Tensor, max_weight: float) -> Tensor:
    """``p(target|x) / p(source|x) = exp(-z)`` for a domain classifier's source logit ``z``,
    clipped to ``max_weight`` and normalised to mean 1 over the batch."""
    w = torch.exp(-source_logits.float()).clamp(max=max_weight)
    return w * len(w) / w.sum()


class InstanceWeighting(Objective):
    """Covariate-shift correction: a domain classifier, trained on detached features (it does
    not change them), estimates how target-like each source sample is; the source cross-entropy
    is weighted accordingly. Equal source and target batch sizes make the domain prior ratio 1.

    Args:
        trade_off: weight of the domain classifier's own loss (it only trains that classifier).
        max_weight: upper clip of the raw weights, against a few samples dominating a batch.
        hidden: width of the domain classifier's hidden layer.
    """

    def __init__(self, trade_off: float = 1.0, max_weight: float = 10.0, hidden: int = 256):
        super().__init__(trade_off)
        self.max_weight = max_weight
        self.hidden = hidden
        self.domain_classifier: nn.Module | None = None

    def build(self, num_features: int, num_classes: int) -> None:
        self.domain_classifier = nn.Sequential(
            nn.Linear(num_features, self.hidden), nn.ReLU(), nn.Linear(self.hidden, 1)
        )

    def forward(self, batch: DomainBatch) -> ObjectiveOutput:
        f = torch.cat([batch.source_features, batch.target_features]).detach()
        ns = len(batch.source_features)
        loss, acc, logits = domain_loss(self.domain_classifier, f, ns)
        weights = importance_weights(logits[:ns].detach(), self.max_weight)
        logs = {"domain_loss": loss.detach(), "domain_acc": acc, "weight_max": weights.max()}
        return ObjectiveOutput(self.trade_off * loss, source_weights=weights, logs=logs)
