"""Named parameter groups, and the one place their learning-rate scales are applied.

A fine-tuning strategy *provides* named groups (:class:`ParamGroupsProvider`, set on the model by
the strategy); the model turns them into the optimizer's groups (:func:`optimizer_param_groups`,
which also exempts norms, biases and ``no_weight_decay()`` parameters from weight decay, as timm's
``param_groups_weight_decay`` does) and scales every LR once (:func:`scale_learning_rates`: the
group's scale times the model's batch-size factor, before any scheduler reads them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from torch import nn
from torch.optim import Optimizer

# Param-group keys that hold learning rates a schedule starts from (OneCycleLR keeps max/min).
_LR_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")


@dataclass
class ParamGroup:
    """One optimizer parameter group: a name for logs, its parameters, its LR relative to the head's."""

    name: str
    params: list[nn.Parameter]
    lr_scale: float = 1.0


@runtime_checkable
class ParamGroupsProvider(Protocol):
    """What a model asks for its optimizer groups (a fine-tuning strategy implements it)."""

    def param_groups(self, module: nn.Module) -> list[ParamGroup]: ...


def _no_decay_names(module: nn.Module) -> set[str]:
    """Full names of parameters that models declare decay-free (timm's ``no_weight_decay()``:
    a ViT's ``pos_embed``, ``cls_token``), at any depth of ``module``."""
    names: set[str] = set()
    for prefix, sub in module.named_modules():
        declared = getattr(sub, "no_weight_decay", None)
        if callable(declared) and not isinstance(sub, nn.Parameter):
            try:
                names.update(f"{prefix}.{n}" if prefix else n for n in declared())
            except TypeError:
                continue
    return names


def _exempt(name: str, p: nn.Parameter, declared: set[str]) -> bool:
    # timm's rule: 1-D tensors (norm scales and shifts, biases) and declared names.
    return p.ndim <= 1 or name.endswith(".bias") or name in declared


def optimizer_param_groups(module: nn.Module, groups: list[ParamGroup], exempt_from_decay: bool) -> list[dict[str, Any]]:
    """The optimizer's groups for named ``groups``: each as given, or split in two (``name`` and
    ``name.no_decay`` with ``weight_decay`` 0) when ``exempt_from_decay``; empty groups dropped.
    Every dict keeps its ``lr_scale`` and the strategy group's name under ``group``."""
    seen: set[int] = set()
    names = {id(p): n for n, p in module.named_parameters()}
    declared = _no_decay_names(module) if exempt_from_decay else set()
    out = []
    for g in groups:
        params = [p for p in g.params if id(p) not in seen]
        if len(params) != len(g.params):
            raise ValueError(f"a parameter of group {g.name!r} is already in another group.")
        seen.update(id(p) for p in params)
        base = {"group": g.name, "lr_scale": float(g.lr_scale)}
        if not exempt_from_decay:
            parts = [(g.name, params, {})]
        else:
            decay = [p for p in params if not _exempt(names.get(id(p), ""), p, declared)]
            free = [p for p in params if _exempt(names.get(id(p), ""), p, declared)]
            parts = [(g.name, decay, {}), (f"{g.name}.no_decay", free, {"weight_decay": 0.0})]
        out += [{"params": ps, "name": name, **base, **extra} for name, ps, extra in parts if ps]
    return out


def scale_learning_rates(optimizer: Optimizer, scheduler: Any = None, factor: float = 1.0) -> None:
    """Each group's LRs x its ``lr_scale`` x ``factor`` (the batch-size rule): called once, after
    the scheduler is built (schedulers copy ``lr`` into ``initial_lr``/``base_lrs``, which are
    scaled alike; OneCycle's and Cyclic's absolute LRs too)."""
    scales = [g.get("lr_scale", 1.0) * factor for g in optimizer.param_groups]
    if all(s == 1.0 for s in scales):
        return
    for g, s in zip(optimizer.param_groups, scales):
        for key in _LR_KEYS:
            if isinstance(g.get(key), (int, float)):
                g[key] = g[key] * s
    if scheduler is None:
        return
    # What schedulers copied at construction (CyclicLR's bounds); absolute floors such as
    # eta_min or ReduceLROnPlateau's min_lr stay as configured.
    for attr in ("base_lrs", "max_lrs"):
        values = getattr(scheduler, attr, None)
        if isinstance(values, list) and len(values) == len(scales):
            setattr(scheduler, attr, [v * s for v, s in zip(values, scales)])
