"""``--ckpt_path last``: find the newest ``last.ckpt`` of earlier runs and continue in its folder.

Lightning resolves ``last`` only inside the *new* run's checkpoint folder (``version_N+1``), which
a restarted job has not written yet. tlx looks in every ``lightning_logs/version_*/checkpoints``
under ``default_root_dir`` (or in ``checkpoint.dirpath`` when set), takes the newest, and logs the
resumed run into that same ``version_K`` folder, so that TensorBoard curves, ``best.ckpt`` tracking
and the next ``last`` all continue where they were. With no checkpoint yet, ``fit`` starts afresh:
the same command works for the first start and every restart (cluster requeue).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from tlx.checkpointing import CheckpointError

log = logging.getLogger("tlx")

LAST = "last"


def find_last_checkpoint(root_dir: str | Path, dirpath: str | Path | None = None) -> Path | None:
    if dirpath:
        candidates = list(Path(dirpath).glob("last*.ckpt"))
    else:
        candidates = list(Path(root_dir).glob("lightning_logs/version_*/checkpoints/last*.ckpt"))
    candidates = [p for p in candidates if p.is_file()]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def logger_version(ckpt: Path, root_dir: str | Path) -> int | None:
    """``K`` when ``ckpt`` is ``<root_dir>/lightning_logs/version_K/checkpoints/...``."""
    folder = ckpt.parent.parent
    if ckpt.parent.name == "checkpoints" and folder.parent.resolve() == (Path(root_dir) / "lightning_logs").resolve():
        name = folder.name
        if name.startswith("version_") and name[len("version_"):].isdigit():
            return int(name[len("version_"):])
    return None


def resolve_last(subcommand: str, root_dir: str | None, dirpath: str | None) -> tuple[str | None, int | None]:
    """The checkpoint ``last`` means here, and the logger version to continue (or ``None``)."""
    root = root_dir or os.getcwd()
    ckpt = find_last_checkpoint(root, dirpath)
    where = dirpath or os.path.join(root, "lightning_logs", "version_*", "checkpoints")
    if ckpt is None:
        if subcommand == "fit":
            log.info("--ckpt_path last: no last*.ckpt in %s yet; starting a new run.", where)
            return None, None
        raise CheckpointError(f"--ckpt_path last: no last*.ckpt found in {where}. Give a checkpoint path instead.")
    log.info("--ckpt_path last: resuming from %s", ckpt)
    return str(ckpt), (logger_version(ckpt, root) if subcommand == "fit" and not dirpath else None)
