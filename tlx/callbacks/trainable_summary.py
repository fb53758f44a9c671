"""Which parts of the model train and which are frozen, printed when fit starts and whenever it changes."""

from __future__ import annotations

import logging
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.model_summary import get_human_readable_count

log = logging.getLogger("tlx")


def trainable_table(pl_module: LightningModule) -> list[tuple[str, int, int, str]]:
    """``(name, trainable, frozen, mode)`` for each top-level submodule that has parameters."""
    rows = []
    for name, child in pl_module.named_children():
        params = list(child.parameters())
        if not params:
            continue
        trainable = sum(p.numel() for p in params if p.requires_grad)
        frozen = sum(p.numel() for p in params if not p.requires_grad)
        modes = {m.training for m in child.modules()}
        rows.append((name, trainable, frozen, "mixed" if len(modes) > 1 else ("train" if child.training else "eval")))
    return rows


def format_table(rows: list[tuple[str, int, int, str]]) -> str:
    lines = [f"{'module':<12} {'trainable':>10} {'frozen':>10}  mode"]
    for name, trainable, frozen, mode in rows:
        lines.append(f"{name:<12} {get_human_readable_count(trainable):>10} {get_human_readable_count(frozen):>10}  {mode}")
    t, f = sum(r[1] for r in rows), sum(r[2] for r in rows)
    lines.append(f"{'total':<12} {get_human_readable_count(t):>10} {get_human_readable_count(f):>10}")
    return "\n".join(lines)


class TrainableSummary(Callback):
    """Prints trainable and frozen parameter counts per part of the model (backbone, head) and
    its mode (train / eval / mixed) after the first training batch, when every freezing callback
    has acted whatever the callback order, and again whenever they change (gradual unfreezing).
    Lightning's model summary gives the totals only."""

    def __init__(self) -> None:
        self._last: list[tuple[str, int, int]] | None = None

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx != 0 or not trainer.is_global_zero:
            return
        rows = trainable_table(pl_module)
        counts = [r[:3] for r in rows]
        if counts == self._last:
            return
        self._last = counts
        print(f"Parameters at epoch {trainer.current_epoch}:\n{format_table(rows)}")
