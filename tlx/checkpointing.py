"""Checkpoint files that are never half-written and never run code when loaded.

:class:`SafeCheckpointIO` is a Lightning ``CheckpointIO`` plugin, so every checkpoint write goes
through it: ModelCheckpoint's ``best``/``last``, the preemption save, ``trainer.save_checkpoint``.
(A ModelCheckpoint subclass would only cover its own writes.)

* Writes go to a temporary file in the checkpoint's own folder, are fsync'ed, then renamed over the
  target (``os.replace`` is atomic on one filesystem). Lightning's own ``_atomic_save`` stages the
  file in the system temp folder and ``shutil.move``\\ s it, which falls back to a plain, interruptible
  copy when that folder is on another filesystem (the usual cluster layout), and never fsyncs.
* Reads use ``torch.load(weights_only=True)`` whatever the caller asks for: tlx checkpoints hold
  tensors and plain data only, and a file with pickled objects is refused with a clear message.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from tlx.checkpoint_guards import is_leftover, no_space_error, refuse_non_finite, temp_prefix
from tlx.errors import TLXError

log = logging.getLogger("tlx")

PARTIAL_PREFIX = ".tlx-partial-"  # no "last" in it: Lightning's last-checkpoint search must not see it


class CheckpointError(TLXError, ValueError):
    """A checkpoint that is missing, corrupt or unsafe to load."""


def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any]) -> None:
    """``write(file)`` to ``path`` so that a crash leaves either the old file or the new one, whole.

    The one atomic write of tlx (checkpoints, feature and image caches): a temporary file beside
    ``path`` (its name carries host and pid, so that cleaning up never deletes another live run's:
    :func:`tlx.checkpoint_guards.is_leftover`), fsync'ed, renamed over ``path``, the
    rename fsync'ed too. The file gets the mode a plain ``open`` would give (umask applied), not
    ``mkstemp``'s owner-only 0600, so that a shared cache stays readable by the team.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(PARTIAL_PREFIX), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if (full := no_space_error(path, e)) is not None:
            raise full from None
        raise
    _fsync_dir(path.parent)  # make the rename itself durable


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through :func:`atomic_write`."""
    atomic_write(path, lambda f: torch.save(obj, f))


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not supported everywhere (Windows); the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_partial_files(folder: str | Path) -> list[Path]:
    """Delete temporary files left by a process killed mid-write (never another live run's); return them."""
    stale = sorted(p for p in Path(folder).glob(f"{PARTIAL_PREFIX}*.tmp") if is_leftover(p, PARTIAL_PREFIX))
    for p in stale:
        p.unlink(missing_ok=True)
    if stale:
        log.info("Removed %d partial checkpoint file(s) left by an interrupted write in %s", len(stale), folder)
    return stale


def safe_torch_load(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with messages that say what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {str(path)!r} does not exist or is not a file.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise load_error(path, e) from None


def load_error(path: str | Path, e: Exception) -> CheckpointError:
    """The message for a checkpoint that ``torch.load(weights_only=True)`` failed on.

    torch's own text suggests retrying with ``weights_only=False``: that would run whatever the file
    carries, so only the reason is passed on, never that hint."""
    text = str(e)
    if isinstance(e, pickle.UnpicklingError) and "Unsupported global" in text:
        found = re.search(r"GLOBAL (\S+)", text)  # torch's hint to allowlist it is not passed on either
        return CheckpointError(
            f"Refusing to load checkpoint {str(path)!r}: it carries pickled Python objects, which could run "
            "code when loaded. tlx checkpoints hold only tensors and plain data; load files only from sources "
            f"you trust, and re-save them as plain state. The file names {found.group(1) if found else 'an object'!r}."
        )
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        return CheckpointError(f"Checkpoint {str(path)!r} is empty (0 bytes): use another one (e.g. best.ckpt or last.ckpt).")
    if isinstance(e, pickle.UnpicklingError) or not _starts_like_zip(path):
        return CheckpointError(
            f"{str(path)!r} is not a checkpoint (not a file written by torch.save); give a .ckpt file written by "
            "tlx (e.g. best.ckpt or last.ckpt)."
        )
    first_line = text.splitlines()[0] if text else type(e).__name__
    return CheckpointError(  # truncated, ...
        f"Could not read checkpoint {str(path)!r} ({type(e).__name__}: {first_line}). "
        "The file may be truncated or not a checkpoint; use another one (e.g. best.ckpt or last.ckpt)."
    )


def _starts_like_zip(path: str | Path) -> bool:
    """torch.save writes a zip archive: a file that does not even start like one is something else
    (a truncated checkpoint still does)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False


class SafeCheckpointIO(TorchCheckpointIO):
    """Atomic, fsync'ed checkpoint writes; ``weights_only=True`` reads (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._cleaned: set[Path] = set()

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options.")
        folder = Path(path).parent
        if folder not in self._cleaned and folder.is_dir():
            remove_partial_files(folder)
        self._cleaned.add(folder)
        refuse_non_finite(checkpoint, path)
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        # map_location=None: Lightning moves the restored tensors itself; keep them where they were saved.
        checkpoint = safe_torch_load(path, map_location=map_location or (lambda storage, loc: storage))
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:  # e.g. a plain weights file
            raise CheckpointError(
                f"{str(path)!r} is not a training checkpoint (it has no 'state_dict': a plain weights file?). To start "
                "from such weights, give them as model.init_args.weights_path instead of --ckpt_path."
            )
        return checkpoint
