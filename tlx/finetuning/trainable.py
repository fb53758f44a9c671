"""The part of the backbone that trains: all of it, or the top above a bottom frozen for the run.

A callback that keeps the bottom of the backbone frozen and never runs it in training
(:class:`tlx.speed.FeatureCache` with ``cut``: the bottom's activations are cached) names that
bottom through ``frozen_bottom(pl_module)``: module names relative to the backbone's ``model``
(``conv_stem``, ``blocks.0`` ...). :func:`frozen_bottom` asks the trainer's callbacks, whatever
their order, and is the one place a strategy learns it (:class:`~tlx.finetuning.base.FinetuneStrategy`
and :class:`~tlx.finetuning.l2sp.L2SP` in ``setup``); layer groups, LoRA targets, L2-SP anchors
and optimizer groups are then taken from the rest only.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import nn


@runtime_checkable
class FrozenBottomProvider(Protocol):
    """A callback that freezes the backbone's bottom for the whole run (it never trains nor runs)."""

    def frozen_bottom(self, pl_module: Any) -> list[str]: ...


def frozen_bottom(trainer: Any, pl_module: Any) -> tuple[str, ...]:
    """The bottom's module names (relative to ``backbone.model``) that the trainer's callbacks freeze."""
    names: list[str] = []
    for callback in getattr(trainer, "callbacks", []):
        if isinstance(callback, FrozenBottomProvider):
            names += callback.frozen_bottom(pl_module)
    return tuple(dict.fromkeys(names))


def in_bottom(name: str, bottom: tuple[str, ...] | list[str]) -> bool:
    """Whether ``name`` (relative to ``backbone.model``) is one of the bottom's modules or inside one."""
    return any(name == b or name.startswith(f"{b}.") for b in bottom)


def backbone_parameters(backbone: nn.Module, bottom: tuple[str, ...] | list[str], trainable: bool = True) -> list[tuple[str, nn.Parameter]]:
    """``backbone.named_parameters()`` above the bottom (``trainable``), or the bottom's own."""
    model = getattr(backbone, "model", backbone)
    prefix = "model." if model is not backbone else ""
    return [(prefix + n, p) for n, p in model.named_parameters() if in_bottom(n, bottom) != trainable]
