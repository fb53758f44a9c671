"""Layer groups of a backbone, ordered from the input (index 0) to the top.

Gradual unfreezing and layer-wise learning rates both need the backbone cut into a few ordered
groups. timm models carry their own cut (``group_matcher``: stem, then stages or blocks, then
the final conv); for others (torchvision) the top-level children are used, opening the one
container that holds most of the network (``features`` of MobileNet/VGG) and attaching each
normalisation layer to the layer before it (``conv1`` + ``bn1``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from torch import nn

from tlx.compat import BatchNormBase
from tlx.errors import TLXError
from tlx.finetuning.trainable import in_bottom

_NORM = (BatchNormBase, nn.GroupNorm, nn.LayerNorm)
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


class FinetuningError(TLXError, ValueError):
    """A fine-tuning strategy that does not fit the model or the other callbacks."""


@dataclass
class LayerGroup:
    """Modules that freeze, unfreeze and share a learning rate together."""

    name: str
    modules: list[nn.Module] = field(default_factory=list)
    params: list[nn.Parameter] = field(default_factory=list)

    def parameters(self) -> list[nn.Parameter]:
        return self.params

    def numel(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _common_name(names: list[str]) -> str:
    parts = [n.split(".") for n in names]
    prefix = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        prefix.append(level[0])
    if prefix:
        return ".".join(prefix)
    return "+".join(dict.fromkeys(n.split(".")[0] for n in names))


def _module_params(modules: list[nn.Module]) -> list[nn.Parameter]:
    return list({id(p): p for m in modules for p in m.parameters()}.values())


def _owning_modules(model: nn.Module, params: list[nn.Parameter]) -> list[nn.Module]:
    """The largest modules all of whose parameters are in ``params`` (whole blocks, so that
    parameter-free parts such as DropPath and Dropout follow the group's train/eval mode)."""
    ids = {id(p) for p in params}
    owned = {name for name, m in model.named_modules()
             if (own := [id(p) for p in m.parameters()]) and all(i in ids for i in own)}
    return [m for name, m in model.named_modules() if name in owned and (name.rpartition(".")[0] not in owned or not name)]


def _timm_groups(model: nn.Module, fine: bool) -> list[LayerGroup]:
    # Parameters decide membership (timm's matcher also claims bare tensors such as a ViT's
    # pos_embed); the modules owning them are kept for train/eval mode.
    from timm.models import group_modules, group_parameters

    matcher = model.group_matcher(coarse=not fine)
    by_params = group_parameters(model, matcher)
    by_modules = group_modules(model, matcher)
    params = dict(model.named_parameters())
    groups = []
    for gid, names in sorted(by_params.items()):
        members = [params[n] for n in names]
        label = _common_name(by_modules.get(gid) or [n.rpartition(".")[0] or n for n in names])
        groups.append(LayerGroup(label, _owning_modules(model, members), members))
    return [g for g in groups if g.params]


def _child_groups(model: nn.Module, min_groups: int = 4) -> list[LayerGroup]:
    parts = [(name, child) for name, child in model.named_children() if _has_params(child)]
    # Open the container holding most parameters until there are a few groups to work with.
    while len(parts) < min_groups:
        containers = [(i, p) for i, p in enumerate(parts) if isinstance(p[1], _CONTAINERS) and len(list(p[1].children())) > 1]
        if not containers:
            break
        i, (name, child) = max(containers, key=lambda c: sum(p.numel() for p in c[1][1].parameters()))
        inner = [(f"{name}.{n}", c) for n, c in child.named_children() if _has_params(c)]
        parts[i : i + 1] = inner
    groups: list[LayerGroup] = []
    for name, child in parts:
        if groups and isinstance(child, _NORM):  # a norm layer belongs to the layer it normalises
            groups[-1].name += f"+{name}"
            groups[-1].modules.append(child)
            groups[-1].params.extend(_module_params([child]))
        else:
            groups.append(LayerGroup(name, [child], _module_params([child])))
    return groups


def merge_groups(groups: list[LayerGroup], num_groups: int) -> list[LayerGroup]:
    """Contiguous runs of ``groups`` merged into ``num_groups`` groups of about equal length."""
    if num_groups < 1:
        raise FinetuningError(f"num_groups must be at least 1, got {num_groups}.")
    if num_groups >= len(groups):
        return groups
    merged = []
    for chunk in np.array_split(np.arange(len(groups)), num_groups):
        members = [groups[i] for i in chunk]
        name = members[0].name if len(members) == 1 else f"{members[0].name}..{members[-1].name}"
        merged.append(LayerGroup(name, [m for g in members for m in g.modules], [p for g in members for p in g.params]))
    return merged


def _above(model: nn.Module, groups: list[LayerGroup], frozen: tuple[str, ...] | list[str]) -> list[LayerGroup]:
    """``groups`` less the frozen bottom's parameters; groups left empty are dropped."""
    bottom = {id(p) for n, p in model.named_parameters() if in_bottom(n, frozen)}
    out = []
    for g in groups:
        params = [p for p in g.params if id(p) not in bottom]
        if len(params) == len(g.params):
            out.append(g)
        elif params:  # a group the cut goes through: its modules above the cut, named after them
            modules = _owning_modules(model, params)
            names = {id(m): n for n, m in model.named_modules()}
            out.append(LayerGroup(_common_name([names[id(m)] for m in modules]), modules, params))
    return out


def layer_groups(backbone: nn.Module, num_groups: int | None = None, fine: bool = False,
                 frozen: tuple[str, ...] | list[str] = ()) -> list[LayerGroup]:
    """The backbone's layer groups, bottom (input side) first, named ``backbone.<modules>``.

    Args:
        backbone: a :class:`tlx.backbones.Backbone` (its ``.model`` is grouped) or any module.
        num_groups: merge neighbouring groups down to this many.
        fine: for timm models, one group per block instead of per stage.
        frozen: the bottom frozen for the run (module names relative to ``model``,
            :func:`tlx.finetuning.trainable.frozen_bottom`): the groups are those of the part
            above it, so ``num_groups`` and depths count within the part that trains.
    """
    model = getattr(backbone, "model", backbone)
    if hasattr(model, "group_matcher"):
        groups = _timm_groups(model, fine)
    else:
        groups = _child_groups(model)
    # Parameters no matcher claimed (rare) join the top group, so that none is ever left out.
    claimed = {id(p) for g in groups for p in g.params}
    leftover = [p for p in model.parameters() if id(p) not in claimed]
    if leftover:
        if not groups:
            groups = [LayerGroup("model", [model])]
        groups[-1].params.extend(leftover)
    if frozen:
        groups = _above(model, groups, frozen)
    if num_groups is not None:
        groups = merge_groups(groups, num_groups)
    for g in groups:
        g.name = f"backbone.{g.name}"
    return groups
