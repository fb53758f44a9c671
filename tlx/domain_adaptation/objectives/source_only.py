"""Source-only: the baseline, source cross-entropy and nothing else."""

from __future__ import annotations

import torch

from tlx.domain_adaptation.objectives.base import DomainBatch, Objective, ObjectiveOutput


class SourceOnly(Objective):
    """No transfer loss; the target images pass through the network but teach it nothing.
    (They still reach BatchNorm's running statistics, as in every other method here.)"""

    def __init__(self):
        super().__init__(trade_off=0.0)

    def forward(self, batch: DomainBatch) -> ObjectiveOutput:
        return ObjectiveOutput(batch.source_logits.new_zeros((), dtype=torch.float32))
