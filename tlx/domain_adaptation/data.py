"""Two domains: labelled source images for training, unlabelled target images to adapt to."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset

from tlx.backbones.base import DataConfig
from tlx.data.datasets import LabelledImages, UnlabelledImages, image_files
from tlx.data.folders import Sample, check_same_classes, class_folders, drop_unreadable, scan_class_folders, stratified_split
from tlx.data.options import check_options
from tlx.data.sampling import eval_sampler
from tlx.data.transforms import AutoAugment, eval_transform, train_transform
from tlx.errors import DataError

log = logging.getLogger("tlx")


class DomainAdaptationDataModule(LightningDataModule):
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
        batch_size: images per domain per training step (a step sees ``2 * batch_size``).
        eval_batch_size: defaults to ``batch_size``.
        num_workers: DataLoader worker processes per loader.
        crop_scale, hflip, auto_augment: the training augmentation, applied to both domains.
        verify_images: decode every file once before training and skip those that fail.
        fast_decode: let JPEG decoding skip resolution the resize would discard anyway.
        preprocessing: override the model's preprocessing (keys of :class:`tlx.backbones.DataConfig`).
    """

    def __init__(
        self,
        source_root: str | None = None,
        target_root: str | None = None,
        val_split: float = 0.1,
        split_seed: int = 42,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        persistent_workers: bool = True,
        pin_memory: bool | None = None,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        hflip: float = 0.5,
        auto_augment: AutoAugment = None,
        verify_images: bool = True,
        fast_decode: bool = True,
        preprocessing: dict | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        check_options(self.hparams, "data")
        check_options(preprocessing or {}, "data.preprocessing")
        self.data_config = DataConfig.from_dict(preprocessing) if preprocessing else None
        self._target: list[Sample] | None = None  # labels -1 when the target has none
        self._splits: dict[str, list[Sample]] | None = None  # source, target, val, test; set by _scan
        self._classes: list[str] | None = None
        self.target_labelled: bool | None = None
        self.predict_paths: list[str] = []

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
        if self.hparams.verify_images:
            samples = drop_unreadable(samples, f"{self.hparams[what + '_root']} ({what})")
        if not samples:
            raise DataError(f"No readable images in the {what} folder {self.hparams[what + '_root']}.")
        return samples

    def samples(self, split: str) -> list[Sample]:
        """``source`` (training), ``target`` (training, labels -1 if unknown), ``val``/``test``."""
        self._scan()
        return self._splits[split]

    # ---- Lightning hooks ---------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self.data_config is None:
            module = self.trainer.lightning_module if self.trainer is not None else None
            self.data_config = getattr(module, "data_config", None)
        if self.data_config is None:
            raise DataError("No preprocessing known: attach a model with a backbone, or set data.preprocessing.")
        self._scan()
        if stage == "predict":
            self.predict_paths = [p for p, _ in self._target]

    @property
    def _min_short_side(self) -> int | None:
        return self.data_config.resize_size if self.hparams.fast_decode else None

    def _loader(self, dataset: Dataset, train: bool, evaluation: bool = False) -> DataLoader:
        hp = self.hparams
        batch_size = hp.batch_size if train else (hp.eval_batch_size or hp.batch_size)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            # under DDP: unpadded shards, so that target metrics count every image once
            sampler=eval_sampler(dataset, self.trainer) if evaluation else None,
            drop_last=train and len(dataset) > batch_size,  # no BatchNorm batches of one
            num_workers=hp.num_workers,
            persistent_workers=hp.persistent_workers and hp.num_workers > 0,
            pin_memory=torch.cuda.is_available() if hp.pin_memory is None else hp.pin_memory,
        )

    def train_dataloader(self) -> CombinedLoader:
        hp = self.hparams
        transform = train_transform(self.data_config, tuple(hp.crop_scale), hp.hflip, hp.auto_augment)
        source = LabelledImages(self.samples("source"), transform, self._min_short_side)
        # The target goes in as (image, index): its labels cannot leak into training.
        target = UnlabelledImages([p for p, _ in self.samples("target")], transform, self._min_short_side)
        loaders = {"source": self._loader(source, True), "target": self._loader(target, True)}
        return CombinedLoader(loaders, mode="max_size_cycle")

    def _eval_loader(self, split: str) -> DataLoader:
        dataset = LabelledImages(self.samples(split), eval_transform(self.data_config), self._min_short_side)
        return self._loader(dataset, False, evaluation=True)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        dataset = UnlabelledImages(self.predict_paths, eval_transform(self.data_config), self._min_short_side)
        return self._loader(dataset, False)
