"""Classifier heads: ``head(in_features, num_classes)``, chosen in YAML with class_path/init_args.

The model calls a head factory with the backbone's feature width and the dataset's class
count, so a config names only what is the user's choice (dropout, hidden sizes, ...).
"""

from collections.abc import Callable

from torch import nn

from tlx.heads.cosine import CosineHead
from tlx.heads.linear import LinearHead
from tlx.heads.mlp import MLPHead

HeadFactory = Callable[[int, int], nn.Module]

__all__ = ["CosineHead", "HeadFactory", "LinearHead", "MLPHead"]
