"""Feature-based: attention transfer (Zagoruyko and Komodakis, 2017)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from tlx.distillation.base import DistillationLoss, match_spatial


def attention_map(feature_map: Tensor, p: float = 2.0) -> Tensor:
    """``normalize(mean_c |A_c|^p)`` flattened per sample: where the network looks, unit L2 norm
    (the reference code's ``at(x) = F.normalize(x.pow(2).mean(1).view(x.size(0), -1))``)."""
    return F.normalize(feature_map.abs().pow(p).mean(dim=1).flatten(1), dim=1)


class Attention(DistillationLoss):
    """``mean((at(student) - at(teacher))^2)`` of the normalised spatial attention maps; channel
    counts may differ (the maps are averaged over channels), grids are matched by pooling.

    Args:
        p: the power in the attention map (2 in the paper).
        weight: multiplies the loss (the paper's beta = 1000).
    """

    needs = "feature_map"
    name = "attention"

    def __init__(self, p: float = 2.0, weight: float = 1000.0):
        super().__init__(weight, p=p)
        self.p = float(p)

    def loss(self, student: Tensor, teacher: Tensor) -> Tensor:
        student, teacher = match_spatial(student, teacher)
        return (attention_map(student, self.p) - attention_map(teacher, self.p)).pow(2).mean()
