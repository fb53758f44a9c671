"""Walking a data folder without tripping over links, loops or unreadable folders.

The rule: symlinks are followed, to folders and to files, at every depth (a class folder may be a
link, and so may a sub-folder inside it); a link that points nowhere, a folder reached twice
through links (a loop), and a folder that cannot be read are skipped and reported by name, never
raised as a bare ``OSError``. Hidden entries (``.DS_Store``, macOS ``._x.jpg``) are left out.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Walk:
    """What one folder holds: its files, and the entries skipped with the reason for each."""

    files: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # folders: (path, why)


def os_reason(e: OSError) -> str:
    """``permission denied``, ``symlink loop``, ...: the short reason an OS error gives."""
    if e.errno == errno.ELOOP:
        return "symlink loop"
    return (e.strerror or type(e).__name__).lower()


def walk_files(folder: str | Path) -> Walk:
    """Every visible file below ``folder``, sorted, following symlinks (see the module docstring)."""
    out = Walk()
    seen: set[str] = set()

    def visit(d: Path) -> None:
        real = os.path.realpath(d)
        if real in seen:
            out.skipped.append((str(d), "symlink loop: a folder already visited"))
            return
        seen.add(real)
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            out.unreadable.append((str(d), os_reason(e)))
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            try:
                is_dir, is_file = entry.is_dir(), entry.is_file()  # both follow symlinks
            except OSError as e:
                out.skipped.append((str(path), os_reason(e)))
                continue
            if is_dir:
                visit(path)
            elif is_file:
                out.files.append(path)
            elif entry.is_symlink() and not path.exists():
                out.skipped.append((str(path), "dangling symlink"))
            else:  # a FIFO, socket or device: opening one could block forever
                out.skipped.append((str(path), "not a regular file"))

    visit(Path(folder))
    out.files.sort()
    return out
