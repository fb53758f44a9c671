"""Map-style datasets over lists of files."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, default_collate

from tlx.data.folders import visible_files
from tlx.data.images import is_image_file, load_rgb


class LabelledImages(Dataset):
    """``(image, label)`` pairs from ``(path, label)`` samples."""

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable, min_short_side: int | None = None):
        self.samples = list(samples)
        self.transform = transform
        self.min_short_side = min_short_side

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return self.transform(load_rgb(path, self.min_short_side)), label

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
        return self.transform(load_rgb(self.paths[index], self.min_short_side)), index


def image_files(folder: str | Path) -> list[str]:
    """Every image below ``folder`` (recursively), sorted; hidden files skipped as in training."""
    return [str(p) for p in visible_files(Path(folder)) if is_image_file(p)]


class MixingCollate:
    """Collate, then MixUp/CutMix the batch (torchvision's recommended place for them)."""

    def __init__(self, mix: Callable):
        self.mix = mix

    def __call__(self, batch: list[Any]) -> Any:
        return self.mix(*default_collate(batch))
