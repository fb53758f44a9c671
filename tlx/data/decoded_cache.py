"""Decode and shrink every image once: uint8 pixels in one shared buffer, augmentation per epoch.

Large photos cost most of their loading time in decoding and shrinking, which gives the same
result every epoch. :class:`DecodedImages` does both once, resizing the short side to the
evaluation resize (at least the crop size), and keeps the pixels in one contiguous uint8 array:
built in the main process before DataLoader workers fork, so the workers share it instead of
copying it, or, with ``cache_dir``, a ``.npy`` file memory-mapped by every worker and reused by
later runs (keyed by the file list and the size). Under DDP the ranks decode a share each and
exchange them (:mod:`tlx.data.shared_build`): the cache is built once, not once per rank. Random
crops and flips still apply every epoch; the evaluation view is pixel-identical to decoding the
file (its resize becomes a no-op).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from tlx.data.datasets import LabelledImages
from tlx.data.folders import files_digest
from tlx.data.images import load_rgb
from tlx.checkpointing import atomic_write
from tlx.data.shared_build import all_ranks, barrier, build_shared, is_writer

log = logging.getLogger("tlx")


class _DecodeResize(Dataset):
    def __init__(self, paths: Sequence[str], short_side: int, interpolation: str, decode_side: int | None):
        self.paths, self.short_side, self.decode_side = list(paths), short_side, decode_side
        self.interpolation = InterpolationMode(interpolation)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        # The same operations as the evaluation transform's ToImage + Resize, so pixels match.
        img = TF.to_image(load_rgb(self.paths[i], self.decode_side))
        img = TF.resize(img, [self.short_side], interpolation=self.interpolation, antialias=True)
        return img.permute(1, 2, 0).contiguous().numpy()  # HWC


def _identity(x):
    return x


def _key(paths: Sequence[str], short_side: int, interpolation: str, decode_side: int | None) -> str:
    blob = json.dumps([short_side, interpolation, decode_side, files_digest([(p, None) for p in paths])])
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class DecodedImages:
    """``images[i]``: the i-th file decoded, short side resized to ``short_side``, as CHW uint8."""

    def __init__(
        self,
        paths: Sequence[str],
        short_side: int,
        interpolation: str = "bilinear",
        decode_side: int | None = None,
        num_workers: int = 0,
        cache_dir: str | Path | None = None,
    ):
        self.status = "computed"
        self.decoded_here = 0  # files this process decoded (its share under DDP)
        key = _key(paths, short_side, interpolation, decode_side)
        files = (Path(cache_dir) / f"images-{key}.npy", Path(cache_dir) / f"images-{key}.index.npy") if cache_dir else None
        if all_ranks(bool(files) and files[0].is_file() and files[1].is_file()):
            self.pixels, self.index = np.load(files[0], mmap_mode="r"), np.load(files[1])
            self.status = "disk"
            return
        start = time.perf_counter()

        def decode(some_paths: Sequence[str]) -> list[np.ndarray]:
            loader = DataLoader(
                _DecodeResize(some_paths, short_side, interpolation, decode_side),
                batch_size=None, num_workers=num_workers, collate_fn=_identity,
            )
            self.decoded_here += len(some_paths)
            return list(loader)

        arrays = build_shared(list(paths), decode)  # under DDP each rank decodes its share
        # index rows: offset, height, width
        sizes = np.array([a.size for a in arrays], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]) if len(arrays) else np.zeros(0, np.int64)
        self.index = np.stack([offsets, [a.shape[0] for a in arrays], [a.shape[1] for a in arrays]], axis=1)
        self.pixels = np.empty(int(sizes.sum()), dtype=np.uint8)
        for a, off in zip(arrays, offsets):
            self.pixels[off : off + a.size] = a.reshape(-1)
        log.info("Decoded %d images once (%.0f MB, %.1f s).", len(arrays), self.pixels.nbytes / 2**20,
                 time.perf_counter() - start)
        if files:
            if is_writer():
                for file, array in zip(files, (self.pixels, self.index)):
                    atomic_write(file, lambda f, a=array: np.save(f, a))  # a killed run leaves no half-written cache
            barrier()
            # Workers (and, under DDP, all ranks of a node) then map one file instead of each holding a copy.
            if all_ranks(files[0].is_file()):
                self.pixels = np.load(files[0], mmap_mode="r")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> torch.Tensor:
        off, h, w = (int(v) for v in self.index[i])
        hwc = np.asarray(self.pixels[off : off + h * w * 3]).reshape(h, w, 3)
        return torch.from_numpy(np.array(hwc)).permute(2, 0, 1)  # a copy: the buffer stays read-only


class CachedLabelledImages(LabelledImages):
    """:class:`LabelledImages` whose pixels come from a :class:`DecodedImages` cache."""

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable, images: DecodedImages):
        super().__init__(samples, transform)
        self.images = images

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[index]), self.samples[index][1]
