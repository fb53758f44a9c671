"""Finding labelled images in ``root/<class>/*`` folders, with clear errors and reports."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tlx.data.images import check_image, is_image_file
from tlx.data.shared_build import build_shared
from tlx.data.walk import os_reason, walk_files
from tlx.errors import DataError

log = logging.getLogger("tlx")

Sample = tuple[str, int]


@dataclass
class FolderScan:
    """What one ``<class>/*`` folder holds."""

    root: Path
    classes: list[str]
    samples: list[Sample]
    not_images: list[str] = field(default_factory=list)  # skipped by extension


def visible_files(folder: Path) -> list[Path]:
    """Files below ``folder``, sorted; hidden ones skipped, links followed (tlx/data/walk.py).
    Entries that cannot be used (dangling links, loops, unreadable sub-folders) are named in a warning."""
    walk = walk_files(folder)
    _warn_skipped(folder, walk.skipped + walk.unreadable)
    return walk.files


def _warn_skipped(folder: Path, skipped: list[tuple[str, str]]) -> None:
    if skipped:
        shown = "; ".join(f"{p} ({why})" for p, why in skipped[:3])
        log.warning("%s: skipped %d entr(ies) that are not usable files: %s", folder, len(skipped), shown)


def class_folders(root: Path, what: str) -> list[str]:
    if not root.exists():
        raise DataError(f"{what} folder {str(root)!r} does not exist: check the data root path.")
    if not root.is_dir():
        raise DataError(f"{what} path {str(root)!r} is not a folder.")
    try:
        entries = list(os.scandir(root))
    except OSError as e:
        raise DataError(f"{what} folder {str(root)!r} is unreadable ({os_reason(e)}): check its permissions.") from None
    classes, broken = [], []
    for e in entries:
        if e.name.startswith("."):
            continue
        try:
            if e.is_dir():
                classes.append(e.name)
        except OSError as err:  # a symlink loop at the top level
            broken.append(f"{e.name!r} ({os_reason(err)})")
    if broken:
        raise DataError(f"{what} folder {str(root)!r}: entr(ies) {', '.join(broken)} cannot be read: fix or remove them.")
    classes.sort()
    if not classes:
        raise DataError(
            f"{what} folder {str(root)!r} has no class folders: expected {root}/<class_name>/<image files>."
        )
    if len(classes) < 2:
        raise DataError(
            f"{what} folder {str(root)!r} holds one class folder ({classes[0]!r}): classification needs at "
            "least two classes (one folder per class)."
        )
    return classes


def scan_class_folders(root: str | Path, what: str = "data") -> FolderScan:
    """List ``root/<class>/**`` images; raise on a missing root, no classes or an empty class."""
    root = Path(root)
    classes = class_folders(root, what)
    samples: list[Sample] = []
    not_images: list[str] = []
    empty, unreadable, skipped = [], [], []
    for label, name in enumerate(classes):
        walk = walk_files(root / name)
        unreadable += walk.unreadable
        skipped += walk.skipped
        files = walk.files
        images = [str(p) for p in files if is_image_file(p)]
        not_images += [str(p) for p in files if not is_image_file(p)]
        if not images and not walk.unreadable:
            empty.append(name)
        samples += [(p, label) for p in images]
    if unreadable:
        shown = ", ".join(f"{p!r} ({why})" for p, why in unreadable[:3])
        raise DataError(f"{what} folder {str(root)!r}: {len(unreadable)} folder(s) unreadable: {shown}. "
                        "Fix their permissions or remove them.")
    _warn_skipped(root, skipped)
    if empty:
        raise DataError(
            f"{what} folder {str(root)!r}: class folder(s) {', '.join(repr(e) for e in empty)} hold no "
            "images (.jpg, .png, ...). Add images or remove the folder."
        )
    if not_images:
        log.warning(
            "%s: skipped %d file(s) that are not images by extension (e.g. %s)",
            root, len(not_images), ", ".join(not_images[:3]),
        )
    return FolderScan(root, classes, samples, not_images)


def check_same_classes(reference: FolderScan, other: FolderScan, what: str) -> None:
    if other.classes != reference.classes:
        only_ref = sorted(set(reference.classes) - set(other.classes))
        only_other = sorted(set(other.classes) - set(reference.classes))
        raise DataError(
            f"Class folders differ between {str(reference.root)!r} and {what} {str(other.root)!r}: "
            f"only in the first: {only_ref or 'none'}; only in the second: {only_other or 'none'}. "
            "Every split needs the same class folders."
        )


def drop_unreadable(samples: Sequence[Sample], what: str) -> list[Sample]:
    """Decode every file once, before training; skip (and name) those that fail."""
    # Under DDP each rank checks its share of the files (tlx/data/shared_build.py).
    reasons = build_shared(list(samples), lambda some: [check_image(path) for path, _ in some])
    bad = [(path, why) for (path, _), why in zip(samples, reasons) if why is not None]
    if bad:
        shown = "; ".join(f"{p} ({why})" for p, why in bad[:5])
        log.warning("%s: skipped %d unreadable image(s): %s", what, len(bad), shown)
        bad_paths = {p for p, _ in bad}
        samples = [s for s in samples if s[0] not in bad_paths]
    return list(samples)


def readable_paths(paths: Sequence[str], what: str) -> list[str]:
    """The files of ``paths`` that decode (the others skipped and named, as for training)."""
    kept = [p for p, _ in drop_unreadable([(p, 0) for p in paths], what)]
    if not kept:
        raise DataError(f"{what}: none of the {len(paths)} file(s) is a readable image (e.g. {paths[0]}).")
    return kept


def files_digest(samples: Sequence[tuple[str, Any]]) -> str:
    """sha256 of a file list: path, label, size and modification time of each file (a cache key:
    a changed, added or moved file changes it)."""
    h = hashlib.sha256()
    for path, label in samples:
        st = os.stat(path)
        h.update(f"{os.path.abspath(path)}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def stratified_split(samples: Sequence[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Split per class, seeded: the same files go to validation on every run and machine."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"val_split must be between 0 and 1 (exclusive), got {fraction}.")
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(s[1], []).append(s)
    train, val = [], []
    for label in sorted(by_class):
        items = by_class[label]
        order = rng.permutation(len(items))
        n_val = int(round(len(items) * fraction))
        n_val = min(max(n_val, 1), len(items) - 1) if len(items) > 1 else 0
        val += [items[i] for i in order[:n_val]]
        train += [items[i] for i in order[n_val:]]
    return sorted(train), sorted(val)
