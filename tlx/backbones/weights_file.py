"""Load a local weights file into any architecture, safely (``weights_only``) and with clear errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import Tensor, nn

from tlx.errors import BackboneError

# Containers other tools wrap a state dict in (Lightning checkpoints, timm/DeiT train scripts).
_CONTAINER_KEYS = ("state_dict", "model", "state_dict_ema", "model_state_dict")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from ``.pth``/``.pt``/``.ckpt``/``.bin`` (weights only) or ``.safetensors``."""
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"weights_path {str(path)!r} does not exist or is not a file.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise BackboneError(
            f"Refusing to load {str(path)!r}: it is not a plain weights file (it carries pickled "
            f"Python objects, which could run code). Save it with torch.save(model.state_dict(), ...). "
            f"Details: {str(e).splitlines()[0]}"
        ) from None
    except Exception as e:  # corrupt or foreign file formats
        raise BackboneError(f"Could not read weights file {str(path)!r}: {e}") from None
    if isinstance(obj, dict):
        for key in _CONTAINER_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise BackboneError(f"{str(path)!r} holds no state dict of tensors.")
    return obj


def _best_prefix(file_keys: list[str], model_keys: set[str]) -> str:
    """The key prefix whose removal matches the most model keys ('module.', 'backbone.model.', ...)."""
    candidates = {""}
    for key in file_keys[:50]:
        parts = key.split(".")
        candidates.update(".".join(parts[:i]) + "." for i in range(1, len(parts)))
    return max(candidates, key=lambda p: sum(k[len(p):] in model_keys for k in file_keys if k.startswith(p)))


def load_weights_into(model: nn.Module, state: dict[str, Tensor], source: str, arch: str) -> None:
    """Load ``state`` into ``model``: every model tensor must be present with its shape.

    Extra tensors (an old classifier, say) are ignored; anything missing or mis-shaped means the
    file belongs to another architecture, and the error names examples of both.
    """
    target = model.state_dict()
    prefix = _best_prefix(list(state), set(target))
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    missing = [k for k in target if k not in state]
    mismatched = [k for k in target if k in state and state[k].shape != target[k].shape]
    if missing or mismatched:
        detail = []
        if missing:
            detail.append(f"{len(missing)} tensors missing (e.g. {', '.join(missing[:3])})")
        if mismatched:
            k = mismatched[0]
            detail.append(
                f"{len(mismatched)} of another shape (e.g. {k}: file {tuple(state[k].shape)}, "
                f"model {tuple(target[k].shape)})"
            )
        raise BackboneError(
            f"Weights file {source!r} does not fit backbone {arch!r}: {'; '.join(detail)}. "
            "Check that the file was saved from the same architecture."
        )
    model.load_state_dict({k: state[k] for k in target}, strict=True)
