"""Every backbone source: packaged Lite0, torchvision cache, timm, local weights file."""

from __future__ import annotations

import glob
import pickle
import urllib.error

import pytest
import timm
import torch
from PIL import Image

from tests.helpers import HYMENOPTERA, TORCH_CACHE
from tlx.backbones import create_backbone, list_backbones
from tlx.backbones.packaged import efficientnet_pytorch_to_timm, packaged_weights_file
from tlx.backbones.weights_file import read_state_dict
from tlx.data.transforms import eval_transform
from tlx.errors import BackboneError, WeightsUnavailableError
from tlx.preprocessing import Preprocessing

IMAGENET_ANT, IMAGENET_BEE = 310, 309


def test_packaged_lite0_renames_every_tensor_into_timm_naming():
    model = timm.create_model("tf_efficientnet_lite0")
    state = read_state_dict(packaged_weights_file("efficientnet_lite0"))
    assert len(state) == 296
    renamed = efficientnet_pytorch_to_timm(state, model)
    assert set(renamed) == set(model.state_dict())
    assert all(renamed[k].shape == v.shape for k, v in model.state_dict().items())


@pytest.mark.e2e
def test_packaged_lite0_is_a_real_imagenet_model():
    """With its ImageNet classifier, the packaged weights call hymenoptera's ants 'ant' and bees 'bee'."""
    model = timm.create_model("tf_efficientnet_lite0").eval()
    state = efficientnet_pytorch_to_timm(read_state_dict(packaged_weights_file("efficientnet_lite0")), model)
    model.load_state_dict(state)
    backbone = create_backbone("efficientnet_lite0").eval()
    transform = eval_transform(backbone.preprocessing)
    for cls, idx in (("ants", IMAGENET_ANT), ("bees", IMAGENET_BEE)):
        files = sorted(glob.glob(str(HYMENOPTERA / "val" / cls / "*.jpg")))[:12]
        x = torch.stack([transform(Image.open(f).convert("RGB")) for f in files])
        with torch.no_grad():
            top5 = model(x).topk(5).indices
            # The backbone (classifier removed) computes exactly the features the classifier sees.
            assert torch.allclose(backbone(x), model.forward_head(model.forward_features(x), pre_logits=True), atol=1e-5)
        assert (top5 == idx).any(dim=1).float().mean() >= 0.8


def test_packaged_lite0_preprocessing_follows_its_weights():
    cfg = create_backbone("efficientnet_lite0").preprocessing
    assert cfg == Preprocessing(input_size=224, resize_size=256, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3)
    assert create_backbone("tlx:efficientnet_lite0").num_features == 1280


def test_torchvision_weights_load_from_a_prefilled_torch_home_cache(torch_home_cache):
    backbone = create_backbone("torchvision:mobilenet_v2", weights="IMAGENET1K_V1")
    cached = torch.load(TORCH_CACHE / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth", weights_only=True)
    assert torch.equal(backbone.model.features[0][0].weight, cached["features.0.0.weight"])
    assert backbone.num_features == 1280
    assert backbone(torch.randn(2, 3, 64, 64)).shape == (2, 1280)
    cfg = backbone.preprocessing
    assert (cfg.input_size, cfg.resize_size, cfg.interpolation) == (224, 256, "bilinear")
    assert cfg.mean == pytest.approx((0.485, 0.456, 0.406))


def test_torchvision_offline_download_gives_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailableError) as err:
        create_backbone("torchvision:resnet18", weights="IMAGENET1K_V1")
    message = str(err.value)
    assert "ResNet18_Weights.IMAGENET1K_V1" in message
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert "weights_path" in message


def test_torchvision_unknown_weights_lists_the_real_ones():
    with pytest.raises(BackboneError, match=r"no weights 'IMAGENET1K_V3'.*IMAGENET1K_V1, IMAGENET1K_V2"):
        create_backbone("torchvision:mobilenet_v2", weights="IMAGENET1K_V3")


def test_timm_model_by_name_with_its_data_config():
    backbone = create_backbone("timm:test_resnet", weights=None)
    assert backbone(torch.randn(2, 3, 64, 64)).shape == (2, backbone.num_features)
    assert backbone.preprocessing.input_size == 160
    assert backbone.preprocessing.resize_size == int(160 / 0.95)


def test_timm_name_with_a_pretrained_tag(monkeypatch):
    backbone = create_backbone("timm:test_efficientnet.r160_in1k", weights=None)
    assert backbone.name == "timm:test_efficientnet.r160_in1k" and backbone.preprocessing.input_size == 160
    calls = []
    real_create = timm.create_model

    def fake_create(name, pretrained=False, **kwargs):  # no network: record what would be fetched
        calls.append((name, pretrained))
        return real_create("test_resnet", pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", fake_create)
    create_backbone("timm:convnext_tiny.fb_in22k")
    create_backbone("timm:convnext_tiny", weights="fb_in22k")
    assert calls == [("convnext_tiny.fb_in22k", True), ("convnext_tiny.fb_in22k", True)]
    with pytest.raises(BackboneError, match="names the pretrained tag 'fb_in22k' but weights is 'fb_in1k'"):
        create_backbone("timm:convnext_tiny.fb_in22k", weights="fb_in1k")
    # python -m tlx.backbones 'timm:convnext_tiny.*' lists the tags
    assert "timm:convnext_tiny.fb_in22k" in list_backbones("timm:convnext_tiny.*")
    assert "timm:convnext_tiny" in list_backbones("timm:convnext_tiny*")


def test_timm_offline_pretrained_gives_a_clear_error(monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("cannot find the requested files in the local cache")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(WeightsUnavailableError, match="weights_path.*HF_HUB_OFFLINE"):
        create_backbone("timm:resnet18")


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(BackboneError, match="Did you mean: .*mobilenet_v2"):
        create_backbone("torchvision:mobilenetv2")
    with pytest.raises(BackboneError, match="Unknown backbone source 'timmm'.*Did you mean: timm"):
        create_backbone("timmm:resnet18")
    assert "tlx:efficientnet_lite0" in list_backbones("tlx:*")


def test_local_weights_file_loads_whatever_its_prefix(tmp_path):
    source = timm.create_model("test_resnet", num_classes=10)
    path = tmp_path / "trained.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    backbone = create_backbone("timm:test_resnet", weights=None, weights_path=str(path))
    for key, value in backbone.model.state_dict().items():
        assert torch.equal(value, source.state_dict()[key])


def test_local_weights_file_for_the_packaged_architecture(tmp_path):
    path = tmp_path / "lite0.pth"
    torch.save(read_state_dict(packaged_weights_file("efficientnet_lite0")), path)
    from_file = create_backbone("efficientnet_lite0", weights_path=str(path))
    packaged = create_backbone("efficientnet_lite0")
    assert torch.equal(from_file.model.conv_stem.weight, packaged.model.conv_stem.weight)


def test_weights_file_of_another_architecture_is_refused_by_name(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(timm.create_model("test_resnet").state_dict(), path)
    with pytest.raises(BackboneError, match=r"resnet.pth' does not fit backbone 'timm:test_efficientnet'.*missing"):
        create_backbone("timm:test_efficientnet", weights=None, weights_path=str(path))


def test_weights_file_missing_or_carrying_pickled_code_is_refused(tmp_path):
    with pytest.raises(BackboneError, match="does not exist"):
        create_backbone("timm:test_resnet", weights=None, weights_path=str(tmp_path / "nope.pth"))

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"conv.weight": Payload()}, f)
    with pytest.raises(BackboneError, match="Refusing to load .*evil.pth"):
        create_backbone("timm:test_resnet", weights=None, weights_path=str(path))


def test_keeping_the_source_classifier_aside_draws_nothing_from_the_global_rng():
    # Seeded runs must not shift because the ImageNet classifier is kept for `rank`.
    torch.manual_seed(0)
    assert create_backbone("efficientnet_lite0").source_classifier is not None
    with_weights = torch.rand(1)
    torch.manual_seed(0)
    create_backbone("efficientnet_lite0", weights=None)
    assert torch.equal(torch.rand(1), with_weights)
