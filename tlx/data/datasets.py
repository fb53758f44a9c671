"""Map-style datasets over lists of files."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, default_collate

from tlx.data.folders import visible_files
from tlx.data.images import is_image_file, load_rgb
from tlx.errors import DataError


log = logging.getLogger("tlx")

MAX_SUBSTITUTES = 16  # so many unreadable files in a row means the data is gone, not a few files
_vanished: set[str] = set()  # per process (each DataLoader worker counts its own)


class LabelledImages(Dataset):
    """``(image, label)`` pairs from ``(path, label)`` samples.

    A file that was checked before training but cannot be read now (deleted or replaced while the
    run goes on: a data folder being synced) is skipped and counted: the next sample takes its
    place, with its own label, and a warning names the file.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable, min_short_side: int | None = None):
        self.samples = list(samples)
        self.transform = transform
        self.min_short_side = min_short_side

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        for step in range(min(MAX_SUBSTITUTES, len(self.samples))):
            path, label = self.samples[(index + step) % len(self.samples)]
            try:
                return self.transform(load_rgb(path, self.min_short_side)), label
            except OSError as e:  # FileNotFoundError, PIL's UnidentifiedImageError, truncated data
                _vanished.add(path)
                log.warning("%s cannot be read any more (%s: %s); skipped, the next image takes its place "
                            "(%d file(s) skipped so far in this process).", path, type(e).__name__, e, len(_vanished))
        raise DataError(f"{MAX_SUBSTITUTES} images in a row cannot be read any more (e.g. {path}): the data folder "
                        "changed while training; check it and resume with --ckpt_path last.")

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]


class UnlabelledImages(Dataset):
    """``(image, index)`` for prediction; ``paths[index]`` names the file."""

    def __init__(self, paths: Sequence[str], transform: Callable, min_short_side: int | None = None):
        self.paths = list(paths)
        self.transform = transform
        self.min_short_side = min_short_side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path = self.paths[index]
        try:
            return self.transform(load_rgb(path, self.min_short_side)), index
        except OSError as e:  # checked before predicting: it changed since
            raise DataError(f"{path} cannot be read any more ({type(e).__name__}: {e}): it changed while predicting; "
                            "run predict again.") from None


def image_files(folder: str | Path) -> list[str]:
    """Every image below ``folder`` (recursively), sorted; hidden files skipped as in training."""
    return [str(p) for p in visible_files(Path(folder)) if is_image_file(p)]


class MixingCollate:
    """Collate, then MixUp/CutMix the batch (torchvision's recommended place for them)."""

    def __init__(self, mix: Callable):
        self.mix = mix

    def __call__(self, batch: list[Any]) -> Any:
        return self.mix(*default_collate(batch))
