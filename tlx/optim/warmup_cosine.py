"""Linear warm-up, then cosine decay: the usual fine-tuning schedule, stepped per optimizer step."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class WarmupCosine(LRScheduler):
    """LR ramps linearly from ``lr / warmup_steps`` to ``lr`` over ``warmup_steps`` steps, then
    follows a half cosine down to ``min_lr_ratio * lr`` at ``total_steps``.

    Use it with ``model.lr_scheduler_interval: step``. ``total_steps`` left unset is filled in by
    the model from the trainer's ``estimated_stepping_batches`` (:meth:`set_total_steps`), so a
    YAML recipe needs only the warm-up::

        lr_scheduler: {class_path: tlx.optim.WarmupCosine, init_args: {warmup_steps: 100}}
        lr_scheduler_interval: step

    Args:
        warmup_steps: steps of the linear ramp (0: start at the full LR).
        total_steps: length of the whole schedule; None until the model sets it.
        min_lr_ratio: the final LR as a fraction of the peak.
    """

    def __init__(self, optimizer: Optimizer, warmup_steps: int = 0, total_steps: int | None = None,
                 min_lr_ratio: float = 0.0, last_epoch: int = -1):
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps) if total_steps else None
        self.min_lr_ratio = float(min_lr_ratio)
        super().__init__(optimizer, last_epoch)

    def set_total_steps(self, total_steps: int) -> None:
        """The schedule's length, if the config did not give one."""
        if self.total_steps is None:
            self.total_steps = int(total_steps)

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if not self.total_steps:
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def get_lr(self) -> list[float]:
        f = self.factor(self.last_epoch)
        return [base * f for base in self.base_lrs]
