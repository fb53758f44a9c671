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


def signal_once_saved(args: list[str], checkpoint: Path, signum: int, start_timeout: float = 200) -> tuple[int, str]:
    """Run ``python -m tlx ARGS`` in a subprocess, send ``signum`` once ``checkpoint`` exists (the
    first validation wrote it); return the exit status and stderr."""
    import subprocess
    import sys
    import time

    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "tlx", *args], cwd=repo, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + start_timeout
        while not checkpoint.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.05)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err
