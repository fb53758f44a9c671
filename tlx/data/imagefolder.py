"""ImageFolder data for transfer learning: folders in, ready-to-train loaders out."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from tlx.backbones.base import DataConfig
from tlx.data.decoded_cache import CachedLabelledImages, DecodedImages
from tlx.data.datasets import LabelledImages, MixingCollate, UnlabelledImages, image_files
from tlx.data.file_list import read_file_list
from tlx.data.folders import (
    FolderScan,
    Sample,
    check_same_classes,
    class_folders,
    drop_unreadable,
    readable_paths,
    scan_class_folders,
    stratified_split,
)
from tlx.data.options import check_options
from tlx.data.resumable import ResumableTrainData
from tlx.data.sampling import eval_sampler
from tlx.data.transforms import AutoAugment, batch_mixing, eval_transform, train_transform
from tlx.data.tta import TTA, tta_transform
from tlx.errors import DataError

log = logging.getLogger("tlx")


class ImageFolderDataModule(ResumableTrainData, LightningDataModule):
    """Images in class folders, in either of two layouts.

    * ``root/{train,val[,test]}/<class>/*``: the splits as given (no ``val`` folder: ``val_split``
      of ``train`` is held out; no ``test`` folder: testing uses ``val``).
    * ``root/<class>/*``: a seeded, stratified ``val_split`` of it is held out for validation.

    Preprocessing (size, resize, mean/std, interpolation) comes from the model's backbone unless
    ``data_config`` is set. Files that are not images are skipped by extension, and files that
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
        batch_size: training batch size; ``eval_batch_size`` defaults to it.
        num_workers: DataLoader worker processes.
        crop_scale: area range of RandomResizedCrop.
        hflip: probability of a horizontal flip.
        auto_augment: ``trivialaugment`` or ``randaugment`` on top of crop and flip.
        mixup_alpha: MixUp strength (0 = off); ``cutmix_alpha`` likewise.
        balanced_sampling: draw training images with probability inverse to their class size.
        verify_images: decode every file once before training and skip those that fail.
        fast_decode: let JPEG decoding skip resolution the resize would discard anyway.
        preprocessing: override the model's preprocessing (keys of :class:`tlx.backbones.DataConfig`).
        cache_images: decode and resize every train/val/test image once and keep the uint8 pixels
            (shared by the workers; random crops and flips still apply every epoch).
            See :mod:`tlx.data.decoded_cache`.
        image_cache_dir: keep that cache as memory-mapped files here, reused by later runs.
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
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        persistent_workers: bool = True,
        pin_memory: bool | None = None,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        hflip: float = 0.5,
        auto_augment: AutoAugment = None,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        balanced_sampling: bool = False,
        verify_images: bool = True,
        fast_decode: bool = True,
        preprocessing: dict | None = None,
        cache_images: bool = False,
        image_cache_dir: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        check_options(self.hparams, "data")
        check_options(preprocessing or {}, "data.preprocessing")
        self.root = Path(root) if root else None
        self.data_config = DataConfig.from_dict(preprocessing) if preprocessing else None
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
        if not self.hparams.verify_images:
            return samples
        kept = drop_unreadable(samples, f"{self.root} ({split})")
        if not kept:
            raise DataError(f"No readable images in the {split} split of {self.root}.")
        return kept

    # ---- Lightning hooks ---------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self.data_config is None:
            module = self.trainer.lightning_module if self.trainer is not None else None
            self.data_config = getattr(module, "data_config", None)
        if self.data_config is None:
            raise DataError("No preprocessing known: attach a model with a backbone, or set data.preprocessing.")
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

    @property
    def _min_short_side(self) -> int | None:
        return self.data_config.resize_size if self.hparams.fast_decode else None

    def train_dataset(self) -> LabelledImages:
        hp = self.hparams
        transform = train_transform(self.data_config, tuple(hp.crop_scale), hp.hflip, hp.auto_augment)
        return self._dataset("train", transform)

    def eval_dataset(self, split: str) -> LabelledImages:
        return self._dataset(split, eval_transform(self.data_config))

    def _dataset(self, split: str, transform) -> LabelledImages:
        if not self.hparams.cache_images:
            return LabelledImages(self.samples(split), transform, self._min_short_side)
        samples = self.samples(split)
        # One cache per list of files: without a test folder, test is the val list (decoded once).
        key = "val" if split == "test" and samples is self._splits.get("val") else split
        if key not in self._decoded:  # built here, in the main process, before workers fork
            cfg = self.data_config
            self._decoded[key] = DecodedImages(
                [p for p, _ in samples], max(cfg.resize_size, cfg.input_size), cfg.interpolation,
                self._min_short_side, self.hparams.num_workers, self.hparams.image_cache_dir,
            )
        return CachedLabelledImages(samples, transform, self._decoded[key])

    def _loader(self, dataset: Dataset, train: bool, evaluation: bool = False) -> DataLoader:
        hp = self.hparams
        workers = hp.num_workers
        collate, weights, source = None, None, {"dataset": dataset}
        if train and hp.balanced_sampling:
            counts = torch.bincount(torch.tensor(dataset.targets), minlength=len(self.class_names))
            weights = (1.0 / counts.clamp(min=1).double())[dataset.targets]
        if train and (mix := batch_mixing(len(self.class_names), hp.mixup_alpha, hp.cutmix_alpha)):
            collate = MixingCollate(mix)
        if evaluation:  # under DDP: unpadded shards, so that metrics count every image once
            source["sampler"] = eval_sampler(dataset, self.trainer)
        batch_size = hp.batch_size if train else (hp.eval_batch_size or hp.batch_size)
        if train:  # seeded order and augmentations that a checkpoint can resume mid-epoch (resumable.py)
            source = self.resumable(dataset, batch_size, weights)
        return DataLoader(
            **source,  # dataset and sampler
            batch_size=batch_size,
            # A last batch of one image breaks BatchNorm in training; drop the remainder instead.
            drop_last=train and len(dataset) > batch_size,
            num_workers=workers,
            persistent_workers=hp.persistent_workers and workers > 0,
            pin_memory=torch.cuda.is_available() if hp.pin_memory is None else hp.pin_memory,
            collate_fn=collate,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset(), train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.eval_dataset("val"), train=False, evaluation=True)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.eval_dataset("test"), train=False, evaluation=True)

    def predict_dataloader(self) -> DataLoader:
        tta = self.hparams.tta
        transform = tta_transform(self.data_config, tta) if tta else eval_transform(self.data_config)
        dataset = UnlabelledImages(self.predict_paths, transform, self._min_short_side)
        return self._loader(dataset, train=False)
