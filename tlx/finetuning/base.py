"""What every fine-tuning strategy shares: named parameter groups, freezing, BatchNorm policy,
warm-up after an unfreeze, and the trainable/frozen report.

Built on Lightning's ``BaseFinetuning`` (its hooks: freeze in ``setup``, unfreeze at epoch
start), with its known traps fixed rather than inherited:

* Every parameter group that will ever train is in the optimizer from the start, named, with
  its learning-rate scale; a frozen group is inert (no gradient: no step, no weight decay) until
  it is unfrozen. So the LR scheduler drives it from the first epoch on (Lightning 12141, 8720;
  Flash 1321), ``LearningRateMonitor`` shows it by name, and a checkpoint from before or after
  an unfreeze restores the same groups and optimizer state (Lightning 6891). ``BaseFinetuning``
  instead adds groups at unfreeze time and re-imposes stale group settings on resume.
* Freezing never sets BatchNorm's ``track_running_stats = False`` (which makes frozen BN
  normalise with batch statistics in training and still drift from its pretrained behaviour);
  frozen parts run in eval mode instead (Lightning 15062, 13902).
* Freezing happens in ``setup``, before DDP wraps the model, so frozen parameters are simply not
  in DDP's reducer and ``find_unused_parameters`` is not needed (Lightning 17212). Parameters
  unfrozen later are not in the reducer either; their gradients are averaged here.
* The state of an epoch (which groups are unfrozen) is a function of the epoch alone, applied
  again when a run resumes, even mid-epoch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn
from torch.optim import Optimizer

from tlx.finetuning.groups import FinetuningError, LayerGroup

log = logging.getLogger("tlx")

_BN = nn.modules.batchnorm._NormBase


@dataclass
class ParamGroup:
    """One optimizer parameter group: a name for logs, its parameters, its LR relative to the head's."""

    name: str
    params: list[nn.Parameter]
    lr_scale: float = 1.0


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
        self.train_bn = train_bn
        self.freeze_bn_stats = freeze_bn_stats
        self.warmup_steps = int(warmup_steps)
        self._frozen_modules: list[nn.Module] = []
        self._unfrozen_at: dict[str, int] = {}  # group name -> global step of its unfreeze (warm-up)
        self._groups: list[ParamGroup] = []
        self._applied_epoch: int | None = None
        self._last_counts: dict[str, tuple[int, int]] | None = None
        self._hooks: list[Any] = []
        self._saved_lrs: dict[int, float] = {}
        self._ddp_tracked: set[int] | None = None
        self._trainer: Trainer | None = None

    # ---- for subclasses ----------------------------------------------------------------------
    def freeze_before_training(self, pl_module: LightningModule) -> None:
        pass

    def groups(self, pl_module: LightningModule) -> list[ParamGroup]:
        """Named optimizer groups, including frozen parameters that will be unfrozen later."""
        return [
            ParamGroup("head", head_params(pl_module)),
            ParamGroup("backbone", list(pl_module.backbone.parameters()), self.backbone_lr_scale),
        ]

    def finetune_function(self, pl_module: LightningModule, epoch: int, optimizer: Optimizer) -> None:
        pass

    def freeze_group(self, group: LayerGroup | nn.Module) -> None:
        """Freeze a group (or module): no gradients, eval mode; BN layers train if ``train_bn``."""
        modules = group.modules if isinstance(group, LayerGroup) else [group]
        params = group.params if isinstance(group, LayerGroup) else list(group.parameters())
        for p in params:
            p.requires_grad_(False)
        if self.train_bn:
            for bn in (m for module in modules for m in module.modules() if isinstance(m, _BN)):
                for p in bn.parameters():
                    p.requires_grad_(True)
        self._frozen_modules.extend(m for m in modules if all(m is not f for f in self._frozen_modules))

    def unfreeze_group(self, group: LayerGroup, pl_module: LightningModule) -> None:
        """Unfreeze a group (idempotent); its warm-up starts from the first unfreeze."""
        for p in group.params:
            p.requires_grad_(True)
        ids = {id(m) for m in group.modules}
        self._frozen_modules = [m for m in self._frozen_modules if id(m) not in ids]
        self._unfrozen_at.setdefault(group.name, pl_module.trainer.global_step)

    # ---- optimizer groups (asked for by ImageClassifier.configure_optimizers) -----------------
    def param_groups(self, pl_module: LightningModule) -> list[dict[str, Any]]:
        seen: set[int] = set()
        groups = []
        for g in self.groups(pl_module):
            params = [p for p in g.params if id(p) not in seen]
            if len(params) != len(g.params):
                raise FinetuningError(f"{type(self).__name__}: a parameter of group {g.name!r} is already in another group.")
            seen.update(id(p) for p in params)
            if params:
                groups.append(ParamGroup(g.name, params, float(g.lr_scale)))
        self._groups = groups
        return [{"params": g.params, "name": g.name, "lr_scale": g.lr_scale} for g in groups]

    # ---- Lightning hooks ---------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not isinstance(getattr(pl_module, "backbone", None), nn.Module):
            raise FinetuningError(f"{type(self).__name__} needs a model with a `backbone` module (tlx.models.ImageClassifier).")
        self._frozen_modules = []
        super().setup(trainer, pl_module, stage)  # -> freeze_before_training, before DDP wraps the model

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # (BaseFinetuning.on_fit_start would re-impose stored group settings; nothing to restore here.)
        self._remove_hooks()
        self._trainer = trainer
        for optimizer in trainer.optimizers:
            self._hooks.append(optimizer.register_step_pre_hook(self._warmup_pre_step))
            self._hooks.append(optimizer.register_step_post_hook(self._warmup_post_step))
        if trainer.world_size > 1:
            self._ddp_tracked = {id(p) for p in pl_module.parameters() if p.requires_grad}
        self._applied_epoch = None

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._remove_hooks()

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._sync(trainer, pl_module)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._sync(trainer, pl_module)  # a run resumed mid-epoch gets no on_train_epoch_start
        self._apply_modes(pl_module)

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer) -> None:
        if self._ddp_tracked is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
            grads = [p.grad for p in pl_module.parameters() if p.grad is not None and id(p) not in self._ddp_tracked]
            if grads:  # unfrozen after DDP was set up: DDP does not average these, so do it here
                flat = torch._utils._flatten_dense_tensors(grads)
                torch.distributed.all_reduce(flat)
                flat /= trainer.world_size
                for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
                    g.copy_(synced)

    def state_dict(self) -> dict[str, Any]:
        return {"unfrozen_at": dict(self._unfrozen_at)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._unfrozen_at = dict(state_dict.get("unfrozen_at", {}))

    # ---- internals ---------------------------------------------------------------------------
    def _sync(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        if self._applied_epoch == epoch:
            return
        self._applied_epoch = epoch
        for optimizer in trainer.optimizers:
            self.finetune_function(pl_module, epoch, optimizer)
        self._report(trainer, pl_module)

    def _apply_modes(self, pl_module: LightningModule) -> None:
        # Lightning puts the whole model in train mode at each epoch start and after validation,
        # so the modes are set again right before every training batch.
        for module in self._frozen_modules:
            module.eval()
        for bn in pl_module.modules():
            if isinstance(bn, _BN):
                params = list(bn.parameters(recurse=False))
                if self.freeze_bn_stats:
                    bn.eval()
                elif params:
                    bn.train(any(p.requires_grad for p in params))

    def _warmup_factor(self, name: str | None, step: int) -> float:
        if self.warmup_steps <= 0 or name not in self._unfrozen_at:
            return 1.0
        return min(1.0, (step - self._unfrozen_at[name] + 1) / self.warmup_steps)

    def _warmup_pre_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        # The ramp scales the LR around the step only, so schedulers (which read group["lr"])
        # and checkpoints never see it: resuming reproduces it from the global step.
        step = self._trainer.global_step
        for i, g in enumerate(optimizer.param_groups):
            f = self._warmup_factor(g.get("name"), step)
            if f < 1.0:
                self._saved_lrs[i] = g["lr"]
                g["lr"] = g["lr"] * f

    def _warmup_post_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        for i, lr in self._saved_lrs.items():
            optimizer.param_groups[i]["lr"] = lr
        self._saved_lrs.clear()

    def _remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def _report(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Print trainable/frozen counts per group when they change; log them every epoch."""
        counts: dict[str, tuple[int, int]] = {}
        grouped: set[int] = set()
        for g in self._groups:
            grouped.update(id(p) for p in g.params)
            counts[g.name] = (sum(p.numel() for p in g.params if p.requires_grad), sum(p.numel() for p in g.params if not p.requires_grad))
        rest = [p for p in pl_module.parameters() if id(p) not in grouped]
        if rest:
            counts["(not optimised)"] = (sum(p.numel() for p in rest if p.requires_grad), sum(p.numel() for p in rest if not p.requires_grad))
        total_t = sum(t for t, _ in counts.values())
        total_f = sum(f for _, f in counts.values())
        if counts != self._last_counts and trainer.is_global_zero:
            scales = {g.name: g.lr_scale for g in self._groups}
            width = max(len(n) for n in counts) if counts else 5
            lines = [f"{type(self).__name__}, epoch {trainer.current_epoch}: {total_t:,} trainable, {total_f:,} frozen parameters",
                     f"  {'group':<{width}}  {'trainable':>12}  {'frozen':>12}  lr scale"]
            lines += [f"  {n:<{width}}  {t:>12,}  {f:>12,}  {(format(scales[n], '.4g') if n in scales else '-')}" for n, (t, f) in counts.items()]
            log.info("\n".join(lines))
        self._last_counts = counts
        values = {"params/trainable": float(total_t), "params/frozen": float(total_f)}
        for n, (t, f) in counts.items():
            values[f"params/trainable/{n}"] = float(t)
            values[f"params/frozen/{n}"] = float(f)
        pl_module.log_dict(values, on_step=False, on_epoch=True, batch_size=1)


def optimizer_param_groups(pl_module: LightningModule) -> list[Any]:
    """What ``configure_optimizers`` hands the optimizer: the strategy callback's named groups,
    or (no strategy) the trainable parameters as before."""
    trainer = pl_module._trainer
    strategies = [cb for cb in (trainer.callbacks if trainer is not None else []) if isinstance(cb, FinetuneStrategy)]
    if len(strategies) > 1:
        names = ", ".join(type(s).__name__ for s in strategies)
        raise FinetuningError(f"Several fine-tuning strategies in trainer.callbacks ({names}): keep one.")
    if strategies:
        return strategies[0].param_groups(pl_module)
    return [p for p in pl_module.parameters() if p.requires_grad]


def scale_group_lrs(optimizer: Optimizer) -> None:
    """Each group's LR = the optimizer's LR x the group's ``lr_scale`` (before any scheduler)."""
    for g in optimizer.param_groups:
        g["lr"] = g["lr"] * g.get("lr_scale", 1.0)


def fit_scheduler_to_groups(scheduler: Any) -> None:
    """Schedulers that set absolute LRs per group (OneCycle, Cyclic) get the group scales back."""
    sched = torch.optim.lr_scheduler
    groups = scheduler.optimizer.param_groups if hasattr(scheduler, "optimizer") else []
    scales = [g.get("lr_scale", 1.0) for g in groups]
    if all(s == 1.0 for s in scales):
        return
    if isinstance(scheduler, sched.OneCycleLR):
        for g, s in zip(groups, scales):
            for key in ("initial_lr", "max_lr", "min_lr", "lr"):
                g[key] = g[key] * s
    elif isinstance(scheduler, sched.CyclicLR):
        scheduler.base_lrs = [lr * s for lr, s in zip(scheduler.base_lrs, scales)]
        scheduler.max_lrs = [lr * s for lr, s in zip(scheduler.max_lrs, scales)]
        for g, s in zip(groups, scales):
            g["lr"] = g["lr"] * s
