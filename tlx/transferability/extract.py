"""One forward pass per backbone: the features a metric scores, and the source classifier's view.

:class:`ScoringNetwork` turns a backbone into ``images -> [features | source softmax]``: the
features are the pooled output (or, with ``layer``, that module's output, globally
average-pooled), and where the weights carry their own classifier (ImageNet's) its softmax on
the final pooled features follows, for LEEP and NCE. One output tensor per image keeps the
extraction a plain "network over dataset" pass.

:func:`extract_features` is that pass, behind the same signature as the house's feature
extraction (issue 12) so that it can be re-pointed there in one line. Until then it stands on
today's machinery: :mod:`tlx.data.shared_build` (a DDP rank extracts its share) and
:mod:`tlx.speed.feature_cache`'s content keys (weights digest, preprocessing, file list).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from tlx.backbones import Backbone
from tlx.data.shared_build import all_ranks, build_shared, is_writer
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


def cache_file(cache_dir: str | Path | None, cache_key: str | None) -> Path | None:
    return Path(cache_dir) / f"rank-{cache_key}.pt" if cache_dir and cache_key else None


def extract_features(
    network: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    precision: str = "32-true",
    cache_dir: str | Path | None = None,
    cache_key: str | None = None,
) -> tuple[Tensor, Tensor]:
    """``network`` over every ``(image, label)`` of ``dataset`` in eval mode: ``(features, labels)``.

    bf16 autocast when ``precision`` says bf16; float32 results either way. With ``cache_dir``
    and ``cache_key`` the result is kept on disk and read back by later calls with the same key.
    """
    file = cache_file(cache_dir, cache_key)
    if all_ranks(file is not None and file.is_file()):
        blob = torch.load(file, weights_only=True)
        return blob["features"], blob["labels"]
    device = next(network.parameters()).device
    bf16 = "bf16" in str(precision)

    def run(indices: Sequence[int]) -> list[tuple[Tensor, int]]:
        loader = DataLoader(Subset(dataset, list(indices)), batch_size=batch_size, num_workers=num_workers)
        out = []
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            for x, y in loader:
                out.extend(zip(network(x.to(device)).float().cpu(), y.tolist()))
        return out

    was_training = network.training
    network.eval()
    try:
        rows = build_shared(range(len(dataset)), run)  # under DDP each rank extracts a share
    finally:
        network.train(was_training)
    features, labels = torch.stack([f for f, _ in rows]), torch.tensor([y for _, y in rows])
    if file is not None and is_writer():
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(f".{os.getpid()}.tmp")
        torch.save({"features": features, "labels": labels}, tmp)
        os.replace(tmp, file)  # atomic: a killed run leaves no half-written cache
    return features, labels
