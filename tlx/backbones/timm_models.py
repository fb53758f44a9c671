"""timm models by name, through timm's model factory and its pretrained data config."""

from __future__ import annotations

import functools
import pickle
import re
from typing import Any

import timm
from timm.data import resolve_model_data_config
from timm.models import split_model_name_tag

from tlx.backbones.base import Backbone
from tlx.preprocessing import Preprocessing
from tlx.backbones.registry import register_offline, register_source
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


@register_offline("timm")
def hub_cache() -> list[tuple[str, str | None, float | None]]:
    """timm weights already in the Hugging Face cache (``HF_HOME``): repos ``timm/<name>.<tag>``."""
    from huggingface_hub import scan_cache_dir

    try:
        repos = scan_cache_dir().repos
    except Exception:  # no cache folder yet, or one the scanner cannot read
        return []
    found = []
    for repo in repos:
        if repo.repo_type == "model" and repo.repo_id.startswith("timm/"):
            name, _, tag = repo.repo_id.removeprefix("timm/").partition(".")
            found.append((name, tag or "DEFAULT", None))  # timm's configs state no accuracy
    return sorted(found)


@register_source("timm", list_timm_models)
def create_timm_backbone(
    name: str, weights: str | None = "DEFAULT", weights_path: str | None = None, **kwargs: Any
) -> Backbone:
    pretrained = weights is not None and not weights_path
    full_name = timm_model_name(name, weights)
    try:
        # Pretrained: with the weights' own classifier, kept aside below for transferability metrics.
        model = timm.create_model(full_name, pretrained=pretrained, **({} if pretrained else {"num_classes": 0}), **kwargs)
    except (RuntimeError, pickle.UnpicklingError) as e:
        if "Unknown pretrained tag" in str(e) or "Invalid pretrained tag" in str(e):
            raise WeightsUnavailableError(f"timm has no weights {weights!r} for {name!r}: {e}") from None
        if "weights_only" in str(e) or isinstance(e, pickle.UnpicklingError):
            # A weights file (e.g. via backbone_kwargs' pretrained_cfg_overlay) holding pickled objects.
            # torch's hint to retry with weights_only=False is not passed on: that runs them.
            found = re.search(r"Unsupported globals?: (?:GLOBAL )?([\w.]+)", str(e))
            raise BackboneError(
                f"Refusing the weights file for timm:{full_name}: it carries pickled Python objects "
                f"({found.group(1).rstrip('.') if found else 'not tensors'}), which could run code when loaded. Save plain "
                "weights with torch.save(model.state_dict(), path) and give them as model.weights_path."
            ) from None
        raise
    except OSError as e:  # Hugging Face Hub and URL downloads, offline or not found
        raise WeightsUnavailableError(
            f"Could not fetch timm weights for {full_name!r} ({type(e).__name__}). Offline, pass "
            "model.weights_path=/path/to/weights (.pth or .safetensors), or pre-fill the Hugging Face "
            "cache (HF_HOME) on a machine with internet; set HF_HUB_OFFLINE=1 to fail fast."
        ) from None
    source_classifier = None
    if model.num_classes:
        source_classifier = model.get_classifier()
        model.reset_classifier(0)
    if weights_path:
        load_weights_into(model, read_state_dict(weights_path), weights_path, f"timm:{name}")
    preprocessing = Preprocessing.from_timm(resolve_model_data_config(model))
    return Backbone(model, model.num_features, preprocessing, name=f"timm:{full_name}",
                    source_classifier=source_classifier)
