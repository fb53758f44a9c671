"""The images int8 calibration sees: a seeded, class-balanced draw from the training split, fed to
onnxruntime's calibrator in small batches.

Balanced because activation ranges are taken over the calibration set: a class missing from it
can have activations outside the calibrated ranges, which clip (and such a class loses the most).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import numpy as np
import torch
from onnxruntime.quantization import CalibrationDataReader

from tlx.data.folders import Sample
from tlx.data.images import load_rgb
from tlx.errors import TLXError


def check_calibration_size(n: int, num_classes: int) -> None:
    if n < num_classes:
        raise TLXError(f"--calibration_images {n} is smaller than the number of classes ({num_classes}): "
                       f"int8 calibration takes at least one image per class; give --calibration_images >= {num_classes}.")


def balanced_calibration_set(samples: Sequence[Sample], n: int, num_classes: int, seed: int = 0) -> list[Sample]:
    """``n`` samples, round-robin over the classes (each class's images in a seeded order), so
    every class gets ``n // num_classes`` images or all it has."""
    check_calibration_size(n, num_classes)
    by_class: dict[int, list[Sample]] = {}
    for sample in sorted(samples):
        by_class.setdefault(sample[1], []).append(sample)
    rng = random.Random(seed)
    queues = []
    for label in sorted(by_class):
        rng.shuffle(by_class[label])
        queues.append(by_class[label])
    chosen: list[Sample] = []
    for i in range(max(map(len, queues), default=0)):
        chosen.extend(q[i] for q in queues if i < len(q))
        if len(chosen) >= n:
            break
    return chosen[:n]


class ImageCalibrationReader(CalibrationDataReader):
    """Feeds ``{input_name: (B, 3, S, S) float32}`` batches of preprocessed images; ``rewind``
    restarts (onnxruntime's calibrators may read the data more than once)."""

    def __init__(self, paths: Sequence[str], transform: Callable, input_name: str, batch_size: int = 16):
        self.paths, self.transform, self.input_name, self.batch_size = list(paths), transform, input_name, batch_size
        self._next, self._end = 0, len(self.paths)

    def __len__(self) -> int:
        return -(-len(self.paths) // self.batch_size)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= self._end:
            return None
        batch = self.paths[self._next:self._next + self.batch_size]
        self._next += len(batch)
        return {self.input_name: torch.stack([self.transform(load_rgb(p)) for p in batch]).numpy()}

    def rewind(self) -> None:
        self._next, self._end = 0, len(self.paths)  # a range set for strided calibration ends with it

    def set_range(self, start_index: int, end_index: int) -> None:
        """Read batches ``[start_index, end_index)`` only: onnxruntime's strided calibration
        (``CalibStridedMinMax``) collects a few batches at a time to bound its memory."""
        self._next, self._end = start_index * self.batch_size, min(end_index * self.batch_size, len(self.paths))
