"""FeatureCache with a cut: a frozen bottom's activations cached, the top stages + head trained on them."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import seed_everything

from tests.conftest import TINY_MODEL
from tests.helpers import tiny_trainer
from tlx.backbones import create_backbone, cut_points, split_backbone
from tlx.data import ImageFolderDataModule
from tlx.errors import BackboneError, TLXError
from tlx.models import ImageClassifier
from tlx.speed import FeatureCache

CUT = "blocks.2"  # of timm:test_efficientnet (blocks.0 ... blocks.4)


def _fit(root, tmp_path, cache, epochs=2, ckpt_path=None, **trainer_kwargs):
    seed_everything(0)
    model = ImageClassifier(**TINY_MODEL)
    dm = ImageFolderDataModule(root=str(root), batch_size=4, eval_batch_size=64, num_workers=0)
    trainer = tiny_trainer(tmp_path, max_epochs=epochs, callbacks=[cache], **trainer_kwargs)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return trainer, model, dm


def _val_activations(cache):
    """The val split's cached activations (8 images, one eval view each)."""
    (activations, _), = [v for v in cache._memory.values() if v[0].ndim == 4 and len(v[0]) == 8]
    return activations


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


def test_a_cut_that_does_not_exist_names_the_valid_ones(tiny_folder, tmp_path):
    with pytest.raises(BackboneError, match=r"'blocks\.9' is not a cut point .*blocks\.0, blocks\.1, .*blocks\.4"):
        _fit(tiny_folder, tmp_path, FeatureCache(cut="blocks.9"))
    assert "conv_head" in cut_points(create_backbone("timm:test_efficientnet", weights=None).model)


def test_a_model_that_is_not_a_chain_is_refused():
    with pytest.raises(BackboneError, match="not a chain"):
        split_backbone(create_backbone("timm:test_vit", weights=None), "blocks.0")


def test_cached_bottom_equals_the_live_bottom_bit_exact(tiny_folder, tmp_path):
    cache = FeatureCache(cut=CUT, extract_batch_size=64)
    _, model, dm = _fit(tiny_folder, tmp_path, cache, epochs=1)
    bottom = cache.split[0].eval()
    x, _ = next(iter(dm.val_dataloader()))  # the same eval view, in one batch of 8 as extracted
    with torch.no_grad():
        live = bottom(x)
    assert live.shape[1:] == (32, 4, 4)
    assert torch.equal(_val_activations(cache), live)


def test_top_trains_and_bottom_stays_bit_identical(tiny_folder, tmp_path):
    cache = FeatureCache(cut=CUT, augmented_views=2)
    seed_everything(0)
    before = ImageClassifier(**TINY_MODEL).backbone.state_dict()
    _, model, _ = _fit(tiny_folder, tmp_path, cache)
    after = model.backbone.state_dict()
    bottom = [k for k in after if k.startswith(("model.conv_stem", "model.bn1", "model.blocks.0", "model.blocks.1",
                                                "model.blocks.2"))]
    assert bottom and all(torch.equal(before[k], after[k]) for k in bottom)
    top = [k for k in after if k not in bottom and after[k].is_floating_point()]
    changed = [k for k in top if not torch.equal(before[k], after[k])]
    assert any(k.startswith("model.blocks.3") for k in changed) and any(k.startswith("model.conv_head") for k in changed)
    assert all(not p.requires_grad for p in cache.split[0].parameters())


def test_checkpoint_trained_on_the_cache_predicts_on_images_as_the_live_model(tiny_folder, tmp_path):
    cache = FeatureCache(cut=CUT, augmented_views=1)
    trainer, model, dm = _fit(tiny_folder, tmp_path, cache, enable_checkpointing=True)
    ckpt = trainer.checkpoint_callback.last_model_path or trainer.checkpoint_callback.best_model_path
    model.eval()
    with torch.no_grad():  # the path training took: the top on cached activations
        on_cache = model.head(cache.split[1](_val_activations(cache)))
    restored = ImageClassifier.load_from_checkpoint(ckpt).eval()
    assert restored.input_kind == "images" and model.input_kind == "images"
    x, _ = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        on_images = restored(x)
    assert torch.allclose(on_images, on_cache, atol=1e-5)
    metrics = tiny_trainer(tmp_path).validate(restored, datamodule=dm, verbose=False)[0]
    assert metrics["val/acc"] == pytest.approx(float(trainer.callback_metrics["val/acc"]), abs=1e-6)


def test_a_resumed_run_reuses_the_cache(tiny_folder, tmp_path):
    cache_dir = tmp_path / "activations"
    first = FeatureCache(cut=CUT, augmented_views=1, cache_dir=str(cache_dir))
    trainer, _, _ = _fit(tiny_folder, tmp_path, first, epochs=1, enable_checkpointing=True)
    assert first.last_status == {"train": "computed", "val": "computed"}
    ckpt = trainer.checkpoint_callback.last_model_path or trainer.checkpoint_callback.best_model_path
    resumed = FeatureCache(cut=CUT, augmented_views=1, cache_dir=str(cache_dir))
    trainer, _, _ = _fit(tiny_folder, tmp_path / "resumed", resumed, epochs=2, ckpt_path=ckpt)
    assert resumed.last_status == {"train": "disk", "val": "disk"} and resumed.extracted_here == 0
    assert trainer.current_epoch == 2
    # another cut is another cache
    other = FeatureCache(cut="blocks.1", cache_dir=str(cache_dir))
    _fit(tiny_folder, tmp_path / "other", other, epochs=1)
    assert other.last_status == {"train": "computed", "val": "computed"}


def test_cache_size_is_logged_and_a_budget_refused(tiny_folder, tmp_path, caplog):
    with caplog.at_level("INFO", logger="tlx"):
        _fit(tiny_folder, tmp_path, FeatureCache(cut=CUT, augmented_views=2), epochs=1)
    # 16 train images x 3 views + 8 val images, 32x4x4 float32 each
    assert "16 train images x 3 views + 8 val images, 32x4x4 float32 each: 0.1 MB" in caplog.text
    with pytest.raises(TLXError, match="over max_cache_gb=0.0001"):
        _fit(tiny_folder, tmp_path, FeatureCache(cut=CUT, augmented_views=2, max_cache_gb=1e-4), epochs=1)
