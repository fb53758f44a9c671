"""torchvision classification models, loaded through torchvision's own weights enums.

Weights come through ``torch.hub``'s cache (``$TORCH_HOME/hub/checkpoints``), so a pre-filled
cache works offline, exactly as it does for plain torchvision.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pickle
import socket
import urllib.error
from collections.abc import Iterator
from typing import Any

import torch
import torchvision
from torch import nn

from tlx.backbones.base import Backbone
from tlx.preprocessing import Preprocessing
from tlx.backbones.registry import register_offline, register_source
from tlx.backbones.weights_file import load_weights_into, read_state_dict
from tlx.errors import BackboneError, WeightsUnavailableError, close_names


@functools.cache
def list_torchvision_models() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


def _drop_classifier(model: nn.Module) -> nn.Linear:
    """Replace the last ``Linear`` (the ImageNet classifier) with ``Identity``; return that Linear."""
    last_name, last = None, None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last_name, last = name, module
    if last is None:
        raise BackboneError(f"torchvision model {type(model).__name__} has no Linear classifier to remove.")
    parent_name, _, child = last_name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, nn.Identity())
    return last


def _preprocessing(weights: torchvision.models.WeightsEnum) -> Preprocessing:
    preset = weights.transforms()
    return Preprocessing(
        input_size=int(preset.crop_size[0]),
        resize_size=int(preset.resize_size[0]),
        interpolation=preset.interpolation.value,
        mean=tuple(preset.mean),
        std=tuple(preset.std),
    )


DOWNLOAD_TIMEOUT_S = 20.0  # for connecting and for each read: a stalled download fails, a slow one goes on


@contextlib.contextmanager
def _socket_timeout(seconds: float | None) -> Iterator[None]:
    if seconds is None:
        yield
        return
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _cache_hint(weights: torchvision.models.WeightsEnum) -> str:
    filename = os.path.basename(weights.url)
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


@register_offline("torchvision")
def cached_weights() -> list[tuple[str, str | None, float | None]]:
    """Every weights enum member whose file is already in torch.hub's cache (``$TORCH_HOME``)."""
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    files = set(os.listdir(folder)) if os.path.isdir(folder) else set()
    found = []
    for name in list_torchvision_models() if files else []:
        for w in torchvision.models.get_model_weights(name):
            if os.path.basename(w.url) in files:
                top1 = w.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1")
                found.append((name, w.name, top1))
    return found


@register_source("torchvision", list_torchvision_models)
def create_torchvision_backbone(
    name: str, weights: str | None = "DEFAULT", weights_path: str | None = None, **kwargs: Any
) -> Backbone:
    enum_cls = torchvision.models.get_model_weights(name)
    known = [w.name for w in enum_cls]
    chosen = None
    if weights is not None:
        try:
            chosen = enum_cls[weights]  # 'DEFAULT' is an alias member of every enum
        except KeyError:
            raise BackboneError(
                f"torchvision model {name!r} has no weights {weights!r}; choose one of "
                f"DEFAULT, {', '.join(known)}.{close_names(weights, known)}"
            ) from None
    fetch = None if weights_path else chosen
    cached = _cache_hint(fetch) if fetch is not None else None
    try:
        # torch.hub opens the URL without a timeout: a network that drops packets would hang for minutes.
        with _socket_timeout(DOWNLOAD_TIMEOUT_S if cached and not os.path.exists(cached) else None):
            model = torchvision.models.get_model(name, weights=fetch, **kwargs)
    except (pickle.UnpicklingError, EOFError, RuntimeError) as e:
        if not cached or not os.path.exists(cached):
            raise
        raise WeightsUnavailableError(
            f"The cached torchvision weights {cached} are corrupt or incomplete ({type(e).__name__}): delete the "
            "file and run again (it is downloaded anew), or put a good copy there."
        ) from None
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        raise WeightsUnavailableError(
            f"Could not download torchvision weights {enum_cls.__name__}.{chosen.name} for {name!r} ({e}). "
            f"Offline, put the file at {_cache_hint(chosen)} (set TORCH_HOME to choose the cache) "
            "or pass model.weights_path=/path/to/file.pth."
        ) from None
    classifier = _drop_classifier(model)
    if weights_path:
        load_weights_into(model, read_state_dict(weights_path), weights_path, f"torchvision:{name}")
    # Without weights, the architecture's default recipe still says how its inputs look.
    preprocessing = _preprocessing(chosen or enum_cls.DEFAULT)
    # The classifier is the weights' own only when the enum's weights were loaded.
    source_classifier = classifier if chosen is not None and not weights_path else None
    return Backbone(model, classifier.in_features, preprocessing, name=f"torchvision:{name}",
                    source_classifier=source_classifier)
