"""ImageFolder data for transfer learning: folders in, ready-to-train loaders out."""

from __future__ import annotations

import logging
from pathlib import Path

from tlx.data.folders import FolderScan, Sample, check_same_classes, class_folders, scan_class_folders, stratified_split
from tlx.data.labelled import LabelledImageDataModule
from tlx.errors import DataError

log = logging.getLogger("tlx")


class ImageFolderDataModule(LabelledImageDataModule):
    """Images in class folders, in either of two layouts.

    * ``root/{train,val[,test]}/<class>/*``: the splits as given (no ``val`` folder: ``val_split``
      of ``train`` is held out; no ``test`` folder: testing uses ``val``).
    * ``root/<class>/*``: a seeded, stratified ``val_split`` of it is held out for validation.

    Preprocessing (size, resize, mean/std, interpolation) comes from the model unless
    ``preprocessing`` is set (:func:`tlx.preprocessing.resolve_preprocessing`). Files that are not images are skipped by extension, and files that
    do not decode are skipped before training starts; both are reported by name.
    The predict, MixUp/CutMix, sampling and cache options are those of
    :class:`tlx.data.labelled.LabelledImageDataModule`; the loader, augmentation and preprocessing
    options those of :class:`tlx.data.base.ImageDataModule`.

    Args:
        root: the dataset folder (may be omitted for ``predict`` with ``predict_dir``).
        val_split: fraction held out for validation when there is no ``val`` folder.
        split_seed: seed of that split (independent of the training seed).
    """

    def __init__(
        self,
        root: str | None = None,
        val_split: float = 0.2,
        split_seed: int = 42,
        train_dir: str = "train",
        val_dir: str = "val",
        test_dir: str = "test",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.root = Path(root) if root else None
        self._scans: dict[str, FolderScan] | None = None

    # ---- what is on disk -------------------------------------------------------------------
    @property
    def split_layout(self) -> bool:
        return self.root is not None and (self.root / self.hparams.train_dir).is_dir()

    @property
    def class_names(self) -> list[str] | None:
        """Class folder names, sorted (label i is ``class_names[i]``); ``None`` without a root."""
        if self.root is None:
            return None
        if self._scans is not None:
            return self._scans["train"].classes
        top = self.root / self.hparams.train_dir if self.split_layout else self.root
        return class_folders(top, "train" if self.split_layout else "data")

    def _scan(self) -> dict[str, FolderScan]:
        if self._scans is None:
            if self.root is None:
                raise DataError("data.root is not set: point it at a folder of class folders.")
            hp = self.hparams
            if self.split_layout:
                scans = {"train": scan_class_folders(self.root / hp.train_dir, "train")}
                for split, sub in (("val", hp.val_dir), ("test", hp.test_dir)):
                    if (self.root / sub).is_dir():
                        scans[split] = scan_class_folders(self.root / sub, split)
                        check_same_classes(scans["train"], scans[split], split)
            else:
                scans = {"train": scan_class_folders(self.root, "data")}
            self._scans = scans
        return self._scans

    def samples(self, split: str) -> list[Sample]:
        """The ``(path, label)`` list of ``train``, ``val`` or ``test``, after all checks."""
        if split not in self._splits:
            scans = self._scan()
            if "val" not in scans and split in ("train", "val"):
                train, val = stratified_split(scans["train"].samples, self.hparams.val_split, self.hparams.split_seed)
                self._splits["train"], self._splits["val"] = self._verified(train, "train"), self._verified(val, "val")
            elif split == "test" and "test" not in scans:
                log.info("No %r folder under %s: testing on the validation split.", self.hparams.test_dir, self.root)
                self._splits["test"] = self.samples("val")
            else:
                self._splits[split] = self._verified(scans[split].samples, split)
        return self._splits[split]

    def _verified(self, samples: list[Sample], split: str) -> list[Sample]:
        return self.verified(samples, f"{self.root} ({split})", f"the {split} split of {self.root}")
