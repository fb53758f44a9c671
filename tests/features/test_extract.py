"""tlx.features.extract_features: a backbone over a dataset, equal to a live forward, cached by content."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import TINY_MODEL, TINY_PREPROCESSING
from tlx.backbones import create_backbone
from tlx.data import ImageFolderDataModule
from tlx.errors import TLXError
from tlx.features import extract_features
from tlx.models import ImageClassifier
from tlx.preprocessing import Preprocessing


def _backbone(seed: int = 0):
    torch.manual_seed(seed)
    return create_backbone(TINY_MODEL["backbone"], weights=None)


def _datasets(root):
    dm = ImageFolderDataModule(root=str(root), num_workers=0, preprocessing=TINY_PREPROCESSING)
    dm.resolve_preprocessing()
    return dm.eval_dataset("val"), dm.train_dataset()


def test_equals_a_live_forward_in_eval_mode(tiny_folder):
    backbone, (dataset, _) = _backbone(), _datasets(tiny_folder)
    backbone.train()
    feats, labels = extract_features(backbone, dataset, batch_size=3, precision="32-true")
    assert backbone.training  # its mode is restored
    backbone.eval()
    with torch.no_grad():
        live = backbone(torch.stack([dataset[i][0] for i in range(len(dataset))]))
    assert feats.shape == live.shape and feats.dtype == torch.float32
    assert torch.allclose(feats, live, atol=1e-5)
    assert labels.tolist() == [y for _, y in dataset.samples]


def test_channels_last_batches_give_the_same_features(tiny_folder):
    backbone, (dataset, _) = _backbone(), _datasets(tiny_folder)
    seen = []
    backbone.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    plain, _ = extract_features(backbone, dataset, batch_size=3, precision="32-true")
    nhwc, _ = extract_features(backbone, dataset, batch_size=3, precision="32-true", channels_last=True)
    assert torch.allclose(plain, nhwc, atol=1e-5)
    half = len(seen) // 2
    assert not any(seen[:half]) and all(seen[half:])  # the layout really changed


def test_views_are_separate_random_draws(tiny_folder):
    _, train = _datasets(tiny_folder)
    feats, labels = extract_features(_backbone(), train, views=2, precision="32")
    assert feats.shape[:2] == (len(train), 2) and len(labels) == len(train)
    assert not torch.allclose(feats[:, 0], feats[:, 1])


def test_the_callers_stream_moves_one_draw_whether_computed_or_loaded(tiny_folder, tmp_path):
    _, train = _datasets(tiny_folder)
    backbone = _backbone()

    def run(seed, **kwargs):
        torch.manual_seed(seed)
        feats, _ = extract_features(backbone, train, views=2, precision="32", **kwargs)
        return feats, torch.get_rng_state()

    computed, after_computed = run(5, cache_dir=str(tmp_path))
    loaded, after_loaded = run(5, cache_dir=str(tmp_path))
    uncached, after_uncached = run(5)
    torch.manual_seed(5)
    torch.empty((), dtype=torch.int64).random_()  # one draw, as a DataLoader takes its base seed
    assert torch.equal(after_computed, after_loaded) and torch.equal(after_computed, after_uncached)
    assert torch.equal(after_computed, torch.get_rng_state())
    # the views follow the caller's seed, and the next call (the stream moved on) draws others
    assert torch.equal(computed, loaded) and torch.equal(computed, uncached)
    torch.manual_seed(5)
    first, _ = extract_features(backbone, train, views=2, precision="32")
    second, _ = extract_features(backbone, train, views=2, precision="32")
    assert torch.equal(first, computed) and not torch.allclose(first, second)


def test_cache_hits_on_a_second_call_and_misses_when_the_weights_change(tiny_folder, tmp_path):
    backbone, (dataset, _) = _backbone(), _datasets(tiny_folder)
    calls = []
    backbone.register_forward_hook(lambda *_: calls.append(1))
    first, second, other = {}, {}, {}
    a = extract_features(backbone, dataset, precision="32", cache_dir=tmp_path, stats=first)
    b = extract_features(backbone, dataset, precision="32", cache_dir=tmp_path, stats=second)
    assert (first["status"], second["status"]) == ("computed", "disk") and first["key"] == second["key"]
    assert len(calls) == 1 and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with torch.no_grad():
        next(backbone.parameters()).add_(0.1)
    extract_features(backbone, dataset, precision="32", cache_dir=tmp_path, stats=other)
    assert other["status"] == "computed" and other["key"] != first["key"] and len(calls) == 2
    assert len(list(tmp_path.glob("features-*.pt"))) == 2


def test_a_dataset_that_cannot_describe_itself_needs_a_cache_key(tmp_path):
    data = torch.utils.data.TensorDataset(torch.rand(4, 3, 32, 32), torch.arange(4))
    with pytest.raises(TLXError, match="pass cache_key"):
        extract_features(_backbone(), data, cache_dir=tmp_path)
    stats = {}
    feats, labels = extract_features(_backbone(), data, cache_dir=tmp_path, cache_key="random-4", stats=stats)
    assert feats.shape[0] == 4 and labels.tolist() == [0, 1, 2, 3] and stats["status"] == "computed"


def test_the_model_takes_features_only_when_told():
    model = ImageClassifier(**TINY_MODEL, class_names=["a", "b"]).eval()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.backbone(images)
        model.take_features(True)
        assert torch.allclose(model(feats), model.head(feats))
        with pytest.raises(TLXError, match="takes precomputed backbone features"):
            model(images)
        model.take_features(False)
        assert torch.allclose(model(images), model.head(feats))
    assert isinstance(model.preprocessing, Preprocessing)


def test_every_modules_own_mode_is_restored():
    # a fine-tuning strategy's frozen part (eval) inside a network in train mode stays eval:
    # a plain network.train() afterwards would put its BatchNorm back on batch statistics
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4), torch.nn.Flatten())
    net.train()
    net[1].eval()
    data = torch.utils.data.TensorDataset(torch.randn(4, 3, 2, 2), torch.zeros(4, dtype=torch.long))
    extract_features(net, data, batch_size=2, precision="32")
    assert [m.training for m in net.modules()] == [True, True, False, True]
