"""Cut a backbone in two at a named module: a frozen bottom and a top that trains.

A convolutional backbone's forward is, for timm's CNNs (EfficientNet, the packaged Lite models,
ResNet, MobileNet) and torchvision's, a chain of its children, with ``nn.Sequential`` stages
opened one level (``blocks.0`` ... ``blocks.6``, ``layer1.0``, ``features.3``). A cut point is a
module of that chain (or a whole opened stage, such as ``layer2``); the bottom runs the chain up
to and including it. The top is the backbone itself with the bottom's modules swapped for
``nn.Identity`` in shallow copies of their parents, so it shares every parameter and buffer with
the backbone (training the top trains the backbone's own modules; checkpoints hold the whole
model) and keeps whatever functional tail the forward has (pooling, flatten).

:func:`split_backbone` checks on one random image that ``top(bottom(x))`` equals the backbone's
output, so a model whose forward is not such a chain (a ViT's token reshaping, a skip across
stages) is refused with a clear message instead of training on wrong activations.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from tlx.errors import BackboneError, close_names
from tlx.modes import evaluating


def _chain(model: nn.Module) -> tuple[list[tuple[str, nn.Module]], dict[str, str]]:
    """The forward chain ``[(name, module)]`` and the opened stages (``stage name -> its last link``)."""
    links: list[tuple[str, nn.Module]] = []
    stages: dict[str, str] = {}
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential) and len(child):
            inner = [(f"{name}.{n}", m) for n, m in child.named_children()]
            links += inner
            stages[name] = inner[-1][0]
        else:
            links.append((name, child))
    return links, stages


def cut_points(model: nn.Module) -> list[str]:
    """Every name :func:`split_backbone` accepts, in forward order (an opened stage after its
    last block), up to the last one that leaves parameters to train."""
    links, stages = _chain(model)
    last_stage = {link: stage for stage, link in stages.items()}
    trains_after = [any(p.numel() for _, m in links[i + 1:] for p in m.parameters()) for i in range(len(links))]
    names: list[str] = []
    for (name, _), trains in zip(links, trains_after):
        if not trains:
            break
        names.append(name)
        if name in last_stage:
            names.append(last_stage[name])
    return names


def _stage_names(model: nn.Module) -> list[str]:
    """timm's ``feature_info`` stages (where the model has them): named first in error messages."""
    info = getattr(model, "feature_info", None)
    try:
        return [f["module"] for f in info] if info else []
    except (TypeError, KeyError):
        return []


def bottom_names(backbone: nn.Module, cut: str) -> list[str]:
    """The chain's modules (names relative to the backbone's ``model``) up to and including ``cut``:
    the part a cut freezes. A cut that is not a cut point is refused with the valid ones named."""
    model = getattr(backbone, "model", backbone)
    links, stages = _chain(model)
    valid = cut_points(model)
    if cut not in valid:
        stages_hint = [s for s in _stage_names(model) if s in valid]
        hint = f" (timm's stages: {', '.join(stages_hint)})" if stages_hint else ""
        raise BackboneError(
            f"FeatureCache cut {cut!r} is not a cut point of {getattr(backbone, 'name', type(model).__name__)}"
            f"{hint}; valid cut points, in forward order: {', '.join(valid)}.{close_names(cut, valid)}"
        )
    names = [n for n, _ in links]
    return names[: names.index(stages.get(cut, cut)) + 1]


class BackboneBottom(nn.Module):
    """The frozen part: the chain's modules up to the cut, run in order."""

    def __init__(self, links: list[nn.Module]):
        super().__init__()
        self.links = nn.ModuleList(links)

    def forward(self, x: Tensor) -> Tensor:
        for link in self.links:
            x = link(x)
        return x


class BackboneTop(nn.Module):
    """The rest: the backbone with its bottom swapped for identities (parameters shared with it).

    Not meant to be registered in the model (it would list the shared parameters twice): the
    caller holds it. The shallow copies follow their originals' train/eval mode at each call.
    """

    def __init__(self, view: nn.Module, copies: list[tuple[nn.Module, nn.Module, set[str]]]):
        super().__init__()
        self.view = view
        self._copies = copies  # (copy, original, children cut away) triples: plain list, not submodules

    def forward(self, x: Tensor) -> Tensor:
        for clone, original, cut_away in self._copies:
            clone.training = original.training
            # A child swapped in the original after the cut (LoRA wrapping conv_head) is followed.
            clone._modules.update((n, m) for n, m in original._modules.items() if n not in cut_away)
        return self.view(x)


def split_backbone(backbone: nn.Module, cut: str, probe_size: int | None = None) -> tuple[BackboneBottom, BackboneTop]:
    """``(bottom, top)`` of ``backbone`` (a :class:`tlx.backbones.Backbone` or a plain model) at ``cut``.

    ``top(bottom(x)) == backbone(x)``; a cut that is not a module of the chain is refused with the
    valid ones named, and so is a model whose forward is not a chain (checked on one random
    ``probe_size`` image; default: the backbone's preprocessing input size, else 224).
    """
    model = getattr(backbone, "model", backbone)
    links = dict(_chain(model)[0])
    names = bottom_names(backbone, cut)
    bottom = BackboneBottom([links[n] for n in names])
    view = _shallow(model)
    copies = [(view, model, set())]
    for name in names:
        parent, _, child = name.rpartition(".")
        entry = copies[0]
        if parent:  # a block of an opened stage: the stage is copied (once) too
            if view._modules[parent] is model._modules[parent]:
                view._modules[parent] = _shallow(model._modules[parent])
                copies.append((view._modules[parent], model._modules[parent], set()))
                copies[0][2].add(parent)
            entry = next(c for c in copies if c[0] is view._modules[parent])
        entry[0]._modules[child] = nn.Identity()
        entry[2].add(child)
    top = BackboneTop(view, copies)
    prep = getattr(backbone, "preprocessing", None)
    _check_chain(backbone, bottom, top, cut, probe_size or getattr(prep, "input_size", 224))
    return bottom, top


def _shallow(module: nn.Module) -> nn.Module:
    """A copy sharing parameters, buffers and children, with its own table of children."""
    clone = copy.copy(module)
    clone._modules = dict(module._modules)
    return clone


def _check_chain(backbone: nn.Module, bottom: nn.Module, top: nn.Module, cut: str, size: int) -> None:
    with evaluating(backbone):
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        param = next(backbone.parameters(), None)
        if param is not None:
            x = x.to(param.device)
        with torch.no_grad():
            expected = backbone(x)
            try:
                got = top(bottom(x))
            except (RuntimeError, AssertionError, ValueError, TypeError):  # shapes that do not chain
                got = None
    if got is None or expected.shape != got.shape or not torch.allclose(expected, got, rtol=1e-4, atol=1e-5):
        raise BackboneError(
            f"Cannot cut {getattr(backbone, 'name', type(backbone).__name__)} at {cut!r}: its forward is not "
            "a chain of its modules (the two halves do not compute the whole); use FeatureCache without cut."
        )
