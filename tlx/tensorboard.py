"""The trainer's TensorBoard loggers, on global rank 0 only: the one place tlx looks them up."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger

if TYPE_CHECKING:
    from matplotlib.figure import Figure  # drawn lazily (tlx.visuals.new_figure)


def tensorboard_loggers(trainer: Trainer) -> list[TensorBoardLogger]:
    """The trainer's TensorBoard loggers; none off rank 0 (one copy of every figure and table)."""
    if not trainer.is_global_zero:
        return []
    return [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]


def tensorboard_writers(trainer: Trainer) -> list[Any]:
    """Their SummaryWriters."""
    return [lg.experiment for lg in tensorboard_loggers(trainer)]


def add_figure(trainer: Trainer, tag: str, fig: Figure, step: int, close: bool = False) -> None:
    for writer in tensorboard_writers(trainer):
        writer.add_figure(tag, fig, step, close=close)
