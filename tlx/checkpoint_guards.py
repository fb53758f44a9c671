"""What a checkpoint write must refuse or explain: non-finite tensors, a full disk, other runs' files.

Kept beside :mod:`tlx.checkpointing` (which does the atomic write) so that each rule is one function:

* a checkpoint holding a NaN/inf tensor (weights *or* buffers such as BatchNorm's running
  variance) is never written: it would replace a good ``best``/``last``;
* a full disk gets one line saying that the previous file is intact and how to go on;
* temporary files carry their writer's host and pid, so that cleaning up after a killed run never
  deletes the file another run (started into the same folder) is writing right now.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import torch

from tlx.compat import max_abs_per_tensor
from tlx.errors import TLXError

NO_SPACE_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
FOREIGN_TMP_MAX_AGE_S = 24 * 3600  # another host's temp file older than this is a leftover


def non_finite_tensors(checkpoint: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors of ``checkpoint["state_dict"]`` holding NaN or inf."""
    state = checkpoint.get("state_dict") or {}
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    if not tensors:
        return []
    # The common, all-finite case: per-tensor max |x| in fused kernels, one device sync.
    values = [v.detach() for v in tensors.values() if v.numel()]
    if not values or bool(torch.stack([n.float() for n in max_abs_per_tensor(values)]).isfinite().all()):
        return []
    return [k for k, v in tensors.items() if not bool(torch.isfinite(v).all())]


def refuse_non_finite(checkpoint: dict[str, Any], path: str | Path) -> None:
    bad = non_finite_tensors(checkpoint)
    if bad:
        raise TLXError(
            f"Refusing to write checkpoint {str(path)!r}: {len(bad)} tensor(s) of the model are not finite "
            f"(e.g. {', '.join(bad[:3])}): training diverged. The previous checkpoint is kept. Common fixes: a "
            "lower learning rate (model.init_args.optimizer.init_args.lr), gradient clipping (trainer.gradient_clip_val)."
        )


def no_space_error(path: str | Path, e: BaseException) -> TLXError | None:
    """The one-line message for a write that failed because the disk (or quota) is full, else None."""
    full = isinstance(e, OSError) and e.errno in NO_SPACE_ERRNOS
    if not full and isinstance(e, RuntimeError) and "write" in str(e).lower():  # torch's zip writer
        try:
            full = shutil.disk_usage(Path(path).parent).free < 64 * 2**20
        except OSError:
            full = False
    if not full:
        return None
    return TLXError(f"no space left on device while writing {path}; the previous checkpoint is intact; "
                    "free space and resume with --ckpt_path last")


def temp_prefix(prefix: str) -> str:
    """``<prefix><host>-<pid>-``: whose temporary file it is."""
    return f"{prefix}{socket.gethostname().replace('-', '_')}-{os.getpid()}-"


def is_leftover(tmp: Path, prefix: str) -> bool:
    """Whether ``tmp`` was left by a writer that is gone (never a file being written now)."""
    parts = tmp.name[len(prefix):].split("-")
    if len(parts) < 3 or not parts[1].isdigit():
        return True  # an older naming without an owner: a leftover of an earlier version
    host, pid = parts[0], int(parts[1])
    if host != socket.gethostname().replace("-", "_"):
        try:  # cannot ask another machine whether its writer lives: only old files count as leftovers
            return time.time() - tmp.stat().st_mtime > FOREIGN_TMP_MAX_AGE_S
        except OSError:
            return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
