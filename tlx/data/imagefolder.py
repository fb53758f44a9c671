"""ImageFolder data for transfer learning: folders in, ready-to-train loaders out."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from tlx.data.base import ImageDataModule
from tlx.data.decoded_cache import CachedLabelledImages, DecodedImages
from tlx.data.datasets import LabelledImages, MixingCollate, UnlabelledImages, image_files
from tlx.data.file_list import read_file_list
from tlx.data.folders import (
    FolderScan,
    Sample,
    check_same_classes,
    class_folders,
    readable_paths,
    scan_class_folders,
    stratified_split,
)
from tlx.data.resumable import ResumableTrainData
from tlx.data.transforms import batch_mixing
from tlx.data.tta import TTA, tta_transform
from tlx.errors import DataError

log = logging.getLogger("tlx")


class ImageFolderDataModule(ResumableTrainData, ImageDataModule):
    """Images in class folders, in either of two layouts.

    * ``root/{train,val[,test]}/<class>/*``: the splits as given (no ``val`` folder: ``val_split``
      of ``train`` is held out; no ``test`` folder: testing uses ``val``).
    * ``root/<class>/*``: a seeded, stratified ``val_split`` of it is held out for validation.

    Preprocessing (size, resize, mean/std, interpolation) comes from the model unless
    ``preprocessing`` is set (:func:`tlx.preprocessing.resolve_preprocessing`). Files that are not images are skipped by extension, and files that
    do not decode are skipped before training starts; both are reported by name.

    Args:
        root: the dataset folder (may be omitted for ``predict`` with ``predict_dir``).
        val_split: fraction held out for validation when there is no ``val`` folder.
        split_seed: seed of that split (independent of the training seed).
        predict_dir: a folder of unlabelled images for ``predict`` (default: the test split).
        predict_files: images for ``predict``: a list of paths, or a text file with one per line
            (takes precedence over ``predict_dir``).
        tta: test-time augmentation for ``predict``: ``flip`` (2 views), ``crops`` (5: corners
            and centre), ``flip_crops`` (10); the model averages the views' probabilities.
        mixup_alpha: MixUp strength (0 = off); ``cutmix_alpha`` likewise.
        balanced_sampling: draw training images with probability inverse to their class size.
        cache_images: decode and resize every train/val/test image once and keep the uint8 pixels
            (shared by the workers; random crops and flips still apply every epoch).
            See :mod:`tlx.data.decoded_cache`.
        image_cache_dir: keep that cache as memory-mapped files here, reused by later runs.
        The loader, augmentation and preprocessing options are those of :class:`tlx.data.base.ImageDataModule`.
    """

    def __init__(
        self,
        root: str | None = None,
        val_split: float = 0.2,
        split_seed: int = 42,
        train_dir: str = "train",
        val_dir: str = "val",
        test_dir: str = "test",
        predict_dir: str | None = None,
        predict_files: list[str] | str | None = None,
        tta: TTA = None,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        balanced_sampling: bool = False,
        cache_images: bool = False,
        image_cache_dir: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.root = Path(root) if root else None
        self._features: dict[str, DataLoader] = {}  # split -> a loader of cached features (serve_features)
        self._scans: dict[str, FolderScan] | None = None
        self._splits: dict[str, list[Sample]] = {}
        self.predict_paths: list[str] = []
        self._decoded: dict[str, DecodedImages] = {}

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

    @property
    def num_classes(self) -> int | None:
        names = self.class_names
        return len(names) if names is not None else None

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

    # ---- Lightning hooks ---------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        self.resolve_preprocessing()
        if stage == "fit":
            self.samples("train"), self.samples("val")
        elif stage in ("validate", "test"):
            self.samples("val" if stage == "validate" else "test")
        elif stage == "predict":
            if self.hparams.predict_files:
                self.predict_paths = read_file_list(self.hparams.predict_files)
            elif self.hparams.predict_dir:
                folder = Path(self.hparams.predict_dir)
                if not folder.is_dir():
                    raise DataError(f"predict_dir {str(folder)!r} does not exist or is not a folder.")
                self.predict_paths = image_files(folder)
                if not self.predict_paths:
                    raise DataError(f"predict_dir {str(folder)!r} holds no images (.jpg, .png, ...).")
            else:
                self.predict_paths = [p for p, _ in self.samples("test")]
            if self.hparams.verify_images:  # a bad file is skipped and named, not a lost predict run
                self.predict_paths = readable_paths(self.predict_paths, "predict")

    def train_dataset(self) -> LabelledImages:
        return self._dataset("train", self.train_transform())

    def eval_dataset(self, split: str) -> LabelledImages:
        return self._dataset(split, self.eval_transform())

    def _dataset(self, split: str, transform) -> LabelledImages:
        if not self.hparams.cache_images:
            return LabelledImages(self.samples(split), transform, self.min_short_side)
        samples = self.samples(split)
        # One cache per list of files: without a test folder, test is the val list (decoded once).
        key = "val" if split == "test" and samples is self._splits.get("val") else split
        if key not in self._decoded:  # built here, in the main process, before workers fork
            cfg = self.preprocessing
            self._decoded[key] = DecodedImages(
                [p for p, _ in samples], max(cfg.resize_size, cfg.input_size), cfg.interpolation,
                self.min_short_side, self.hparams.num_workers, self.hparams.image_cache_dir,
            )
        return CachedLabelledImages(samples, transform, self._decoded[key])

    def _train_loader(self, dataset: LabelledImages) -> DataLoader:
        hp = self.hparams
        collate, weights = None, None
        if hp.balanced_sampling:
            counts = torch.bincount(torch.tensor(dataset.targets), minlength=len(self.class_names))
            weights = (1.0 / counts.clamp(min=1).double())[dataset.targets]
        if mix := batch_mixing(len(self.class_names), hp.mixup_alpha, hp.cutmix_alpha):
            collate = MixingCollate(mix)
        # seeded order and augmentations that a checkpoint can resume mid-epoch (resumable.py)
        return self.loader(dataset, True, source=self.resumable(dataset, hp.batch_size, weights), collate_fn=collate)

    # ---- cached features instead of images (tlx.speed.FeatureCache) ------------------------
    def serve_features(self, train: DataLoader, val: DataLoader) -> None:
        """Serve these loaders of precomputed features for fit's training and validation, until
        :meth:`serve_images`. Test and predict always read images."""
        self._features = {"train": train, "val": val}

    def serve_images(self) -> None:
        self._features = {}

    def train_dataloader(self) -> DataLoader:
        if "train" in self._features:
            return self._features["train"]
        return self._train_loader(self.train_dataset())

    def val_dataloader(self) -> DataLoader:
        if "val" in self._features:
            return self._features["val"]
        return self.loader(self.eval_dataset("val"), train=False, evaluation=True)

    def test_dataloader(self) -> DataLoader:
        return self.loader(self.eval_dataset("test"), train=False, evaluation=True)

    def predict_dataloader(self) -> DataLoader:
        tta = self.hparams.tta
        transform = tta_transform(self.preprocessing, tta) if tta else self.eval_transform()
        dataset = UnlabelledImages(self.predict_paths, transform, self.min_short_side)
        return self.loader(dataset, train=False)
