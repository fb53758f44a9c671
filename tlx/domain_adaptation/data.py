"""Two domains: labelled source images for training, unlabelled target images to adapt to."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader

from tlx.data.base import ImageDataModule
from tlx.data.datasets import LabelledImages, UnlabelledImages, image_files
from tlx.data.folders import Sample, check_same_classes, class_folders, scan_class_folders, stratified_split
from tlx.errors import DataError

log = logging.getLogger("tlx")


class DomainAdaptationDataModule(ImageDataModule):
    """A labelled source ``source_root/<class>/*`` and a target ``target_root``.

    Every training step draws a source batch (images, labels) and a target batch (images
    only) together; the epoch runs over the larger domain while the smaller one cycles.
    When the target has the source's class folders, its labels serve only for validation and
    testing (the standard unsupervised domain-adaptation protocol); when it is a plain folder of
    images, validation and testing use a held-out ``val_split`` of the source instead.

    Args:
        source_root: labelled source images, ``<class>/*`` folders.
        target_root: target images: ``<class>/*`` folders (labels used for evaluation only) or a
            folder of unlabelled images.
        val_split: fraction of the source held out for validation when the target has no labels.
        split_seed: seed of that split.
        The loader, augmentation and preprocessing options are those of
        :class:`tlx.data.base.ImageDataModule`; ``batch_size`` counts images per domain per
        training step (a step sees ``2 * batch_size``), and the augmentation applies to both domains.
    """

    def __init__(
        self,
        source_root: str | None = None,
        target_root: str | None = None,
        val_split: float = 0.1,
        split_seed: int = 42,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._target: list[Sample] | None = None  # labels -1 when the target has none
        self._splits: dict[str, list[Sample]] | None = None  # source, target, val, test; set by _scan
        self._classes: list[str] | None = None
        self.target_labelled: bool | None = None
        self.predict_paths: list[str] = []
        self._features: dict[str, Any] = {}  # loaders of cached features (tlx.speed.FeatureCache)

    #: The splits a training step draws from (tlx.speed.FeatureCache caches each).
    train_splits = ("source", "target")

    # ---- what is on disk -------------------------------------------------------------------
    def _root(self, key: str) -> Path:
        value = self.hparams[key]
        if not value:
            raise DataError(f"data.{key} is not set: point it at a folder of images.")
        return Path(value)

    @property
    def class_names(self) -> list[str] | None:
        """The source's class folders, sorted (label i is ``class_names[i]``)."""
        if self._classes is None and self.hparams.source_root:
            # Folder names only: no recursive listing of every file (and no repeat of its warnings).
            self._classes = class_folders(self._root("source_root"), "source")
        return self._classes

    def _scan(self) -> None:
        if self._splits is not None:
            return
        source = scan_class_folders(self._root("source_root"), "source")
        self._classes = source.classes
        target_root = self._root("target_root")
        if not target_root.is_dir():
            raise DataError(f"target folder {str(target_root)!r} does not exist: check data.target_root.")
        if any(p.is_dir() for p in target_root.iterdir() if not p.name.startswith(".")):
            target = scan_class_folders(target_root, "target")
            check_same_classes(source, target, "target")
            self.target_labelled, target_samples = True, target.samples
        else:
            paths = image_files(target_root)
            if not paths:
                raise DataError(f"target folder {str(target_root)!r} holds no images (.jpg, .png, ...).")
            self.target_labelled, target_samples = False, [(p, -1) for p in paths]
            log.warning("Target %s has no class folders: validating on %.0f%% of the source instead "
                        "(target accuracy cannot be measured).", target_root, 100 * self.hparams.val_split)
        source_samples = self._verified(source.samples, "source")
        self._target = self._verified(target_samples, "target")
        if self.target_labelled:
            train, val = source_samples, self._target
        else:  # split once: the same held-out source images on every call
            train, val = stratified_split(source_samples, self.hparams.val_split, self.hparams.split_seed)
        self._splits = {"source": train, "target": self._target, "val": val, "test": val}

    def _verified(self, samples: list[Sample], what: str) -> list[Sample]:
        root = self.hparams[what + "_root"]
        return self.verified(samples, f"{root} ({what})", f"the {what} folder {root}")

    def samples(self, split: str) -> list[Sample]:
        """``source`` (training), ``target`` (training, labels -1 if unknown), ``val``/``test``."""
        self._scan()
        return self._splits[split]

    # ---- Lightning hooks ---------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        self.resolve_preprocessing()
        self._scan()
        if stage == "predict":
            self.predict_paths = [p for p, _ in self._target]

    def items(self, split: str) -> list[Sample]:
        """The (path, label) pairs the datasets of ``split`` yield: ``target`` pairs each image with
        its index, so that the target's labels cannot leak into training; a feature cache keyed by
        them then never hands those indices to the validation of the same files."""
        samples = self.samples(split)
        return [(p, i) for i, (p, _) in enumerate(samples)] if split == "target" else samples

    def _dataset(self, split: str, transform) -> LabelledImages:
        return LabelledImages(self.items(split), transform, self.min_short_side)

    def train_dataset(self, split: str) -> LabelledImages:
        """``source`` (image, label) or ``target`` (image, index) items, augmented."""
        return self._dataset(split, self.train_transform())

    def eval_dataset(self, split: str) -> LabelledImages:
        """Items of ``split`` (as :meth:`train_dataset` for the training splits) in the evaluation view."""
        return self._dataset(split, self.eval_transform())

    # ---- cached features instead of images (tlx.speed.FeatureCache) ------------------------
    def serve_features(self, train: dict[str, DataLoader], val: DataLoader) -> None:
        """Serve these loaders of precomputed features (``source`` and ``target`` for training) for
        fit, until :meth:`serve_images`. Test and predict always read images."""
        self._features = {"train": train, "val": val}

    def serve_images(self) -> None:
        self._features = {}

    def train_dataloader(self) -> CombinedLoader:
        if "train" in self._features:
            return CombinedLoader(self._features["train"], mode="max_size_cycle")
        loaders = {split: self.loader(self.train_dataset(split), True) for split in self.train_splits}
        return CombinedLoader(loaders, mode="max_size_cycle")

    def _eval_loader(self, split: str) -> DataLoader:
        return self.loader(self.eval_dataset(split), False, evaluation=True)

    def val_dataloader(self) -> DataLoader:
        if "val" in self._features:
            return self._features["val"]
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        dataset = UnlabelledImages(self.predict_paths, self.eval_transform(), self.min_short_side)
        return self.loader(dataset, False)
