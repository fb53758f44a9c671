"""FeatureCache: features computed once, keyed by weights / preprocessing / files, same metrics."""

from __future__ import annotations

import os

import pytest
import torch
from lightning.pytorch import seed_everything

from tests.helpers import TINY_MODEL, TINY_PREPROCESSING, tiny_trainer, write_image
from tlx.data import ImageFolderDataModule
from tlx.errors import BackboneError, TLXError
from tlx.finetuning import FreezeBackbone
from tlx.models import ImageClassifier
from tlx.speed import FeatureCache
from tlx.data.folders import files_digest
from tlx.features import content_key, weights_digest


def _fit(root, tmp_path, callbacks, epochs=1, batch_size=4, model_kwargs=None, seed=0, ckpt_path=None,
         eval_batch_size=None, **trainer_kwargs):
    seed_everything(seed)
    model = ImageClassifier(**{**TINY_MODEL, **(model_kwargs or {})})
    dm = ImageFolderDataModule(root=str(root), batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=0)
    trainer = tiny_trainer(tmp_path, max_epochs=epochs, callbacks=callbacks, **trainer_kwargs)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return trainer, model, dm


def _count_backbone_calls(model) -> list[int]:
    calls = [0]
    model.backbone.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_backbone_runs_only_in_the_extraction_pass(tiny_folder, tmp_path):
    counts = {}
    for epochs in (1, 3):
        seed_everything(0)
        model = ImageClassifier(**TINY_MODEL)
        calls = _count_backbone_calls(model)
        dm = ImageFolderDataModule(root=str(tiny_folder), batch_size=4, num_workers=0)
        cache = FeatureCache(extract_batch_size=64)
        tiny_trainer(tmp_path, max_epochs=epochs, callbacks=[FreezeBackbone(), cache]).fit(model, datamodule=dm)
        counts[epochs] = calls[0]
        assert cache.last_status == {"train": "computed", "val": "computed"}
    # one batch of train images + one of val images, whatever the number of epochs
    assert counts[1] == counts[3] == 2


def test_augmented_views_are_cached_and_drawn(tiny_folder, tmp_path):
    cache = FeatureCache(augmented_views=2)
    _fit(tiny_folder, tmp_path, [FreezeBackbone(), cache], epochs=2)
    (train_feats, _), (val_feats, _) = cache._memory.values()
    assert train_feats.shape[:2] == (16, 3)  # 16 images x (eval view + 2 random views)
    assert val_feats.ndim == 2 and len(val_feats) == 8
    assert not torch.allclose(train_feats[:, 0], train_feats[:, 1])  # random views differ from the eval view


def test_same_metrics_as_training_on_images(tiny_folder, tmp_path):
    # Full-batch training on views that match the eval view (no flip, crop = whole square image,
    # resize = crop size): cached and uncached runs take the very same gradient steps.
    prep = {**TINY_PREPROCESSING, "resize_size": 32}
    results = []
    for callbacks in ([FreezeBackbone()], [FreezeBackbone(), FeatureCache()]):
        seed_everything(0)
        model = ImageClassifier(**{**TINY_MODEL, "preprocessing": prep})
        dm = ImageFolderDataModule(root=str(tiny_folder), batch_size=16, num_workers=0, crop_scale=(1.0, 1.0), hflip=0.0)
        trainer = tiny_trainer(tmp_path, max_epochs=3, callbacks=callbacks)
        trainer.fit(model, datamodule=dm)
        results.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
        results[-1]["head"] = model.head.fc.weight.detach().clone()
    plain, cached = results
    assert torch.allclose(plain.pop("head"), cached.pop("head"), atol=1e-5)
    assert plain.keys() == cached.keys() and "val/acc" in cached
    for k in plain:
        assert cached[k] == pytest.approx(plain[k], abs=1e-4), k


def test_checkpoint_holds_the_whole_model_and_validates_on_images(tiny_folder, tmp_path):
    trainer, model, dm = _fit(tiny_folder, tmp_path, [FreezeBackbone(), FeatureCache()], epochs=2,
                              enable_checkpointing=True)
    cached_acc = float(trainer.callback_metrics["val/acc"])
    ckpt = trainer.checkpoint_callback.last_model_path or trainer.checkpoint_callback.best_model_path
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert any(k.startswith("backbone.") for k in state) and any(k.startswith("head.") for k in state)
    # after fit the data module serves images again, and the same weights give the same accuracy
    assert "train_dataloader" not in vars(dm) and model.input_kind == "images"
    x, _ = next(iter(dm.val_dataloader()))
    assert x.ndim == 4
    metrics = tiny_trainer(tmp_path).validate(model, datamodule=dm, verbose=False)[0]
    assert metrics["val/acc"] == pytest.approx(cached_acc, abs=1e-6)


def test_disk_cache_hits_and_rebuilds_on_files_preprocessing_weights(tiny_folder, tmp_path):
    cache_dir = tmp_path / "features"

    def status(root=tiny_folder, model_kwargs=None, seed=0):
        cache = FeatureCache(cache_dir=str(cache_dir))
        _fit(root, tmp_path, [FreezeBackbone(), cache], model_kwargs=model_kwargs, seed=seed)
        return cache.last_status

    assert status() == {"train": "computed", "val": "computed"}
    assert status() == {"train": "disk", "val": "disk"}
    # another preprocessing
    assert status(model_kwargs={"preprocessing": {**TINY_PREPROCESSING, "mean": [0.4, 0.4, 0.4]}})["train"] == "computed"
    # other weights: a different random init (the weights are hashed, not their origin)
    assert status(seed=1) == {"train": "computed", "val": "computed"}
    assert status(seed=1) == {"train": "disk", "val": "disk"}
    # a file added to train: train rebuilds, val still hits
    write_image(tiny_folder / "train" / "cat" / "extra.png", (200, 40, 40), seed=99)
    assert status() == {"train": "computed", "val": "disk"}
    # a file changed in place (new size / mtime): rebuilds
    path = tiny_folder / "val" / "dog" / "dog_0.png"
    write_image(path, (40, 40, 200), size=44, seed=123)
    os.utime(path, ns=(1, 1))
    assert status()["val"] == "computed"
    assert len(list(cache_dir.glob("*.pt"))) == 8


def test_cache_key_parts():
    samples = [(__file__, 0)]
    w, f = "a" * 64, files_digest(samples)
    prep = {"input_size": 32}

    def cache_key(weights, preprocessing, files):
        return content_key(weights=weights, prep=preprocessing, files=files)

    assert cache_key(w, prep, f) == cache_key(w, dict(prep), f)
    assert cache_key(w, prep, f) != cache_key("b" * 64, prep, f)
    assert cache_key(w, prep, f) != cache_key(w, {"input_size": 33}, f)
    assert cache_key(w, prep, f) != cache_key(w, prep, files_digest([(__file__, 1)]))
    layer = torch.nn.Conv2d(3, 4, 3)
    before = weights_digest(layer)
    assert weights_digest(layer.to(memory_format=torch.channels_last)) == before  # layout is not content
    with torch.no_grad():
        layer.weight[0, 0, 0, 0] += 1.0
    assert weights_digest(layer) != before


def test_refuses_a_backbone_that_trains(tiny_folder, tmp_path):
    with pytest.raises(TLXError, match="FreezeBackbone"):
        _fit(tiny_folder, tmp_path, [FeatureCache()])
    with pytest.raises(TLXError, match="frozen"):
        _fit(tiny_folder, tmp_path, [FreezeBackbone(train_bn=True), FeatureCache()])


def test_refuses_a_data_module_without_the_cache_contract(tmp_path):
    from lightning.pytorch import LightningDataModule

    class Tensors(LightningDataModule):
        class_names = ["a", "b"]

        def train_dataloader(self):
            return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.rand(4, 3, 32, 32), torch.zeros(4).long()))

    model = ImageClassifier(**TINY_MODEL)
    trainer = tiny_trainer(tmp_path, max_epochs=1, callbacks=[FreezeBackbone(), FeatureCache()])
    with pytest.raises(TLXError, match=r"no samples\(\), items\(\), eval_dataset\(\), .*serve_images\(\)"):
        trainer.fit(model, datamodule=Tensors())


# ---- with a cut: a frozen bottom's activations cached, the top stages + head trained on them ----
CUT = "blocks.2"  # of timm:test_efficientnet (blocks.0 ... blocks.4)


def _fit_cut(root, tmp_path, cache, epochs=2, **kwargs):
    """One cut run: the cache alone (no strategy), validation in one batch as extracted."""
    return _fit(root, tmp_path, [cache], epochs=epochs, eval_batch_size=64, **kwargs)


def _val_activations(cache):
    """The val split's cached activations (8 images, one eval view each)."""
    (activations, _), = [v for v in cache._memory.values() if v[0].ndim == 4 and len(v[0]) == 8]
    return activations


def test_a_cut_that_does_not_exist_names_the_valid_ones(tiny_folder, tmp_path):
    with pytest.raises(BackboneError, match=r"'blocks\.9' is not a cut point .*blocks\.0, blocks\.1, .*blocks\.4"):
        _fit_cut(tiny_folder, tmp_path, FeatureCache(cut="blocks.9"))


def test_cached_bottom_equals_the_live_bottom_bit_exact(tiny_folder, tmp_path):
    cache = FeatureCache(cut=CUT, extract_batch_size=64)
    _, model, dm = _fit_cut(tiny_folder, tmp_path, cache, epochs=1)
    bottom = cache.split[0].eval()
    x, _ = next(iter(dm.val_dataloader()))  # the same eval view, in one batch of 8 as extracted
    with torch.no_grad():
        live = bottom(x)
    assert live.shape[1:] == (32, 4, 4)
    assert torch.equal(_val_activations(cache), live)


def test_a_bf16_extraction_is_its_own_cache_close_to_the_live_fp32_bottom(tiny_folder, tmp_path):
    """extract_precision=bf16 (``auto`` on a CPU with AVX512-BF16): the activations are the fp32
    bottom's up to bf16 rounding, filed under another key (a fp32 cache is never reused for it),
    and the fit's model still runs fp32 on images."""
    cache_dir = str(tmp_path / "activations")
    fp32 = FeatureCache(cut=CUT, extract_batch_size=64, cache_dir=cache_dir)
    _fit_cut(tiny_folder, tmp_path / "fp32", fp32, epochs=1)
    bf16 = FeatureCache(cut=CUT, extract_batch_size=64, cache_dir=cache_dir, extract_precision="bf16")
    _, model, dm = _fit_cut(tiny_folder, tmp_path / "bf16", bf16, epochs=1)
    assert bf16.last_status == {"train": "computed", "val": "computed"}
    exact, rounded = _val_activations(fp32), _val_activations(bf16)
    assert not torch.equal(rounded, exact)
    assert torch.allclose(rounded, exact, rtol=0.05, atol=0.05 * exact.abs().max().item())
    assert next(model.parameters()).dtype == torch.float32
    x, _ = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        assert torch.equal(bf16.split[0].eval()(x), exact)  # the live bottom: fp32, as the checkpoint runs
    again = FeatureCache(cut=CUT, extract_batch_size=64, cache_dir=cache_dir, extract_precision="bf16")
    _fit_cut(tiny_folder, tmp_path / "again", again, epochs=1)
    assert again.last_status == {"train": "disk", "val": "disk"} and torch.equal(_val_activations(again), rounded)


def test_an_unknown_extract_precision_is_refused_in_one_line():
    with pytest.raises(TLXError, match=r"FeatureCache extract_precision='bf61': use one of None, auto, bf16, 32"):
        FeatureCache(extract_precision="bf61")


def test_top_trains_and_bottom_stays_bit_identical(tiny_folder, tmp_path):
    cache = FeatureCache(cut=CUT, augmented_views=2)
    seed_everything(0)
    before = ImageClassifier(**TINY_MODEL).backbone.state_dict()
    _, model, _ = _fit_cut(tiny_folder, tmp_path, cache)
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
    trainer, model, dm = _fit_cut(tiny_folder, tmp_path, cache, enable_checkpointing=True)
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
    trainer, _, _ = _fit_cut(tiny_folder, tmp_path, first, epochs=1, enable_checkpointing=True)
    assert first.last_status == {"train": "computed", "val": "computed"}
    ckpt = trainer.checkpoint_callback.last_model_path or trainer.checkpoint_callback.best_model_path
    resumed = FeatureCache(cut=CUT, augmented_views=1, cache_dir=str(cache_dir))
    trainer, _, _ = _fit_cut(tiny_folder, tmp_path / "resumed", resumed, epochs=2, ckpt_path=ckpt)
    assert resumed.last_status == {"train": "disk", "val": "disk"} and resumed.extracted_here == 0
    assert trainer.current_epoch == 2
    # another cut is another cache
    other = FeatureCache(cut="blocks.1", cache_dir=str(cache_dir))
    _fit_cut(tiny_folder, tmp_path / "other", other, epochs=1)
    assert other.last_status == {"train": "computed", "val": "computed"}


def test_a_run_loading_the_cache_trains_as_the_run_that_built_it(tiny_folder, tmp_path):
    # Building the cache draws random views and loader seeds; it must not shift the training
    # stream (shuffling, dropout), or a seed would give one model when the cache is built and
    # another when it is loaded.
    cache_dir = str(tmp_path / "activations")
    built = FeatureCache(cut=CUT, augmented_views=2, cache_dir=cache_dir)
    _, first, _ = _fit_cut(tiny_folder, tmp_path / "built", built)
    loaded = FeatureCache(cut=CUT, augmented_views=2, cache_dir=cache_dir)
    _, second, _ = _fit_cut(tiny_folder, tmp_path / "loaded", loaded)
    assert built.last_status["train"] == "computed" and loaded.last_status["train"] == "disk"
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cache_size_is_logged_and_a_budget_refused(tiny_folder, tmp_path, caplog):
    with caplog.at_level("INFO", logger="tlx"):
        _fit_cut(tiny_folder, tmp_path, FeatureCache(cut=CUT, augmented_views=2), epochs=1)
    # 16 train images x 3 views + 8 val images, 32x4x4 float32 each
    assert "16 train images x 3 views + 8 val images, 32x4x4 float32 each: 0.1 MB" in caplog.text
    with pytest.raises(TLXError, match="over max_cache_gb=0.0001"):
        _fit_cut(tiny_folder, tmp_path, FeatureCache(cut=CUT, augmented_views=2, max_cache_gb=1e-4), epochs=1)
