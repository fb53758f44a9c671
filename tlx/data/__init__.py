"""Datasets and LightningDataModules."""

from tlx.data.imagefolder import ImageFolderDataModule

__all__ = ["ImageFolderDataModule"]
