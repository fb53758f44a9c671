"""Cutting a backbone in two: the halves compute the whole, share its parameters, and refuse a
forward that is not a chain."""

from __future__ import annotations

import pytest
import torch

from tlx.backbones import create_backbone, cut_points, split_backbone
from tlx.errors import BackboneError


@pytest.mark.parametrize("spec, cut", [("timm:test_efficientnet", "blocks.1"), ("timm:test_efficientnet", "blocks"),
                                       ("torchvision:mobilenet_v2", "features.7"), ("timm:resnet10t", "layer2")])
def test_top_of_bottom_is_the_whole_backbone(spec, cut):
    backbone = create_backbone(spec, weights=None).eval()
    bottom, top = split_backbone(backbone, cut, probe_size=64)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(top(bottom(x)), backbone(x))
    # the top shares the backbone's parameters (no copies), and holds none of the bottom's
    whole = {id(p) for p in backbone.parameters()}
    low, high = {id(p) for p in bottom.parameters()}, {id(p) for p in top.parameters()}
    assert high <= whole and low <= whole and not low & high and low | high == whole


def test_a_model_that_is_not_a_chain_is_refused():
    with pytest.raises(BackboneError, match="not a chain"):
        split_backbone(create_backbone("timm:test_vit", weights=None), "blocks.0")


def test_cut_points_are_in_forward_order_and_leave_something_to_train():
    names = cut_points(create_backbone("timm:test_efficientnet", weights=None).model)
    assert names == ["conv_stem", "bn1", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4", "blocks", "conv_head"]
