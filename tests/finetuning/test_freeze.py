"""Frozen parameters stay bit-identical, unfrozen ones move; frozen BatchNorm keeps its statistics."""

import pytest

from tests.helpers import STRATEGIES, Recorder, build_callbacks, fit, fragment_callbacks, ids, tiny_data, tiny_model
from tlx.finetuning import FreezeBackbone, FullFinetune, GradualUnfreeze
from tlx.finetuning.groups import layer_groups


@pytest.mark.parametrize("fragment", STRATEGIES, ids=ids(STRATEGIES))
def test_frozen_params_bit_identical_trained_ones_change(fragment, tiny_folder, tmp_path):
    """Every strategy of configs/finetuning/strategies/, unfreezing (if it does) after epoch 0."""
    rec = Recorder()
    model = tiny_model()
    callbacks = build_callbacks(fragment_callbacks(fragment, unfreeze_at_epoch=1))
    fit(tmp_path, model, tiny_data(tiny_folder), [*callbacks, rec], epochs=2)
    assert len(rec.epochs) == 2
    for epoch, (frozen, trained, changed) in enumerate(rec.epochs):
        assert not (frozen & changed), f"epoch {epoch}: frozen parameters changed: {sorted(frozen & changed)[:5]}"
        assert trained <= changed, f"epoch {epoch}: trainable parameters that did not move: {sorted(trained - changed)[:5]}"
        assert any(n.startswith("head.") for n in trained)


def test_frozen_backbone_keeps_bn_statistics(tiny_folder, tmp_path):
    rec = Recorder()
    model = tiny_model()
    fit(tmp_path, model, tiny_data(tiny_folder), [FreezeBackbone(), rec])
    assert rec.bn_buffers(model, "backbone.")
    assert not rec.changed_bn_buffers(model)


def test_train_bn_lets_frozen_bn_adapt(tiny_folder, tmp_path):
    rec = Recorder()
    model = tiny_model()
    fit(tmp_path, model, tiny_data(tiny_folder), [FreezeBackbone(train_bn=True), rec])
    bn_params = {n for n in rec.params0 if n.startswith("backbone.") and ".bn" in n}
    assert bn_params and bn_params <= rec.trained  # BN affine parameters train...
    conv = {n for n in rec.params0 if "conv" in n}
    assert not (conv & rec.trained)  # ...the convolutions do not
    assert rec.changed_bn_buffers(model) == rec.bn_buffers(model, "backbone.")  # and statistics move


def test_freeze_bn_stats_everywhere(tiny_folder, tmp_path):
    rec = Recorder()
    model = tiny_model()
    fit(tmp_path, model, tiny_data(tiny_folder), [FullFinetune(freeze_bn_stats=True), rec])
    assert rec.changed_params(model) == set(rec.params0)  # everything trains
    assert not rec.changed_bn_buffers(model)  # but no BN statistic moves


def test_gradual_unfreeze_bn_only_moves_in_unfrozen_groups(tiny_folder, tmp_path):
    rec = Recorder()
    model = tiny_model()
    fit(tmp_path, model, tiny_data(tiny_folder), [GradualUnfreeze(num_groups=3), rec], epochs=2)
    groups = layer_groups(model.backbone, num_groups=3)
    bottom_bns = {f"backbone.{n}" for n, m in model.backbone.named_modules()
                  if any(m is g or any(m is s for s in g.modules()) for g in groups[0].modules)}
    changed = {n.rpartition(".")[0] for n in rec.changed_bn_buffers(model)}
    assert changed, "the unfrozen top group's BN statistics should move"
    assert not (changed & bottom_bns)


@pytest.mark.parametrize("epoch", range(0, 9))
def test_gradual_unfreeze_state_depends_on_the_epoch_only(epoch):
    """What a resumed run sees: from all-frozen, finetune_function(epoch) alone gives the top
    min(epoch // every, n) groups trainable, also long after the last group was unfrozen."""
    from types import SimpleNamespace

    model = tiny_model()
    model._trainer = SimpleNamespace(global_step=0)  # unfreeze_group records the step
    strategy = GradualUnfreeze(unfreeze_every=1, num_groups=4)
    strategy._frozen_modules = []
    strategy.freeze_before_training(model)
    groups = strategy._layer_groups
    assert len(groups) == 4
    strategy.finetune_function(model, epoch, optimizer=None)
    trainable = [all(p.requires_grad for p in g.params) for g in groups]
    k = min(epoch, 4)
    assert trainable == [False] * (4 - k) + [True] * k
