"""DANN (Ganin et al., 2016): a domain discriminator behind a gradient-reversal layer."""

from __future__ import annotations

import torch

from tlx.domain_adaptation.objectives.base import DomainBatch, Objective, ObjectiveOutput, discriminator, domain_loss
from tlx.domain_adaptation.objectives.grl import reverse_gradient, warm_start


class DANN(Objective):
    """The discriminator learns to tell source features from target ones; the reversed gradient
    teaches the feature extractor to make them indistinguishable.

    Args:
        trade_off: weight of the domain loss.
        gamma: steepness of the warm-start schedule ``2 / (1 + exp(-gamma p)) - 1`` of the
            reversal coefficient (``p``: fraction of training done).
        hidden: width of the discriminator's two hidden layers.
    """

    def __init__(self, trade_off: float = 1.0, gamma: float = 10.0, hidden: int = 1024):
        super().__init__(trade_off)
        self.gamma = gamma
        self.hidden = hidden
        self.discriminator: torch.nn.Module | None = None

    def build(self, num_features: int, num_classes: int) -> None:
        self.discriminator = discriminator(num_features, self.hidden)

    def forward(self, batch: DomainBatch) -> ObjectiveOutput:
        coeff = warm_start(batch.progress, self.gamma)
        f = torch.cat([batch.source_features, batch.target_features])
        loss, acc, _ = domain_loss(self.discriminator, reverse_gradient(f, coeff), len(batch.source_features))
        logs = {"domain_loss": loss.detach(), "domain_acc": acc, "grl_coeff": coeff}
        return ObjectiveOutput(self.trade_off * loss, logs=logs)
