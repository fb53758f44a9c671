"""MCC (Jin et al., 2020): minimum class confusion on the target predictions."""

from __future__ import annotations

import torch
from torch import Tensor

from tlx.domain_adaptation.objectives.base import DomainBatch, Objective, ObjectiveOutput, certainty_weights, float32


def class_confusion(logits: Tensor, temperature: float) -> Tensor:
    """Off-diagonal mass of the row-normalised, certainty-weighted class correlation
    ``P^T diag(w) P`` of the temperature-scaled target predictions, per class."""
    with float32(logits):
        p = (logits.float() / temperature).softmax(dim=1)
        w = certainty_weights(p).detach()
        c = (p * w.unsqueeze(1)).T @ p
        c = c / c.sum(dim=1, keepdim=True)
        return (c.sum() - torch.trace(c)) / p.shape[1]


class MCC(Objective):
    """Make target predictions confident and unconfused between classes; needs no discriminator
    and no feature alignment.

    Args:
        trade_off: weight of the class-confusion loss.
        temperature: rescales the target logits before the softmax.
    """

    def __init__(self, trade_off: float = 1.0, temperature: float = 2.5):
        super().__init__(trade_off)
        self.temperature = temperature

    def forward(self, batch: DomainBatch) -> ObjectiveOutput:
        loss = class_confusion(batch.target_logits, self.temperature)
        return ObjectiveOutput(self.trade_off * loss, logs={"class_confusion": loss.detach()})
