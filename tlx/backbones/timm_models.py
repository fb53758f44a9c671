"""timm models by name, through timm's model factory and its pretrained data config."""

from __future__ import annotations

import functools
from typing import Any

import timm
from timm.data import resolve_model_data_config
from timm.models import split_model_name_tag

from tlx.backbones.base import Backbone
from tlx.preprocessing import Preprocessing
from tlx.backbones.registry import register_source
from tlx.backbones.weights_file import load_weights_into, read_state_dict
from tlx.errors import BackboneError, WeightsUnavailableError


@functools.cache
def list_timm_models() -> list[str]:
    """Architectures (``convnext_tiny``) and their pretrained tags (``convnext_tiny.fb_in22k``)."""
    return sorted(set(timm.list_models()) | set(timm.list_pretrained()))


def timm_model_name(name: str, weights: str | None) -> str:
    """The name timm's factory takes: ``arch.tag`` from ``name`` (which may carry the tag, as timm
    writes it) or from ``weights`` (a tag; ``DEFAULT`` and ``None`` leave timm's default)."""
    arch, tag = split_model_name_tag(name)
    if not tag:
        return name if weights in (None, "DEFAULT") else f"{name}.{weights}"
    if weights not in (None, "DEFAULT", tag):
        raise BackboneError(f"Backbone timm:{name} names the pretrained tag {tag!r} but weights is {weights!r}: "
                            f"give the tag once (timm:{arch} with weights: {weights}, or weights: DEFAULT).")
    return name


@register_source("timm", list_timm_models)
def create_timm_backbone(
    name: str, weights: str | None = "DEFAULT", weights_path: str | None = None, **kwargs: Any
) -> Backbone:
    pretrained = weights is not None and not weights_path
    full_name = timm_model_name(name, weights)
    try:
        model = timm.create_model(full_name, pretrained=pretrained, num_classes=0, **kwargs)
    except RuntimeError as e:
        if "Unknown pretrained tag" in str(e) or "Invalid pretrained tag" in str(e):
            raise WeightsUnavailableError(f"timm has no weights {weights!r} for {name!r}: {e}") from None
        raise
    except OSError as e:  # Hugging Face Hub and URL downloads, offline or not found
        raise WeightsUnavailableError(
            f"Could not fetch timm weights for {full_name!r} ({type(e).__name__}). Offline, pass "
            "model.weights_path=/path/to/weights (.pth or .safetensors), or pre-fill the Hugging Face "
            "cache (HF_HOME) on a machine with internet; set HF_HUB_OFFLINE=1 to fail fast."
        ) from None
    if weights_path:
        load_weights_into(model, read_state_dict(weights_path), weights_path, f"timm:{name}")
    preprocessing = Preprocessing.from_timm(resolve_model_data_config(model))
    return Backbone(model, model.num_features, preprocessing, name=f"timm:{full_name}")
