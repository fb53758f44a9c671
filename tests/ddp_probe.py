"""A callback for the multi-process tests: each rank writes what it saw to ``rank<N>.json``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer


def _sampler_indices(loader) -> list[int]:
    if isinstance(loader, dict):  # domain adaptation: the source loader (and the target's)
        loader = loader["source"]
    # The training sampler yields keys ``index + n * draw`` (tlx.data.resumable): back to indices.
    n = len(loader.dataset)
    return [int(i) % n for i in loader.sampler]


class ShardProbe(Callback):
    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.record: dict = {"train_indices": [], "val_indices": []}

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        ddp = trainer.strategy.model
        self.record.update(
            global_rank=trainer.global_rank,
            world_size=trainer.world_size,
            node_rank=trainer.node_rank,
            cwd=os.getcwd(),
            wrapper=type(ddp).__name__,
            find_unused_parameters=getattr(ddp, "find_unused_parameters", None),
            frozen_backbone=not any(p.requires_grad for p in pl_module.backbone.parameters()),
            lrs=[g["lr"] for opt in trainer.optimizers for g in opt.param_groups],
        )

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.record["train_indices"].append(_sampler_indices(trainer.train_dataloader))
        loader = trainer.train_dataloader
        loaders = loader if isinstance(loader, dict) else {"train": loader}
        self.record["train_sampler"] = type(next(iter(loaders.values())).sampler).__name__
        self.record["train_samplers"] = {k: type(v.sampler).__name__ for k, v in loaders.items()}

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self.record["val_indices"].append(_sampler_indices(trainer.val_dataloaders))

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # The per-dataset caches: how much of each this process built itself.
        for cb in trainer.callbacks:
            if type(cb).__name__ == "FeatureCache":
                self.record["features_extracted_here"] = cb.extracted_here
                self.record["feature_status"] = dict(cb.last_status)
        decoded = getattr(trainer.datamodule, "_decoded", {})
        self.record["images_decoded_here"] = {split: d.decoded_here for split, d in decoded.items()}
        self.record["metrics"] = {k: float(v) for k, v in trainer.callback_metrics.items()}
        self.record["global_step"] = trainer.global_step
        Path(self.out_dir).mkdir(parents=True, exist_ok=True)
        (Path(self.out_dir) / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.record))


class Preempt(Callback):
    """Simulates a SLURM preemption: SIGUSR1 to this process after ``at_step`` optimiser steps
    (Lightning's handler saves an HPC checkpoint and calls ``scontrol requeue``), then the job is
    killed. Active only when the environment variable ``TLX_TEST_PREEMPT`` is set."""

    def __init__(self, at_step: int = 2):
        self.at_step = at_step

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if os.environ.get("TLX_TEST_PREEMPT") and trainer.global_step == self.at_step:
            import signal

            os.kill(os.getpid(), signal.SIGUSR1)  # the handler runs before the next bytecode
            os._exit(143)  # killed like SLURM does at the end of the grace time
