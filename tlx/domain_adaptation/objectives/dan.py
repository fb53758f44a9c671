"""DAN (Long et al., 2015): multi-kernel maximum mean discrepancy between the domains' features."""

from __future__ import annotations

import torch
from torch import Tensor

from tlx.domain_adaptation.objectives.base import DomainBatch, Objective, ObjectiveOutput, float32


def mk_mmd(source: Tensor, target: Tensor, alphas: list[float]) -> Tensor:
    """Squared MMD (biased estimate) under a sum of Gaussian kernels ``exp(-d^2 / (2 a s^2))``,
    ``s^2`` being the batch's mean squared distance: bandwidths follow the features' scale."""
    with float32(source):
        x = torch.cat([source, target]).float()
        d2 = torch.cdist(x, x).pow(2)
        scale = d2.detach().mean()
        k = sum(torch.exp(-d2 / (2.0 * a * scale + 1e-12)) for a in alphas)
        n = len(source)
        return k[:n, :n].mean() + k[n:, n:].mean() - 2.0 * k[:n, n:].mean()


class DAN(Objective):
    """Match source and target feature distributions by minimising their MK-MMD.

    Args:
        trade_off: weight of the MMD loss.
        alphas: bandwidth multipliers of the Gaussian kernels (default ``2^-3 .. 2^1``).
    """

    def __init__(self, trade_off: float = 1.0, alphas: list[float] = [0.125, 0.25, 0.5, 1.0, 2.0]):  # noqa: B006
        super().__init__(trade_off)
        self.alphas = list(alphas)

    def forward(self, batch: DomainBatch) -> ObjectiveOutput:
        loss = mk_mmd(batch.source_features, batch.target_features, self.alphas)
        return ObjectiveOutput(self.trade_off * loss, logs={"mmd": loss.detach()})
