"""The uniform backbone interface: images in, pooled features out, preprocessing attached."""

from __future__ import annotations

from torch import Tensor, nn

from tlx.preprocessing import Preprocessing


class Backbone(nn.Module):
    """A feature extractor: ``(B, 3, H, W)`` images to ``(B, num_features)`` pooled features.

    ``model`` already ends in global pooling (timm with ``num_classes=0``, torchvision with its
    last ``Linear`` replaced by ``Identity``); ``preprocessing`` is what its weights
    were trained with. ``source_classifier`` is the weights' own classifier (ImageNet's, say)
    on those features, where the weights have one: transferability metrics (LEEP, NCE) read
    its predictions. It stays outside the module tree, so it is never trained, saved in a
    checkpoint or counted in the weights' digest.
    """

    def __init__(self, model: nn.Module, num_features: int, preprocessing: Preprocessing, name: str,
                 source_classifier: nn.Module | None = None):
        super().__init__()
        self.model = model
        self.num_features = int(num_features)
        self.preprocessing = preprocessing
        self.name = name
        self.__dict__["source_classifier"] = source_classifier  # not a submodule (see above)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, num_features={self.num_features}"
