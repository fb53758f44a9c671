"""Relation-based: similarity-preserving distillation (Tung and Mori, ICCV 2019)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from tlx.distillation.base import DistillationLoss


def similarity_matrix(feature_map: Tensor) -> Tensor:
    """The batch's Gram matrix of flattened activations, each row L2-normalised."""
    f = feature_map.flatten(1)
    return F.normalize(f @ f.t(), p=2, dim=1)


class SP(DistillationLoss):
    """``||G_s - G_t||_F^2 / b^2`` of the row-normalised ``b x b`` similarity matrices (the paper's
    eq. 4; RepDistiller's ``Similarity``). Widths and grids may differ: only the b x b relations
    are compared.

    Args:
        weight: multiplies the loss (the paper's gamma = 3000).
    """

    needs = "feature_map"
    name = "sp"

    def __init__(self, weight: float = 3000.0):
        super().__init__(weight)

    def loss(self, student: Tensor, teacher: Tensor) -> Tensor:
        b = student.shape[0]
        return (similarity_matrix(student.float()) - similarity_matrix(teacher.float())).pow(2).sum() / (b * b)
