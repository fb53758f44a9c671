"""The one parameter table: trainable and frozen counts and mode per part of the model, printed
when fit starts and again whenever they change (an unfreeze)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.utilities.model_summary import get_human_readable_count


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
    lines.append(f"{get_human_readable_count(t):<10} Trainable params")
    lines.append(f"{get_human_readable_count(f):<10} Non-trainable params")
    return "\n".join(lines)


class TrainableSummary(ModelSummary):
    """Replaces Lightning's model summary (a ``ModelSummary`` in the callbacks keeps Lightning
    from adding its own) with one table per part of the model (backbone, head): trainable and
    frozen parameters and the mode (train / eval / mixed), as the fine-tuning strategy set them
    in ``setup``. Printed at fit start, and after the first batch of an epoch in which the counts
    changed (gradual unfreezing), whatever the callback order."""

    def __init__(self) -> None:
        super().__init__()
        self._last: list[tuple[str, int, int]] | None = None

    def _print(self, trainer: Trainer, pl_module: LightningModule) -> None:
        rows = trainable_table(pl_module)
        counts = [r[:3] for r in rows]
        if counts == self._last:
            return
        self._last = counts
        if trainer.is_global_zero:
            print(f"Parameters at epoch {trainer.current_epoch}:\n{format_table(rows)}")

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._last = None
        self._print(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx == 0:
            self._print(trainer, pl_module)
