"""Feature-based: hints (FitNets, Romero et al., 2015): a learned projection of the student's
feature map regresses the teacher's."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from tlx.distillation.base import DistillationLoss, match_spatial


class Hint(DistillationLoss):
    """``MSE(conv1x1-BN(student map), teacher map)``, on the smaller of the two grids.

    The projection (RepDistiller's ``ConvReg``: convolution, BatchNorm) is trained with the
    student and dropped afterwards: the student's checkpoint does not hold it.

    Args:
        weight: multiplies the loss (RepDistiller: 100).
    """

    needs = "feature_map"
    name = "hint"

    def __init__(self, weight: float = 100.0):
        super().__init__(weight)
        self.projection: nn.Module | None = None

    def build(self, student_width: int, teacher_width: int) -> None:
        self.projection = nn.Sequential(nn.Conv2d(student_width, teacher_width, 1, bias=False),
                                        nn.BatchNorm2d(teacher_width))

    def loss(self, student: Tensor, teacher: Tensor) -> Tensor:
        student, teacher = match_spatial(self.projection(student), teacher)
        return F.mse_loss(student, teacher)
