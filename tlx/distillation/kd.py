"""Response-based: soft targets with a temperature (Hinton, Vinyals and Dean, 2015)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from tlx.distillation.base import DistillationLoss


class KD(DistillationLoss):
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, batch mean. The ``T^2`` keeps the
    gradients' scale independent of ``T`` (Hinton et al., section 2).

    Args:
        temperature: softening temperature ``T`` (4 in RepDistiller's benchmarks).
        weight: multiplies the loss (RepDistiller: 0.9 with a cross-entropy weight of 0.1).
    """

    needs = "logits"
    name = "kd"

    def __init__(self, temperature: float = 4.0, weight: float = 0.9):
        super().__init__(weight, temperature=temperature)
        self.temperature = float(temperature)

    def loss(self, student: Tensor, teacher: Tensor) -> Tensor:
        t = self.temperature
        return F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1),
                        reduction="batchmean", log_target=True) * t * t
