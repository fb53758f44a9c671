"""One door in for every backbone: ``create_backbone("source:name", weights=..., weights_path=...)``.

A source (torchvision, timm, packaged weights) registers a factory with
:func:`register_source`; adding a source touches its own file only.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

from tlx.backbones.base import Backbone
from tlx.errors import BackboneError, close_names

SourceFactory = Callable[..., Backbone]
_SOURCES: dict[str, SourceFactory] = {}
_LISTERS: dict[str, Callable[[], list[str]]] = {}
# source -> what loads with no network: [(name, weights, ImageNet top-1 as its source states it, or None)]
OfflineLister = Callable[[], list[tuple[str, str | None, float | None]]]
_OFFLINE: dict[str, OfflineLister] = {}


def register_source(name: str, list_models: Callable[[], list[str]]) -> Callable[[SourceFactory], SourceFactory]:
    """Register ``factory(model_name, weights, weights_path, **kwargs) -> Backbone`` as a source."""

    def decorator(factory: SourceFactory) -> SourceFactory:
        _SOURCES[name] = factory
        _LISTERS[name] = list_models
        return factory

    return decorator


def register_offline(source: str) -> Callable[[OfflineLister], OfflineLister]:
    """Register what ``source`` can load here with no network (packaged files, local caches)."""

    def decorator(lister: OfflineLister) -> OfflineLister:
        _OFFLINE[source] = lister
        return lister

    return decorator


def offline_backbones() -> list[tuple[str, str | None, float | None]]:
    """``(spec, weights, top-1)`` for every backbone whose weights are on this machine."""
    return [(f"{source}:{name}", weights, top1) for source, lister in _OFFLINE.items()
            for name, weights, top1 in lister()]


def split_name(spec: str) -> tuple[str, str]:
    """``"timm:resnet18"`` -> ``("timm", "resnet18")``; a bare name means the packaged source."""
    source, sep, model_name = spec.partition(":")
    if not sep:
        return "tlx", spec
    if source not in _SOURCES:
        raise BackboneError(
            f"Unknown backbone source {source!r} in {spec!r}: use one of "
            f"{', '.join(s + ':NAME' for s in sorted(_SOURCES))}.{close_names(source, _SOURCES)}"
        )
    return source, model_name


def list_backbones(pattern: str = "*") -> list[str]:
    """Every backbone name tlx can build, as ``source:name``, filtered by a glob pattern."""
    names = [f"{s}:{n}" for s, lister in _LISTERS.items() for n in lister()]
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def create_backbone(
    spec: str, weights: str | None = "DEFAULT", weights_path: str | None = None, **kwargs: Any
) -> Backbone:
    """Build a pretrained feature extractor.

    Args:
        spec: ``source:name``, e.g. ``torchvision:mobilenet_v2``, ``timm:resnet18``, or a packaged
            offline backbone such as ``efficientnet_lite0`` (same as ``tlx:efficientnet_lite0``).
        weights: which pretrained weights: ``DEFAULT``, a torchvision enum name
            (``IMAGENET1K_V1``), a timm pretrained tag (``a1_in1k``); ``None`` for random init.
        weights_path: a local weights file that replaces ``weights`` (air-gapped clusters).
        kwargs: passed to the source's model constructor (e.g. timm's ``drop_path_rate``).
    """
    source, model_name = split_name(spec)
    names = _LISTERS[source]()
    if model_name not in names:
        raise BackboneError(
            f"Unknown {source} backbone {model_name!r}.{close_names(model_name, names)} "
            f"`python -m tlx.backbones '{source}:*'` lists them."
        )
    return _SOURCES[source](model_name, weights=weights, weights_path=weights_path, **kwargs)
