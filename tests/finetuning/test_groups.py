"""Layer groups: every backbone parameter in exactly one group, bottom to top."""

import pytest

from tlx.backbones import create_backbone
from tlx.finetuning.groups import FinetuningError, layer_groups


def check_partition(backbone, groups):
    ids = [id(p) for g in groups for p in g.params]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in backbone.parameters()}


def test_timm_groups_use_group_matcher():
    backbone = create_backbone("timm:test_efficientnet", weights=None)
    groups = layer_groups(backbone)
    check_partition(backbone, groups)
    assert groups[0].name == "backbone.conv_stem+bn1"  # timm's stem group comes first
    assert groups[1].name.startswith("backbone.blocks.0")
    assert "conv_head" in groups[-1].name
    merged = layer_groups(backbone, num_groups=2)
    assert len(merged) == 2 and ".." in merged[0].name
    check_partition(backbone, merged)


def test_torchvision_resnet_children_with_norm_joined():
    backbone = create_backbone("torchvision:resnet18", weights=None)
    groups = layer_groups(backbone)
    assert [g.name for g in groups] == [f"backbone.{n}" for n in ("conv1+bn1", "layer1", "layer2", "layer3", "layer4")]
    check_partition(backbone, groups)


def test_torchvision_container_is_opened():
    backbone = create_backbone("torchvision:mobilenet_v2", weights=None)
    groups = layer_groups(backbone)
    assert len(groups) == 19 and groups[0].name == "backbone.features.0" and groups[-1].name == "backbone.features.18"
    check_partition(backbone, groups)


def test_bad_num_groups():
    with pytest.raises(FinetuningError, match="num_groups"):
        layer_groups(create_backbone("timm:test_efficientnet", weights=None), num_groups=0)
