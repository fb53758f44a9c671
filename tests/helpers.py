"""Small helpers for tests: run the CLI in-process, read logged metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer

from tlx.cli import TLXCLI


def run_cli(args: list[str]) -> TLXCLI:
    """Run ``python -m tlx ...`` in this process and return the CLI (trainer, model, datamodule)."""
    return TLXCLI(args=args)


def tiny_trainer(tmp_path: Path, **kwargs: Any) -> Trainer:
    defaults = dict(default_root_dir=str(tmp_path), max_epochs=1, accelerator="cpu", devices=1,
                    enable_progress_bar=False, enable_model_summary=False, logger=False,
                    enable_checkpointing=False)
    defaults.update(kwargs)
    return Trainer(**defaults)
