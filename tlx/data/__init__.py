"""Datasets and LightningDataModules."""

from tlx.data.base import ImageDataModule
from tlx.data.imagefolder import ImageFolderDataModule

__all__ = ["ImageDataModule", "ImageFolderDataModule"]
