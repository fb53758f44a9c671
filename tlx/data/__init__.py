"""Datasets and LightningDataModules."""

from tlx.data.base import ImageDataModule
from tlx.data.csv_table import CsvDataModule
from tlx.data.imagefolder import ImageFolderDataModule

__all__ = ["CsvDataModule", "ImageDataModule", "ImageFolderDataModule"]
