"""The uniform backbone interface: images in, pooled features out, preprocessing attached."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from torch import Tensor, nn


@dataclass(frozen=True)
class DataConfig:
    """Preprocessing that belongs to a set of weights (never hard-coded at the call site).

    Evaluation resizes the short side to ``resize_size`` and centre-crops ``input_size``;
    training takes a random-resized crop of ``input_size``.
    """

    input_size: int
    resize_size: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_timm(cls, cfg: dict[str, Any]) -> DataConfig:
        """From timm's ``resolve_model_data_config`` (crop_pct as timm's own transforms use it)."""
        size = int(cfg["input_size"][-1])
        crop_pct = float(cfg.get("crop_pct") or 0.875)
        return cls(
            input_size=size,
            resize_size=math.floor(size / crop_pct),
            interpolation=str(cfg.get("interpolation") or "bilinear"),
            mean=tuple(float(v) for v in cfg["mean"]),
            std=tuple(float(v) for v in cfg["std"]),
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataConfig:
        return cls(
            input_size=int(d["input_size"]),
            resize_size=int(d["resize_size"]),
            interpolation=str(d["interpolation"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


class Backbone(nn.Module):
    """A feature extractor: ``(B, 3, H, W)`` images to ``(B, num_features)`` pooled features.

    ``model`` already ends in global pooling (timm with ``num_classes=0``, torchvision with its
    last ``Linear`` replaced by ``Identity``); ``data_config`` is the preprocessing its weights
    were trained with. ``source_classifier`` is the weights' own classifier (ImageNet's, say)
    on those features, where the weights have one: transferability metrics (LEEP, NCE) read
    its predictions. It stays outside the module tree, so it is never trained, saved in a
    checkpoint or counted in the weights' digest.
    """

    def __init__(self, model: nn.Module, num_features: int, data_config: DataConfig, name: str,
                 source_classifier: nn.Module | None = None):
        super().__init__()
        self.model = model
        self.num_features = int(num_features)
        self.data_config = data_config
        self.name = name
        self.__dict__["source_classifier"] = source_classifier  # not a submodule (see above)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, num_features={self.num_features}"
