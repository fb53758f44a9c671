"""The trainer's TensorBoard loggers, on global rank 0 only: the one place tlx looks them up
(for TensorBoard's own views, the HPARAMS tab; figures go to every logger through tlx.figures)."""

from __future__ import annotations

from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger


def tensorboard_loggers(trainer: Trainer) -> list[TensorBoardLogger]:
    """The trainer's TensorBoard loggers; none off rank 0 (one copy of every table)."""
    if not trainer.is_global_zero:
        return []
    return [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
