"""Low-data experiments: k labelled images per class for training, the rest for validation."""

from __future__ import annotations

import numpy as np

from tlx.data.folders import Sample
from tlx.data.imagefolder import ImageFolderDataModule
from tlx.errors import DataError


def k_per_class(samples: list[Sample], k: int, seed: int) -> tuple[list[Sample], list[Sample]]:
    """A seeded choice of ``k`` samples of every class, and the rest."""
    if k < 1:
        raise DataError(f"shots must be at least 1, got {k}.")
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[Sample]] = {}
    for s in sorted(samples):
        by_class.setdefault(s[1], []).append(s)
    chosen, rest = [], []
    for label, items in sorted(by_class.items()):
        if len(items) <= k:
            raise DataError(f"Class {label} has {len(items)} images: shots={k} leaves none to validate on.")
        order = rng.permutation(len(items))
        chosen += [items[i] for i in order[:k]]
        rest += [items[i] for i in order[k:]]
    return sorted(chosen), sorted(rest)


class FewShotImageFolder(ImageFolderDataModule):
    """:class:`ImageFolderDataModule` trained on ``shots`` images per class (seeded by
    ``split_seed``). With a ``val`` folder it validates on that; without, on all the other
    images (``val_split`` is then unused).

    Args:
        shots: labelled training images per class.
        **kwargs: as :class:`ImageFolderDataModule`.
    """

    def __init__(self, root: str | None = None, shots: int = 5, **kwargs):
        super().__init__(root, **kwargs)
        self.shots = shots

    def samples(self, split: str) -> list[Sample]:
        if split in ("train", "val") and "train" not in self._splits:
            scans = self._scan()
            train, rest = k_per_class(scans["train"].samples, self.shots, self.hparams.split_seed)
            self._splits["train"] = self._verified(train, "train")
            if "val" not in scans:
                self._splits["val"] = self._verified(rest, "val")
        return super().samples(split)
