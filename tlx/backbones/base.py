"""The uniform backbone interface: images in, pooled features out, preprocessing attached."""

from __future__ import annotations

from torch import Tensor, nn

from tlx.preprocessing import Preprocessing


class Backbone(nn.Module):
    """A feature extractor: ``(B, 3, H, W)`` images to ``(B, num_features)`` pooled features.

    ``model`` already ends in global pooling (timm with ``num_classes=0``, torchvision with its
    last ``Linear`` replaced by ``Identity``); ``preprocessing`` is what its weights
    were trained with.
    """

    def __init__(self, model: nn.Module, num_features: int, preprocessing: Preprocessing, name: str):
        super().__init__()
        self.model = model
        self.num_features = int(num_features)
        self.preprocessing = preprocessing
        self.name = name

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, num_features={self.num_features}"
