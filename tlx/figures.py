"""Figures to every logger of the trainer, whichever kind: the one place tlx sends a figure.

Each logger gets the figure the way it takes images, found by what it offers (duck typing, so
that neither mlflow nor wandb has to be installed to import this):

- TensorBoard (its experiment has ``add_figure``): ``add_figure(tag, fig, step)``;
- MLflow (``logger.run_id`` and ``experiment.log_figure``): ``log_figure(run_id, fig,
  "figures/<tag>_<step>.png")``, an artifact of the run;
- Weights & Biases and others with ``logger.log_image(key, images, step)``: the rendered picture,
  at the trainer's global step (W&B's x axis is Lightning's ``trainer/global_step``: an epoch
  number there would put the picture at the wrong place);
- any other logger (CSVLogger...): a PNG file ``<log_dir>/figures/<tag>_<step>.png``, so that
  no figure is silently dropped.

Only global rank 0 logs (one copy of each figure). A logger that fails is reported in one warning
and the others still get the figure (a figure is never worth a run).
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

from lightning.pytorch import Trainer

from tlx.visuals import figure_png, figure_to_array, never_fatal

if TYPE_CHECKING:
    from matplotlib.figure import Figure  # drawn lazily (tlx.visuals.new_figure)


def figure_loggers(trainer: Trainer) -> list[Any]:
    """The loggers figures go to: all of them, on global rank 0 only."""
    return list(trainer.loggers) if trainer.is_global_zero else []


def figure_file_name(tag: str, step: int) -> str:
    """``val/confusion_matrix`` at step 3 -> ``val_confusion_matrix_3.png`` (one flat folder)."""
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', tag).strip('_')}_{step}.png"


def logger_dir(logger: Any, fallback: str) -> str:
    """Where a logger keeps its run's files (``log_dir``, else ``save_dir``, else ``fallback``)."""
    return getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None) or fallback


def send_figure(logger: Any, tag: str, fig: Figure, step: int, global_step: int, fallback_dir: str) -> None:
    """``fig`` to one logger, the way it takes images (see the module docstring)."""
    experiment = getattr(logger, "experiment", None)
    if callable(getattr(experiment, "add_figure", None)):
        experiment.add_figure(tag, fig, step)
    elif getattr(logger, "run_id", None) and callable(getattr(experiment, "log_figure", None)):
        experiment.log_figure(logger.run_id, fig, f"figures/{figure_file_name(tag, step)}")
    elif callable(getattr(logger, "log_image", None)):
        logger.log_image(key=tag, images=[figure_to_array(fig)], step=global_step)
    else:
        folder = os.path.join(logger_dir(logger, fallback_dir), "figures")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, figure_file_name(tag, step)), "wb") as f:
            f.write(figure_png(fig))


def log_figure(trainer: Trainer, tag: str, fig: Figure, step: int) -> None:
    """``fig`` under ``tag`` at ``step`` to every logger of ``trainer`` (on global rank 0)."""
    for logger in figure_loggers(trainer):
        with never_fatal(f"{tag} for {type(logger).__name__}"):
            send_figure(logger, tag, fig, step, trainer.global_step, trainer.default_root_dir)
