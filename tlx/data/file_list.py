"""Lists of image files to predict on: given inline, or one path per line in a text file."""

from __future__ import annotations

from pathlib import Path

from tlx.data.images import is_image_file
from tlx.errors import DataError


def read_file_list(spec: str | list[str]) -> list[str]:
    """``spec``: a list of image paths, or the path of a text file with one image path per line
    (blank lines and ``#`` comments skipped; relative paths are taken from the current folder,
    else from the list file's folder). Every entry must be an existing image file."""
    if isinstance(spec, str):
        list_file = Path(spec)
        if is_image_file(list_file):
            entries, base, where = [spec], None, "predict_files"
        else:
            if not list_file.is_file():
                raise DataError(f"predict_files {spec!r} is neither an image nor a text file of image paths.")
            try:
                lines = list_file.read_text().splitlines()
            except UnicodeDecodeError:
                raise DataError(f"predict_files {spec!r} is not a text file of image paths (it is binary: a zip "
                                "or an image with an unknown extension?); give one path per line.") from None
            entries = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
            base, where = list_file.parent, str(list_file)
    else:
        entries, base, where = [str(e) for e in spec], None, "predict_files"
    if not entries:
        raise DataError(f"{where} lists no image files.")
    paths = []
    for entry in entries:
        path = Path(entry)
        if not path.is_file() and base is not None and not path.is_absolute() and (base / path).is_file():
            path = base / path
        if not path.is_file():
            raise DataError(f"{where}: {entry!r} does not exist (or is not a file).")
        if not is_image_file(path):
            raise DataError(f"{where}: {entry!r} is not an image file (.jpg, .png, ...).")
        paths.append(str(path))
    return paths
