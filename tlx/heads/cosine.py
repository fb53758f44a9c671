from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CosineHead(nn.Module):
    """Cosine-similarity classifier: logits = scale * cos(feature, class weight).

    Normalising both sides makes logits depend on direction only, which helps few-shot and
    imbalanced transfer (Chen et al., "A Closer Look at Few-shot Classification", 2019); the
    scale (temperature) is learnt in log space so it stays positive.
    """

    def __init__(self, in_features: int, num_classes: int, scale: float = 10.0, learn_scale: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        log_scale = torch.tensor(math.log(scale))
        self.log_scale = nn.Parameter(log_scale) if learn_scale else nn.Buffer(log_scale)

    @property
    def scale(self) -> Tensor:
        return self.log_scale.exp()

    def forward(self, features: Tensor) -> Tensor:
        return self.scale * F.linear(F.normalize(features, dim=-1), F.normalize(self.weight, dim=-1))
