"""Linear learning-rate warm-up of a group after it is unfrozen."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Trainer
from torch.optim import Optimizer


class UnfreezeWarmup:
    """After group ``g`` is unfrozen at global step ``s``, its LR is scaled by
    ``min(1, (step - s + 1) / steps)``.

    The ramp scales the LR around the optimizer step only (step pre/post hooks), so schedulers
    (which read ``group["lr"]``) and checkpoints never see it: resuming reproduces it from the
    global step and :attr:`unfrozen_at` (saved in the strategy's state).
    """

    def __init__(self, steps: int = 0):
        self.steps = int(steps)
        self.unfrozen_at: dict[str, int] = {}  # strategy group name -> global step of its unfreeze
        self._trainer: Trainer | None = None
        self._hooks: list[Any] = []
        self._saved_lrs: dict[int, float] = {}

    def started(self, group: str, step: int) -> None:
        self.unfrozen_at.setdefault(group, step)

    def factor(self, group: str | None, step: int) -> float:
        if self.steps <= 0 or group not in self.unfrozen_at:
            return 1.0
        return min(1.0, (step - self.unfrozen_at[group] + 1) / self.steps)

    def attach(self, trainer: Trainer) -> None:
        self.detach()
        self._trainer = trainer
        for optimizer in trainer.optimizers:
            self._hooks.append(optimizer.register_step_pre_hook(self._pre_step))
            self._hooks.append(optimizer.register_step_post_hook(self._post_step))

    def detach(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def _pre_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        step = self._trainer.global_step
        for i, g in enumerate(optimizer.param_groups):
            f = self.factor(g.get("group", g.get("name")), step)
            if f < 1.0:
                self._saved_lrs[i] = g["lr"]
                g["lr"] = g["lr"] * f

    def _post_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        for i, lr in self._saved_lrs.items():
            optimizer.param_groups[i]["lr"] = lr
        self._saved_lrs.clear()
