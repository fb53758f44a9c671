"""Checkpoints to fuse: loaded safely, checked to be one architecture with one class list."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from tlx.checkpointing import safe_torch_load
from tlx.errors import TLXError
from tlx.models.from_checkpoint import model_kwargs


class FusionError(TLXError, ValueError):
    """Checkpoints that cannot be fused, or fusion options out of range."""


@dataclass
class Ingredient:
    """One checkpoint: its path, the whole checkpoint dict, and the model's weights."""

    path: str
    checkpoint: dict[str, Any]

    @property
    def state_dict(self) -> dict[str, Tensor]:
        # Without the temperature (tlx.calibration): a fused model is a new model, T = 1 until it is
        # calibrated itself, and checkpoints from before calibration existed fuse with newer ones.
        return {k: v for k, v in self.checkpoint["state_dict"].items() if k != "temperature"}

    @property
    def hparams(self) -> dict[str, Any]:
        return self.checkpoint.get("hyper_parameters") or {}

    @property
    def class_names(self) -> list[str] | None:
        return self.hparams.get("class_names")

    @property
    def architecture(self) -> str:
        return f"{self.hparams.get('_class_path', 'tlx.models.ImageClassifier')}({self.hparams.get('backbone')})"

    def model_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of the model (no pretrained weights fetched)."""
        return model_kwargs(self.hparams)


def load_ingredients(paths: list[str], minimum: int = 1, method: str = "fuse") -> list[Ingredient]:
    """Read ``paths`` (``weights_only``) and check that their weights can be averaged: the same
    model class and backbone, the same tensor names and shapes, the same class names in order."""
    if len(paths) < minimum:
        raise FusionError(f"--method {method} needs at least {minimum} checkpoints in --ckpt_paths, got {len(paths)}.")
    ingredients = [Ingredient(str(p), safe_torch_load(p)) for p in paths]
    first = ingredients[0]
    for ing in ingredients:
        if "state_dict" not in ing.checkpoint or not ing.class_names:
            raise FusionError(f"{ing.path} is not a tlx checkpoint with class names (no state_dict or class_names).")
    for ing in ingredients[1:]:
        if ing.architecture != first.architecture:
            raise FusionError(f"{ing.path} is a {ing.architecture}, {first.path} a {first.architecture}: "
                              "only checkpoints of one architecture can be fused.")
        if list(ing.class_names) != list(first.class_names):
            raise FusionError(f"{ing.path} has classes {ing.class_names}, {first.path} {first.class_names}: "
                              "fuse checkpoints trained on the same class folders.")
        shapes = {k: tuple(v.shape) for k, v in ing.state_dict.items()}
        first_shapes = {k: tuple(v.shape) for k, v in first.state_dict.items()}
        if shapes != first_shapes:
            differing = sorted(set(shapes.items()) ^ set(first_shapes.items()))[:3]
            raise FusionError(f"{ing.path} and {first.path} hold different tensors (e.g. {differing}): "
                              "only checkpoints of one architecture (same head, same options) can be fused.")
    return ingredients


def checkpoint_like(template: dict[str, Any], state_dict: dict[str, Tensor],
                    hyper_parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    """A checkpoint holding ``state_dict`` that ``test``/``predict``/``export`` read like any other.
    Training state (optimizer, schedulers, loops, callbacks) is dropped: a fused model is not the
    continuation of any one run, so resuming from it is not offered."""
    keep = ("epoch", "global_step", "pytorch-lightning_version", "hparams_name")
    ckpt = {k: template[k] for k in keep if k in template}
    ckpt["state_dict"] = {k: v.clone() for k, v in state_dict.items()}
    ckpt["hyper_parameters"] = dict(template.get("hyper_parameters") or {}) if hyper_parameters is None else hyper_parameters
    return ckpt
