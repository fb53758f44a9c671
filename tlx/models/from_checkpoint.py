"""A model rebuilt from a tlx checkpoint: its class and hyperparameters, then its weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule

from tlx.checkpointing import safe_torch_load
from tlx.errors import TLXError
from tlx.plain import import_dotted

# Keys LightningCLI adds to a model's hyperparameters; not constructor arguments.
CLI_KEYS = ("_class_path", "_instantiator")


def model_kwargs(hparams: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments from stored hyperparameters, with no pretrained weights fetched
    (the checkpoint's own weights replace them)."""
    kwargs = {k: v for k, v in hparams.items() if k not in CLI_KEYS}
    for key in ("weights", "weights_path"):
        if key in kwargs:
            kwargs[key] = None
    return kwargs


def model_class(hparams: dict[str, Any]) -> type:
    return import_dotted(hparams.get("_class_path", "tlx.models.ImageClassifier"), "checkpoint's hyperparameters")


def model_from_checkpoint(checkpoint: str | Path | dict[str, Any], load_weights: bool = True) -> LightningModule:
    """The checkpoint's model (``weights_only`` read), with its weights loaded."""
    ckpt = checkpoint if isinstance(checkpoint, dict) else safe_torch_load(checkpoint)
    hparams = ckpt.get("hyper_parameters") or {}
    if "state_dict" not in ckpt or not hparams.get("class_names"):
        raise TLXError(f"{checkpoint if not isinstance(checkpoint, dict) else 'The checkpoint'} is not a trained tlx "
                       "checkpoint (no weights or no class names).")
    model = model_class(hparams)(**model_kwargs(hparams))
    if load_weights:
        model.load_state_dict(ckpt["state_dict"])
    return model
