"""FinetuneStrategy: the Lightning callback every strategy builds on, composed of small parts.

Built on Lightning's ``BaseFinetuning`` (its hooks: freeze in ``setup``, unfreeze at epoch
start), with its known traps fixed rather than inherited:

* Every parameter group that will ever train is in the optimizer from the start, named, with
  its learning-rate scale; a frozen group is inert (no gradient: no step, no weight decay) until
  it is unfrozen. So the LR scheduler drives it from the first epoch on (Lightning 12141, 8720;
  Flash 1321), ``LearningRateMonitor`` shows it by name, and a checkpoint from before or after
  an unfreeze restores the same groups and optimizer state (Lightning 6891). ``BaseFinetuning``
  instead adds groups at unfreeze time and re-imposes stale group settings on resume.
* The strategy hands its groups to the model (``model.param_groups_provider``, set in
  ``setup``); the model builds the optimizer and applies the LR scales once (:mod:`tlx.optim`).
* The state of an epoch (which groups are unfrozen) is a function of the epoch alone, applied
  again when a run resumes, even mid-epoch.
* With a bottom frozen for the run (:mod:`~tlx.finetuning.trainable`: a cut backbone's cached
  bottom), every strategy works on the part above it (``self.bottom``, resolved in ``setup``):
  its layer groups, its parameters; a bottom parameter in an optimizer group is refused.

The parts, each readable alone: :mod:`~tlx.finetuning.freezing` (gradients and modes),
:mod:`~tlx.finetuning.bn_policy`, :mod:`~tlx.finetuning.warmup` (LR ramp after an unfreeze),
:mod:`~tlx.finetuning.ddp_grads` (averaging gradients DDP does not see),
:mod:`~tlx.finetuning.report` (counts per group).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn
from torch.optim import Optimizer

from tlx.finetuning.ddp_grads import LateGradientAverager
from tlx.finetuning.freezing import Freezer
from tlx.finetuning.groups import FinetuningError, LayerGroup, layer_groups
from tlx.finetuning.report import CountReport
from tlx.finetuning.trainable import backbone_parameters, frozen_bottom
from tlx.finetuning.warmup import UnfreezeWarmup
from tlx.optim import ParamGroup


def head_params(pl_module: LightningModule) -> list[nn.Parameter]:
    """Everything outside the backbone (the head, and whatever else the module owns)."""
    return [p for n, p in pl_module.named_parameters() if not n.startswith("backbone.")]


class FinetuneStrategy(BaseFinetuning):
    """Base class of tlx's strategies (see the module docstring for what it fixes).

    A subclass says what is frozen at the start (:meth:`freeze_before_training`), which named
    groups the optimizer gets (:meth:`groups`) and, optionally, what to unfreeze at an epoch
    (:meth:`finetune_function`, which must give the state *as of* that epoch so resuming works).

    Args:
        train_bn: BatchNorm layers inside frozen parts still train (affine parameters and running
            statistics). Off by default: a frozen part computes exactly what it was pretrained to.
        freeze_bn_stats: keep the running statistics of every BatchNorm layer fixed, frozen or not
            (small batches give noisy statistics); their affine parameters still train.
        warmup_steps: after an unfreeze, the unfrozen groups' learning rate ramps linearly from
            0 to its scheduled value over this many optimizer steps.
    """

    backbone_lr_scale: float = 1.0  # the backbone group's LR / the head's (subclasses take it as an argument)

    def __init__(self, train_bn: bool = False, freeze_bn_stats: bool = False, warmup_steps: int = 0):
        super().__init__()
        self.freezer = Freezer(train_bn, freeze_bn_stats)
        self.warmup = UnfreezeWarmup(warmup_steps)
        self.ddp = LateGradientAverager()
        self.report = CountReport(type(self).__name__)
        self._groups: list[ParamGroup] = []
        self.bottom: tuple[str, ...] = ()  # the backbone's modules frozen for the run (set in setup)
        self._applied_epoch: int | None = None
        self._modes_stale = False

    @property
    def train_bn(self) -> bool:
        return self.freezer.train_bn

    @property
    def freeze_bn_stats(self) -> bool:
        return self.freezer.freeze_bn_stats

    @property
    def warmup_steps(self) -> int:
        return self.warmup.steps

    # ---- for subclasses ----------------------------------------------------------------------
    def freeze_before_training(self, pl_module: LightningModule) -> None:
        pass

    def groups(self, pl_module: LightningModule) -> list[ParamGroup]:
        """Named optimizer groups, including frozen parameters that will be unfrozen later."""
        return [
            ParamGroup("head", head_params(pl_module)),
            ParamGroup("backbone", self.backbone_params(pl_module), self.backbone_lr_scale),
        ]

    def backbone_params(self, pl_module: LightningModule) -> list[nn.Parameter]:
        """The backbone's parameters above the bottom frozen for the run (all of them without one)."""
        return [p for _, p in backbone_parameters(pl_module.backbone, self.bottom)]

    def backbone_group(self, pl_module: LightningModule) -> LayerGroup:
        """The part of the backbone that can train, as one group (its largest whole modules)."""
        if not self.bottom:
            return LayerGroup("backbone", [pl_module.backbone], list(pl_module.backbone.parameters()))
        (top,) = layer_groups(pl_module.backbone, num_groups=1, frozen=self.bottom)
        return LayerGroup("backbone", top.modules, top.params)  # the optimizer group's name (warm-up keys on it)

    def finetune_function(self, pl_module: LightningModule, epoch: int, optimizer: Optimizer) -> None:
        pass

    def freeze_group(self, group: LayerGroup | nn.Module) -> None:
        """Freeze a group (or module): no gradients, eval mode; BN layers train if ``train_bn``."""
        self.freezer.freeze(group)

    def unfreeze_group(self, group: LayerGroup, pl_module: LightningModule) -> None:
        """Unfreeze a group (idempotent): gradients on, its modules (Dropout, DropPath included)
        back in train mode; its warm-up starts from the first unfreeze."""
        if self.freezer.unfreeze(group):
            self._modes_stale = True
        self.warmup.started(group.name, pl_module.trainer.global_step)

    # ---- what the model asks for (tlx.optim.ParamGroupsProvider) ------------------------------
    def param_groups(self, pl_module: nn.Module) -> list[ParamGroup]:
        seen: set[int] = set()
        bottom = {id(p) for _, p in backbone_parameters(pl_module.backbone, self.bottom, trainable=False)}
        groups = []
        for g in self.groups(pl_module):
            if any(id(p) in bottom for p in g.params):
                raise FinetuningError(f"{type(self).__name__}: group {g.name!r} holds parameters of the backbone's "
                                      f"frozen bottom ({', '.join(self.bottom)}), which never trains.")
            if any(id(p) in seen for p in g.params):
                raise FinetuningError(f"{type(self).__name__}: a parameter of group {g.name!r} is already in another group.")
            seen.update(id(p) for p in g.params)
            if g.params:
                groups.append(ParamGroup(g.name, list(g.params), float(g.lr_scale)))
        self._groups = groups
        return groups

    # ---- Lightning hooks ---------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not isinstance(getattr(pl_module, "backbone", None), nn.Module):
            raise FinetuningError(f"{type(self).__name__} needs a model with a `backbone` module (tlx.models.ImageClassifier).")
        provider = getattr(pl_module, "param_groups_provider", None)
        if provider is not None and provider is not self:
            raise FinetuningError(f"Several fine-tuning strategies in trainer.callbacks ({type(provider).__name__}, "
                                  f"{type(self).__name__}): keep one.")
        pl_module.param_groups_provider = self
        self.bottom = frozen_bottom(trainer, pl_module)
        self.freezer.reset()
        super().setup(trainer, pl_module, stage)  # -> freeze_before_training, before DDP wraps the model
        if stage == "fit":
            pl_module.train()  # the modes start from train (a previous validate may have left eval)
        self.freezer.apply_modes(pl_module)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if getattr(pl_module, "param_groups_provider", None) is self:
            pl_module.param_groups_provider = None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # (BaseFinetuning.on_fit_start would re-impose stored group settings; nothing to restore here.)
        self.warmup.attach(trainer)
        self.ddp.track(pl_module, trainer.world_size)
        self._applied_epoch = None
        self.report.reset()

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.warmup.detach()

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._sync(trainer, pl_module)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._sync(trainer, pl_module)  # a run resumed mid-epoch gets no on_train_epoch_start

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer) -> None:
        self.ddp.average(pl_module, trainer.world_size)

    def state_dict(self) -> dict[str, Any]:
        return {"unfrozen_at": dict(self.warmup.unfrozen_at)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.warmup.unfrozen_at = dict(state_dict.get("unfrozen_at", {}))

    # ---- internals ---------------------------------------------------------------------------
    def _sync(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        if self._applied_epoch == epoch:
            return
        self._applied_epoch = epoch
        for optimizer in trainer.optimizers:
            self.finetune_function(pl_module, epoch, optimizer)
        if self._modes_stale:  # modes change only here: nothing is walked per batch
            self.freezer.apply_modes(pl_module)
            self._modes_stale = False
        self.report(self._groups, pl_module, epoch, trainer.is_global_zero)
