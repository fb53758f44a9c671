"""Deep CORAL (Sun & Saenko, 2016): align the second-order statistics of the two domains."""

from __future__ import annotations

from torch import Tensor

from tlx.domain_adaptation.objectives.base import DomainBatch, Objective, ObjectiveOutput, float32


def coral(source: Tensor, target: Tensor) -> Tensor:
    """``||C_s - C_t||_F^2 / (4 d^2)`` with unbiased feature covariances ``C``."""
    with float32(source):
        s, t = source.float(), target.float()
        d = s.shape[1]
        cs = (s - s.mean(0)).T @ (s - s.mean(0)) / (len(s) - 1)
        ct = (t - t.mean(0)).T @ (t - t.mean(0)) / (len(t) - 1)
        return (cs - ct).pow(2).sum() / (4.0 * d * d)


class CORAL(Objective):
    """Penalise the distance between source and target feature covariances.

    Args:
        trade_off: weight of the CORAL loss.
    """

    def forward(self, batch: DomainBatch) -> ObjectiveOutput:
        loss = coral(batch.source_features, batch.target_features)
        return ObjectiveOutput(self.trade_off * loss, logs={"coral": loss.detach()})
