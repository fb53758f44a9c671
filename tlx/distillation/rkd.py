"""Relation-based: relational knowledge distillation (Park, Kim, Lu and Cho, CVPR 2019).

The student matches the teacher's *structure* of the batch: pairwise distances (normalised by
their mean, so the two embedding spaces may differ in scale and width) and the angles formed by
triplets. As in the authors' code (github.com/lenscloth/RKD), both terms use the smooth-L1
(Huber) loss; the teacher's side carries no gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tlx.distillation.base import DistillationLoss


def pairwise_distances(e: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distances between rows, zero on the diagonal (the authors' ``pdist``)."""
    sq = e.pow(2).sum(dim=1)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.t()).clamp(min=eps).sqrt()
    return d * (1 - torch.eye(len(e), device=e.device, dtype=e.dtype))


def normalised_distances(e: Tensor) -> Tensor:
    """Distances divided by their mean over distinct pairs."""
    d = pairwise_distances(e)
    return d / d[d > 0].mean()


def triplet_angles(e: Tensor) -> Tensor:
    """``cos`` of the angle at every j between i and k, flattened: ``<e_i - e_j, e_k - e_j>`` of unit vectors."""
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()


class RKD(DistillationLoss):
    """``distance_weight * huber(psi_D(s), psi_D(t)) + angle_weight * huber(psi_A(s), psi_A(t))``
    on the pooled features (embeddings).

    Args:
        distance_weight: weight of the distance term (paper: 25).
        angle_weight: weight of the angle term (paper: 50).
        weight: multiplies the sum.
    """

    needs = "embedding"
    name = "rkd"

    def __init__(self, distance_weight: float = 25.0, angle_weight: float = 50.0, weight: float = 1.0):
        super().__init__(weight, distance_weight=distance_weight, angle_weight=angle_weight)
        self.distance_weight, self.angle_weight = float(distance_weight), float(angle_weight)

    def loss(self, student: Tensor, teacher: Tensor) -> Tensor:
        student, teacher = student.flatten(1).float(), teacher.flatten(1).float().detach()
        total = student.new_zeros(())
        if self.distance_weight:
            total = total + self.distance_weight * F.smooth_l1_loss(normalised_distances(student),
                                                                    normalised_distances(teacher))
        if self.angle_weight:
            total = total + self.angle_weight * F.smooth_l1_loss(triplet_angles(student), triplet_angles(teacher))
        return total
