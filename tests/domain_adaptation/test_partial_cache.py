"""Domain adaptation on the partial cache: the top stages, bottleneck and head train on a frozen
bottom's cached activations of both domains (tlx.speed.FeatureCache with cut)."""

import torch
from lightning.pytorch import seed_everything
from torch import nn

from tests.helpers import DA_BASE, REPO, TINY_MODEL, build_callbacks, fragment_callbacks, make_domain, tiny_trainer
from tlx.domain_adaptation import DANN, DomainAdaptationClassifier, DomainAdaptationDataModule
from tlx.speed import FeatureCache

CUT = "blocks.2"  # of timm:test_efficientnet (blocks.0 ... blocks.4)
BOTTOM = ("model.conv_stem", "model.bn1", "model.blocks.0", "model.blocks.1", "model.blocks.2")


def two_domains(tmp_path, source_per_class: int = 6) -> DomainAdaptationDataModule:
    """Tiny generated source and target domains (the target: 3 images per class), batches of 4."""
    source = make_domain(tmp_path / "source", 0, source_per_class)
    target = make_domain(tmp_path / "target", 60, 3, seed0=100)
    return DomainAdaptationDataModule(str(source), str(target), batch_size=4, num_workers=0)


def test_dann_trains_the_top_on_both_domains_cached_and_the_bottom_stays(tmp_path):
    dm = two_domains(tmp_path)
    seed_everything(0)
    model = DomainAdaptationClassifier(**TINY_MODEL, bottleneck_dim=16, objective=DANN())
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    cache = FeatureCache(cut=CUT, augmented_views=2)
    trainer = tiny_trainer(tmp_path, max_epochs=2, callbacks=[cache])
    trainer.fit(model, dm)
    # Both domains were cached with their views; the epoch runs over the source (12 images, 4 a step).
    # The target's eval view is val's too (the same files): extracted once, for both.
    assert cache.last_status == {"source": "computed", "target": "computed", "val": "memory"}
    assert cache.extracted_here == 12 * 3 + 6 * 3
    shapes = sorted(tuple(f.shape) for f, _ in cache._memory.values())
    assert shapes == [(6, 3, 32, 4, 4), (6, 32, 4, 4), (12, 3, 32, 4, 4)]  # target, val (eval view), source
    assert trainer.global_step == 6 and torch.isfinite(trainer.callback_metrics["train/transfer_loss_epoch"])
    # The target's cached items carry indices, never its labels.
    (_, target_index), = [v for v in cache._memory.values() if tuple(v[0].shape[:2]) == (6, 3)]
    assert torch.equal(target_index, torch.arange(6))
    after = model.backbone.state_dict()
    bottom = [k for k in after if k.startswith(BOTTOM)]
    assert bottom and all(torch.equal(before[k], after[k]) for k in bottom)
    top = [k for k in after if k not in bottom and after[k].is_floating_point()]
    changed = [k for k in top if not torch.equal(before[k], after[k])]
    assert any(k.startswith("model.blocks.3") for k in changed)
    # Back to images after fit: the whole model validates on them as it did on the cache.
    assert model.input_kind == "images"
    on_images = tiny_trainer(tmp_path).validate(model, datamodule=dm, verbose=False)[0]["val/acc"]
    assert on_images == float(trainer.callback_metrics["val/acc"])


def test_on_disk_the_targets_indices_never_become_the_validation_labels_of_the_same_files(tmp_path):
    # The target's items are (image, index) and val holds the same files with their labels: a disk
    # cache keyed by the files alone handed val the indices (Office-31: "Target 31 is out of bounds").
    dm = two_domains(tmp_path)
    labels = torch.tensor([y for _, y in dm.samples("val")])
    assert not torch.equal(labels, torch.arange(len(labels)))  # else the test could not tell them apart
    for status in ("computed", "disk"):  # the second run reads every split back from disk
        seed_everything(0)
        model = DomainAdaptationClassifier(**TINY_MODEL, bottleneck_dim=16, objective=DANN())
        cache = FeatureCache(cut=CUT, augmented_views=1, cache_dir=str(tmp_path / "cache"))
        tiny_trainer(tmp_path, max_epochs=1, callbacks=[cache]).fit(model, dm)
        # val's eval view is the target's, taken from memory, with val's own labels
        assert cache.last_status == {"source": status, "target": status, "val": "memory"}
        by_shape = {tuple(f.shape[:2]): y for f, y in cache._memory.values()}
        assert torch.equal(by_shape[(6, 2)], torch.arange(6))  # target: eval view + 1 view, indices
        assert torch.equal(by_shape[(6, 32)], labels)  # val: the eval view, its labels


def test_the_top_stages_strategy_trains_the_top_slower_with_its_pretrained_bn_statistics(tmp_path):
    """configs/domain_adaptation/top_stages_strategy.yaml after the partial cache: the top stages at
    0.1 x the head's LR, their BatchNorm statistics kept; the bottleneck's BatchNorm learns its own."""
    dm = two_domains(tmp_path)
    seed_everything(0)
    model = DomainAdaptationClassifier(**TINY_MODEL, bottleneck_dim=16, objective=DANN(),
                                       optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    strategy = build_callbacks(fragment_callbacks(DA_BASE.parent / "top_stages_strategy.yaml"))
    trainer = tiny_trainer(tmp_path, max_epochs=1, callbacks=[FeatureCache(cut=CUT, augmented_views=1), *strategy])
    trainer.fit(model, dm)
    assert {g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups} == {"head": 0.1, "backbone": 0.1 * 0.1}
    after = model.state_dict()
    in_top = [k for k in after if k.startswith("backbone.") and not k.startswith(tuple(f"backbone.{b}" for b in BOTTOM))]
    assert any(k.endswith("conv_head.weight") for k in in_top) and all(
        not torch.equal(before[k], after[k]) for k in in_top if k.endswith("conv_head.weight"))  # the top trains
    top_stats = [k for k in in_top if k.endswith(("running_mean", "running_var"))]
    assert top_stats and all(torch.equal(before[k], after[k]) for k in top_stats)  # the pretrained statistics
    assert isinstance(model.bottleneck[1], nn.BatchNorm1d)
    assert not torch.equal(before["bottleneck.1.running_mean"], after["bottleneck.1.running_mean"])


def test_the_frozen_features_fragment_trains_on_cached_views_of_both_domains_and_the_backbone_stays(tmp_path):
    """configs/domain_adaptation/frozen_features.yaml: the whole backbone frozen and cached (centre + 4
    views of every source and target image), the bottleneck and head train; checkpoints hold the model."""
    dm = two_domains(tmp_path, source_per_class=4)
    seed_everything(0)
    model = DomainAdaptationClassifier(**TINY_MODEL, bottleneck_dim=16, objective=DANN())
    backbone = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    bottleneck = {k: v.clone() for k, v in model.bottleneck.state_dict().items()}
    callbacks = build_callbacks(fragment_callbacks(REPO / "configs" / "domain_adaptation" / "frozen_features.yaml"))
    cache, = [c for c in callbacks if isinstance(c, FeatureCache)]
    trainer = tiny_trainer(tmp_path, max_epochs=2, callbacks=callbacks)
    trainer.fit(model, dm)
    assert cache.last_status == {"source": "computed", "target": "computed", "val": "memory"}  # val: the target's eval view
    width = model.backbone.num_features
    shapes = sorted(tuple(f.shape) for f, _ in cache._memory.values())
    assert shapes == [(6, 5, width), (6, width), (8, 5, width)]  # target, val (eval view), source: 1 + 4 views
    assert all(torch.equal(backbone[k], v) for k, v in model.backbone.state_dict().items())
    assert any(not torch.equal(bottleneck[k], v) for k, v in model.bottleneck.state_dict().items()
               if v.is_floating_point())
    assert model.input_kind == "images"
    on_images = tiny_trainer(tmp_path).validate(model, datamodule=dm, verbose=False)[0]["val/acc"]
    assert on_images == float(trainer.callback_metrics["val/acc"])
