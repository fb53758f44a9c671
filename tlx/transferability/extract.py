"""One forward pass per backbone: the features a metric scores, and the source classifier's view.

:class:`ScoringNetwork` turns a backbone into ``images -> [features | source softmax]``: the
features are the pooled output (or, with ``layer``, that module's output, globally
average-pooled), and where the weights carry their own classifier (ImageNet's) its softmax on
the final pooled features follows, for LEEP and NCE. One output tensor per image keeps the
extraction a plain "network over dataset" pass.

The pass itself is the house's :func:`tlx.features.extract_features` (bf16 where native,
sharded under DDP, cached on disk by content).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tlx.backbones import Backbone
from tlx.errors import TLXError, close_names


class ScoringNetwork(nn.Module):
    def __init__(self, backbone: Backbone, layer: str | None = None):
        super().__init__()
        self.backbone = backbone
        self.source_classifier = backbone.source_classifier  # a submodule here: moves with .to()
        self.layer = layer
        self._captured: Tensor | None = None
        if layer:
            names = [n for n, _ in backbone.model.named_modules() if n]
            if layer not in names:
                raise TLXError(f"--layer {layer!r} is not a module of {backbone.name}.{close_names(layer, names)} "
                               f"Its top-level modules: {', '.join(n for n in names if '.' not in n)}.")
            backbone.model.get_submodule(layer).register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, inputs, output) -> None:
        self._captured = output[0] if isinstance(output, (tuple, list)) else output

    @property
    def source_classes(self) -> int:
        return self.source_classifier.out_features if self.source_classifier is not None else 0

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.backbone(x)
        features = pooled
        if self.layer:
            features = self._captured
            if features.ndim == 4:  # (B, C, H, W) -> (B, C); transformer tokens (B, T, C) -> mean token
                features = features.mean(dim=(2, 3))
            elif features.ndim == 3:
                features = features.mean(dim=1)
        parts = [features.float()]
        if self.source_classifier is not None:
            parts.append(F.softmax(self.source_classifier(pooled).float(), dim=1))
        return torch.cat(parts, dim=1)

    def split(self, output: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(features, source_probs)`` of :meth:`forward`'s output (``None`` without a classifier)."""
        if not self.source_classes:
            return output, None
        return output[:, : -self.source_classes], output[:, -self.source_classes:]
