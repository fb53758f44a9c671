"""Freezing and unfreezing parts of a model: gradients and train/eval modes, set when they change.

Modes are set at each freeze or unfreeze, not before every batch: Lightning 2.6 restores the
modes it saw before validation and never calls ``.train()`` itself, so they persist. An
unfrozen part gets ``.train()`` on all its modules, so Dropout and DropPath run again, not
only BatchNorm.
"""

from __future__ import annotations

from torch import nn

from tlx.compat import BatchNormBase
from tlx.finetuning.bn_policy import apply_bn_policy
from tlx.finetuning.groups import LayerGroup


def _parts(group: LayerGroup | nn.Module) -> tuple[list[nn.Module], list[nn.Parameter]]:
    if isinstance(group, LayerGroup):
        return group.modules, group.params
    return [group], list(group.parameters())


class Freezer:
    """Frozen modules run in eval mode and get no gradients; BatchNorm follows
    :func:`~tlx.finetuning.bn_policy.apply_bn_policy`.

    Args:
        train_bn: BatchNorm layers inside frozen parts still train (affine parameters and
            running statistics).
        freeze_bn_stats: keep the running statistics of every BatchNorm layer of the backbone fixed.
    """

    def __init__(self, train_bn: bool = False, freeze_bn_stats: bool = False):
        self.train_bn = train_bn
        self.freeze_bn_stats = freeze_bn_stats
        self.frozen: list[nn.Module] = []

    def reset(self) -> None:
        self.frozen = []

    def freeze(self, group: LayerGroup | nn.Module) -> None:
        modules, params = _parts(group)
        for p in params:
            p.requires_grad_(False)
        if self.train_bn:
            for bn in (m for module in modules for m in module.modules() if isinstance(m, BatchNormBase)):
                bn.requires_grad_(True)
        self.frozen.extend(m for m in modules if all(m is not f for f in self.frozen))

    def unfreeze(self, group: LayerGroup | nn.Module) -> bool:
        """Unfreeze ``group``; True if anything changed (then call :meth:`apply_modes`)."""
        modules, params = _parts(group)
        ids = {id(m) for m in modules}
        changed = any(not p.requires_grad for p in params) or any(id(m) in ids for m in self.frozen)
        for p in params:
            p.requires_grad_(True)
        self.frozen = [m for m in self.frozen if id(m) not in ids]
        for m in modules:
            m.train()
        return changed

    def apply_modes(self, root: nn.Module) -> None:
        """Frozen parts in eval mode, then the BatchNorm policy over ``root`` (``freeze_bn_stats``:
        the pretrained statistics, those of its ``backbone``)."""
        for module in self.frozen:
            module.eval()
        apply_bn_policy(root, self.freeze_bn_stats, getattr(root, "backbone", None))
