"""Content keys of feature caches: the same weights, data and views give the same key, anything else another."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

CACHE_VERSION = 1  # bump when the stored layout or the extraction changes meaning


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer (names, shapes, dtypes, bytes; not their memory layout)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def content_key(**parts: Any) -> str:
    """A short hex key of JSON-able ``parts`` (weights digest, preprocessing, file list, views, ...)."""
    blob = json.dumps({"v": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]
