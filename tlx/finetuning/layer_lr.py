"""Layer-wise learning rates: every weight trains, lower layers more slowly.

Two parametrisations of the same idea: timm's ``--layer-decay`` (each group down the network
gets ``decay`` times the LR of the one above) and fastai's discriminative rates (LRs spread
geometrically from ``lo`` x the head's LR at the bottom group to the head's LR).
"""

from __future__ import annotations

from lightning.pytorch import LightningModule

from tlx.finetuning.base import FinetuneStrategy, head_params
from tlx.finetuning.groups import FinetuningError, LayerGroup, layer_groups
from tlx.optim import ParamGroup


class LayerwiseStrategy(FinetuneStrategy):
    """One optimizer group per backbone layer group (:func:`~tlx.finetuning.groups.layer_groups`),
    top group first, each with the LR scale :meth:`scale` gives its depth below the head."""

    def __init__(self, num_groups: int | None, fine: bool, **strategy_kwargs):
        super().__init__(**strategy_kwargs)
        self.num_groups = num_groups
        self.fine = fine
        self._layer_groups: list[LayerGroup] = []

    def freeze_before_training(self, pl_module: LightningModule) -> None:
        self._layer_groups = layer_groups(pl_module.backbone, self.num_groups, self.fine, frozen=self.bottom)

    def scale(self, depth: int, n: int) -> float:
        """LR scale of the group ``depth`` steps below the head (head: depth 0), of ``n`` groups."""
        raise NotImplementedError

    def groups(self, pl_module: LightningModule) -> list[ParamGroup]:
        n = len(self._layer_groups)
        out = [ParamGroup("head", head_params(pl_module))]
        for depth, group in enumerate(reversed(self._layer_groups), start=1):
            out.append(ParamGroup(group.name, group.params, self.scale(depth, n)))
        return out


class LayerDecay(LayerwiseStrategy):
    """timm's layer-wise LR decay: the group ``d`` steps below the head gets ``decay ** d``.

    Args:
        decay: per-group factor, e.g. 0.75 (timm's ``--layer-decay``).
        num_groups: merge the backbone's layer groups into this many.
        fine: timm models: one group per block (as timm's layer decay does) instead of per stage.
        freeze_bn_stats: keep every BatchNorm's running statistics.
    """

    def __init__(self, decay: float = 0.75, num_groups: int | None = None, fine: bool = True, freeze_bn_stats: bool = False):
        super().__init__(num_groups, fine, freeze_bn_stats=freeze_bn_stats)
        if not 0.0 < decay <= 1.0:
            raise FinetuningError(f"LayerDecay: decay must be in (0, 1], got {decay}.")
        self.decay = decay

    def scale(self, depth: int, n: int) -> float:
        return self.decay**depth


class DiscriminativeLR(LayerwiseStrategy):
    """fastai's discriminative LRs (``slice(lo, hi)``): geometric from ``lo`` x the head's LR at
    the bottom backbone group up to the head's LR.

    Args:
        lo: the bottom group's LR as a fraction of the head's (fastai's default spread is 1/100).
        num_groups: merge the backbone's layer groups into this many (fastai uses 2 or 3).
        fine: timm models: one group per block instead of per stage.
        freeze_bn_stats: keep every BatchNorm's running statistics.
    """

    def __init__(self, lo: float = 0.01, num_groups: int | None = None, fine: bool = False, freeze_bn_stats: bool = False):
        super().__init__(num_groups, fine, freeze_bn_stats=freeze_bn_stats)
        if not 0.0 < lo <= 1.0:
            raise FinetuningError(f"DiscriminativeLR: lo must be in (0, 1], got {lo}.")
        self.lo = lo

    def scale(self, depth: int, n: int) -> float:
        return self.lo ** (depth / n)
