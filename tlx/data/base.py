"""What every tlx image DataModule shares: loader options, augmentation, the image check, preprocessing."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from tlx.data.folders import Sample, drop_unreadable
from tlx.data.sampling import eval_sampler
from tlx.data.transforms import AutoAugment, eval_transform, train_transform
from tlx.errors import DataError
from tlx.options import check_options
from tlx.preprocessing import Preprocessing, as_preprocessing, fed_preprocessing


class ImageDataModule(LightningDataModule):
    """Base of :class:`~tlx.data.ImageFolderDataModule` and the domain-adaptation data module.

    Args:
        batch_size: training batch size; ``eval_batch_size`` defaults to it.
        num_workers: DataLoader worker processes (per loader).
        persistent_workers: keep the workers between epochs.
        pin_memory: page-locked batches (default: when CUDA is available).
        crop_scale: area range of RandomResizedCrop.
        hflip: probability of a horizontal flip.
        auto_augment: ``trivialaugment`` or ``randaugment`` on top of crop and flip.
        verify_images: decode every file once before training and skip those that fail.
        fast_decode: let JPEG decoding skip resolution the resize would discard anyway.
        preprocessing: override the model's preprocessing (keys of :class:`tlx.preprocessing.Preprocessing`);
            see :func:`tlx.preprocessing.resolve_preprocessing`.
    """

    unsaved_arguments: tuple[str, ...] = ()  # Python objects (a DataFrame) that a checkpoint cannot hold

    def __init__(
        self,
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
        # Not in hparams: Lightning refuses model and data hparams of one name that differ, and the
        # model's hparams record the preprocessing in force (the checkpoint's single source).
        self.save_hyperparameters(ignore=["preprocessing", *self.unsaved_arguments])
        check_options(self.hparams, "data")  # the subclass's options too (val_split, mixup_alpha, ...)
        # None until setup adopts the model's, unless data.preprocessing overrides it.
        self.preprocessing: Preprocessing | None = as_preprocessing(preprocessing, "data.preprocessing")

    def resolve_preprocessing(self) -> Preprocessing:
        """Fix the preprocessing for this run (call first in ``setup``)."""
        model = self.trainer.lightning_module if self.trainer is not None else None
        self.preprocessing = fed_preprocessing(model, self)
        return self.preprocessing

    @property
    def min_short_side(self) -> int | None:
        """How small JPEG decoding may shrink an image (``fast_decode``); None: full size."""
        return self.preprocessing.resize_size if self.hparams.fast_decode else None

    def train_transform(self):
        hp = self.hparams
        return train_transform(self.preprocessing, tuple(hp.crop_scale), hp.hflip, hp.auto_augment)

    def eval_transform(self):
        return eval_transform(self.preprocessing)

    def verified(self, samples: list[Sample], where: str, what: str) -> list[Sample]:
        """``samples`` less the files that do not decode (with ``verify_images``), reported as
        being in ``where``; none left is an error about ``what``."""
        if self.hparams.verify_images:
            samples = drop_unreadable(samples, where)
        if not samples:
            raise DataError(f"No readable images in {what}.")
        return samples

    def loader(self, dataset: Dataset, train: bool, evaluation: bool = False, source: dict[str, Any] | None = None,
               collate_fn: Any = None) -> DataLoader:
        """The one way tlx builds a loader. ``source``: the ``dataset``/``sampler`` arguments when the
        default (shuffled for training, unpadded DDP shards for evaluation) does not fit."""
        hp = self.hparams
        batch_size = hp.batch_size if train else (hp.eval_batch_size or hp.batch_size)
        if source is None:
            source = {"dataset": dataset, "shuffle": train}
            if evaluation:  # under DDP: unpadded shards, so that metrics count every image once
                source["sampler"] = eval_sampler(dataset, self.trainer)
        return DataLoader(
            **source,
            batch_size=batch_size,
            # A last batch of one image breaks BatchNorm in training; drop the remainder instead.
            drop_last=train and len(dataset) > batch_size,
            num_workers=hp.num_workers,
            persistent_workers=hp.persistent_workers and hp.num_workers > 0,
            pin_memory=torch.cuda.is_available() if hp.pin_memory is None else hp.pin_memory,
            collate_fn=collate_fn,
        )
