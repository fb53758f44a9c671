from __future__ import annotations

from torch import Tensor, nn


class LinearHead(nn.Module):
    """Dropout then one linear layer: the classic transfer-learning classifier."""

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(self.dropout(features))
