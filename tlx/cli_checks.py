"""What ``python -m tlx`` checks at its boundary, before anything runs, and its last-resort handler.

Every check here turns a deep traceback (``NotADirectoryError`` from inside Lightning, jsonargparse's
"Unexpected config:", an output file that fails after an hour of predicting) into one line that
names the option or file and says what to do. :func:`report_unexpected` is the net under all of
them: an error tlx did not foresee still prints one line, and where its full traceback went.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from tlx.checkpointing import CheckpointError
from tlx.errors import TLXError

CKPT_KEYWORDS = ("last", "best", "hpc", "registry")  # --ckpt_path values that are not paths


# ---- config files --------------------------------------------------------------------------------
def config_files(args: list[str]) -> list[str]:
    """The files given with ``--config``/``-c`` on a command line."""
    files = []
    for i, a in enumerate(args):
        if a in ("--config", "-c") and i + 1 < len(args):
            files.append(args[i + 1])
        elif a.startswith("--config="):
            files.append(a.split("=", 1)[1])
    return files


def check_config_files(args: list[str]) -> None:
    """An empty YAML (or only comments) would read as "Unexpected config:" naming nothing."""
    for name in config_files(args):
        path = Path(name)
        if not path.is_file():
            continue  # jsonargparse names a missing file itself
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise TLXError(f"config file {name!r} cannot be read as text ({type(e).__name__}): give a YAML file.") from None
        if not [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]:
            raise TLXError(f"config file {name!r} is empty: put the run's settings in it (see configs/) or drop --config.")


# ---- folders and files a run writes ----------------------------------------------------------------
def check_writable_folder(path: str | os.PathLike, option: str) -> None:
    """``path`` is (or can be created as) a folder this process can write to."""
    p = Path(path)
    existing = p
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        where = "" if existing == p else f": {str(existing)!r} is a file"
        raise TLXError(f"{option} {str(p)!r} is a file, not a folder{where}: choose a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise TLXError(f"{option} {str(p)!r} is not writable: choose a folder you can write to (or fix its permissions).")


def check_output_file(path: str | os.PathLike, option: str) -> None:
    """Checked before predicting, so that predictions are never lost to an unwritable output."""
    p = Path(path)
    if p.is_dir():
        raise TLXError(f"{option} {str(p)!r} is a folder: give a file path, e.g. {p / 'predictions.csv'}.")
    if p.exists() and not os.access(p, os.W_OK):
        raise TLXError(f"{option} {str(p)!r} is not writable: choose another file.")
    check_writable_folder(p.parent, f"{option}'s folder")


def check_run_paths(subcommand: str, config: Any) -> None:
    """The folders and files a run will write: checked before any work is done."""
    trainer = config.get("trainer") or {}
    check_writable_folder(trainer.get("default_root_dir") or os.getcwd(), "trainer.default_root_dir")
    dirpath = (config.get("checkpoint") or {}).get("dirpath")
    if subcommand == "fit" and dirpath:
        check_writable_folder(dirpath, "checkpoint.dirpath")
    output = (config.get("prediction_writer") or {}).get("output")
    if subcommand == "predict" and output:
        check_output_file(output, "prediction_writer.output")
    check_ckpt_path(config.get("ckpt_path"))


def check_ckpt_path(ckpt_path: str | None) -> None:
    if not ckpt_path or ckpt_path in CKPT_KEYWORDS or not os.path.isdir(ckpt_path):
        return
    found = sorted(Path(ckpt_path).rglob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    hint = f", e.g. {found[-1]}" if found else " (it holds no .ckpt files)"
    raise CheckpointError(f"--ckpt_path {ckpt_path!r} is a folder: give a checkpoint file{hint}.")


# ---- a checkpoint that does not fit the command -------------------------------------------------------
ARCHITECTURE_KEYS = ("backbone", "head", "input_size")


def architecture(model_config: Any, explicit_only: bool = True) -> dict[str, Any]:
    """Backbone, head (its class) and input size named by a ``model`` config; with ``explicit_only``,
    values left at the class's default are left out (the command did not ask for them)."""
    if model_config is None:
        return {}
    init = model_config.get("init_args") or {}
    try:
        cls = _import(model_config.get("class_path"))
        defaults = {k: p.default for k, p in inspect.signature(cls).parameters.items()}
    except (ImportError, AttributeError, TypeError, ValueError):
        defaults = {}
    out = {}
    for key in ("backbone", "head"):
        value = init.get(key)
        if value is not None and not (explicit_only and value == defaults.get(key)):
            out[key] = _class_path(value)
    preprocessing = init.get("preprocessing") or init.get("data_config")  # data_config: its former name
    if preprocessing and preprocessing.get("input_size") is not None:
        out["input_size"] = int(preprocessing.get("input_size"))
    return out


def check_same_architecture(asked: dict[str, Any], checkpoint: dict[str, Any], ckpt_path: str) -> None:
    """Refuse a checkpoint whose backbone, head or input size differ from what the command asks for
    (LightningCLI would silently take the checkpoint's and, with ``--ckpt_path last``, overwrite its run)."""
    diffs = [f"{k} {checkpoint[k]!r} (the command asks for {asked[k]!r})"
             for k in ARCHITECTURE_KEYS if k in asked and k in checkpoint and asked[k] != checkpoint[k]]
    if diffs:
        raise CheckpointError(
            f"--ckpt_path {ckpt_path}: the checkpoint was trained with {'; '.join(diffs)}. Use the checkpoint's "
            "settings, or start a new run (another trainer.default_root_dir) for the new ones."
        )


def _import(class_path: str | None) -> Any:
    module, _, name = (class_path or "").rpartition(".")
    return getattr(importlib.import_module(module), name)


def _class_path(value: Any) -> Any:
    """A head given as a dotted name or ``{class_path, init_args}``: compared by its class."""
    if hasattr(value, "get") and value.get("class_path"):
        return value.get("class_path")
    return value


# ---- the version folder a run writes into ----------------------------------------------------------
def claim_version(logs_dir: str | os.PathLike) -> int:
    """Create ``version_N`` (the next free N) with ``mkdir``, which only one process can win: two runs
    started at once into one folder get two folders (Lightning's listing gives both the same)."""
    logs = Path(logs_dir)
    logs.mkdir(parents=True, exist_ok=True)
    taken = [int(m.group(1)) for p in logs.iterdir() if (m := re.fullmatch(r"version_(\d+)", p.name))]
    n = max(taken, default=-1) + 1
    while True:
        try:
            (logs / f"version_{n}").mkdir()
            return n
        except FileExistsError:
            n += 1


def is_global_rank_zero() -> bool:
    """Whether this process is rank 0 of a job launched with several processes (torchrun, SLURM)."""
    return all(os.environ.get(v, "0") == "0" for v in ("RANK", "SLURM_PROCID", "LOCAL_RANK"))


# ---- the last resort -------------------------------------------------------------------------------
def report_unexpected(e: BaseException) -> str:
    """Write ``e``'s traceback to a file; return the one line to print."""
    fd, path = tempfile.mkstemp(prefix=f"tlx-traceback-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        f.write("".join(traceback.format_exception(e)))
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return (f"tlx: error: {type(e).__name__}: {first} (an error tlx does not explain yet; the full traceback is "
            f"in {path}; set TLX_TRACEBACK=1 to see it here)")
