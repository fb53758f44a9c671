"""What every labelled-image DataModule shares, whatever lists its files (class folders, a CSV):
datasets and loaders over ``(path, label)`` samples, the predict inputs, MixUp/CutMix, balanced
sampling, the decoded-image cache and cached features.

A subclass says where the samples come from: :attr:`class_names`, :meth:`samples` (``train``,
``val``, ``test``, after its checks) and, for multi-label data, :attr:`multilabel` (labels are then
0/1 vectors over ``class_names``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import DataLoader

from tlx.data.base import ImageDataModule
from tlx.data.datasets import LabelledImages, MixingCollate, UnlabelledImages, image_files
from tlx.data.decoded_cache import CachedLabelledImages, DecodedImages
from tlx.data.file_list import read_file_list
from tlx.data.folders import Sample, readable_paths
from tlx.data.resumable import ResumableTrainData
from tlx.data.transforms import batch_mixing
from tlx.data.tta import TTA, tta_transform
from tlx.errors import DataError

Task = Literal["multiclass", "multilabel"]


class LabelledImageDataModule(ResumableTrainData, ImageDataModule):
    """Base of :class:`~tlx.data.ImageFolderDataModule` and :class:`~tlx.data.CsvDataModule`.
    The loader, augmentation and preprocessing options are those of :class:`tlx.data.base.ImageDataModule`.

    Args:
        predict_dir: a folder of unlabelled images for ``predict`` (default: the test split).
        predict_files: images for ``predict``: a list of paths, or a text file with one per line
            (takes precedence over ``predict_dir``).
        tta: test-time augmentation for ``predict``: ``flip`` (2 views), ``crops`` (5: corners
            and centre), ``flip_crops`` (10); the model averages the views' probabilities.
        mixup_alpha: MixUp strength (0 = off); ``cutmix_alpha`` likewise (single-label data only).
        balanced_sampling: draw training images with probability inverse to their class size
            (single-label data only).
        cache_images: decode and resize every train/val/test image once and keep the uint8 pixels
            (shared by the workers; random crops and flips still apply every epoch).
            See :mod:`tlx.data.decoded_cache`.
        image_cache_dir: keep that cache as memory-mapped files here, reused by later runs.
    """

    multilabel = False  # a subclass whose labels are 0/1 vectors says so

    def __init__(
        self,
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
        self._features: dict[str, DataLoader] = {}  # split -> a loader of cached features (serve_features)
        self._splits: dict[str, list[Sample]] = {}
        self.predict_paths: list[str] = []
        self._decoded: dict[str, DecodedImages] = {}

    # ---- what the subclass provides ------------------------------------------------------------
    @property
    def class_names(self) -> list[str] | None:
        """The classes, sorted (label i is ``class_names[i]``); ``None`` when no data is given."""
        raise NotImplementedError

    def samples(self, split: str) -> list[Sample]:
        """The ``(path, label)`` list of ``train``, ``val`` or ``test``, after all checks."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int | None:
        names = self.class_names
        return len(names) if names is not None else None

    @property
    def task(self) -> Task | None:
        """``multilabel`` (sigmoid outputs, any number of labels per image) or ``multiclass``;
        ``None`` without labelled data (predict-only): the model then keeps its checkpoint's."""
        if self.class_names is None:
            return None
        return "multilabel" if self.multilabel else "multiclass"

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

    def items(self, split: str) -> list[Sample]:
        """The (path, label) pairs the datasets of ``split`` yield: its samples (what a feature
        cache keys the split's activations by)."""
        return self.samples(split)

    def _dataset(self, split: str, transform) -> LabelledImages:
        if not self.hparams.cache_images:
            return LabelledImages(self.items(split), transform, self.min_short_side)
        samples = self.items(split)
        # One cache per list of files: without a test split, test is the val list (decoded once).
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
        if self.multilabel and (hp.balanced_sampling or hp.mixup_alpha or hp.cutmix_alpha):
            raise DataError("data.balanced_sampling, mixup_alpha and cutmix_alpha work on single-label data only: "
                            "turn them off for multi-label data.")
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
