"""Optimizer groups and schedules: weight-decay exemptions, LR scales applied once, the
scheduler interval and the per-step warm-up + cosine recipe."""

import functools

import pytest
import torch
from lightning.pytorch import Callback

from tests.helpers import fit, tiny_data, tiny_model
from tlx.callbacks import ScaleLearningRate
from tlx.finetuning import FullFinetune
from tlx.optim import ParamGroup, WarmupCosine, optimizer_param_groups


def groups_by_name(optimizer):
    return {g["name"]: g for g in optimizer.param_groups}


def test_norms_biases_and_declared_params_get_no_weight_decay():
    from tests.helpers import TINY_MODEL
    from tlx.models import ImageClassifier

    model = ImageClassifier(**{**TINY_MODEL, "backbone": "timm:test_vit"},
                            optimizer=functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.05))
    model.param_groups_provider = FullFinetune(backbone_lr_scale=0.1)
    model.class_names = ["a", "b"]
    model.configure_model()
    groups = groups_by_name(model.configure_optimizers())
    assert set(groups) == {"head", "head.no_decay", "backbone", "backbone.no_decay"}
    names = {id(p): n for n, p in model.named_parameters()}
    free = {names[id(p)] for p in groups["backbone.no_decay"]["params"]}
    assert {"backbone.model.pos_embed", "backbone.model.cls_token", "backbone.model.norm.weight"} <= free
    assert all(n.endswith("bias") or "norm" in n or "token" in n or "embed" in n for n in free), free
    decayed = {names[id(p)] for p in groups["backbone"]["params"]}
    assert decayed and all(n.endswith("weight") and "norm" not in n for n in decayed)
    assert groups["backbone.no_decay"]["weight_decay"] == 0.0 and groups["backbone"]["weight_decay"] == 0.05
    # the strategy's scale applies to both halves
    assert groups["backbone.no_decay"]["lr"] == pytest.approx(1e-4) == groups["backbone"]["lr"]


def test_exemption_is_an_option_and_needs_decay_to_split():
    plain = tiny_model(optimizer=functools.partial(torch.optim.SGD, lr=0.1), class_names=["a", "b"])
    assert list(groups_by_name(plain.configure_optimizers())) == ["all"]  # no decay: nothing to exempt
    off = tiny_model(optimizer=functools.partial(torch.optim.AdamW, weight_decay=0.1), class_names=["a", "b"],
                     no_decay_norm_bias=False)
    opt = off.configure_optimizers()
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1]


def test_a_parameter_in_two_groups_is_refused():
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="already in another group"):
        optimizer_param_groups(torch.nn.Linear(1, 1), [ParamGroup("a", [p]), ParamGroup("b", [p])], False)


class LRs(Callback):
    def __init__(self):
        self.lrs = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_warmup_cosine_steps_per_step_over_the_estimated_run(tiny_folder, tmp_path):
    """2 steps an epoch, 3 epochs = 6 steps; warm-up 2, then cosine toward 0."""
    model = tiny_model(optimizer=functools.partial(torch.optim.SGD, lr=1.0),
                       lr_scheduler=functools.partial(WarmupCosine, warmup_steps=2),
                       lr_scheduler_interval="step")
    rec = LRs()
    fit(tmp_path, model, tiny_data(tiny_folder), [rec], epochs=3, limit_train_batches=2)
    sched = model.trainer.lr_scheduler_configs[0]
    assert sched.interval == "step" and sched.scheduler.total_steps == 6
    expected = [0.5, 1.0] + [0.5 * (1 + torch.cos(torch.tensor(torch.pi * k / 4))).item() for k in range(4)]
    assert rec.lrs == pytest.approx(expected, abs=1e-6)
    assert len(set(rec.lrs[:2])) == 2  # it changed within the first epoch: per step, not per epoch


def test_epoch_interval_is_the_default(tiny_folder, tmp_path):
    model = tiny_model(optimizer=functools.partial(torch.optim.SGD, lr=1.0),
                       lr_scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5))
    rec = LRs()
    fit(tmp_path, model, tiny_data(tiny_folder), [rec], epochs=2, limit_train_batches=2)
    assert rec.lrs == [1.0, 1.0, 0.5, 0.5]


def test_batch_size_factor_and_group_scale_apply_once(tiny_folder, tmp_path):
    """ScaleLearningRate hands its factor to the model; the optimizer applies it with the
    group's scale, also to OneCycle's absolute LRs."""
    model = tiny_model(optimizer=functools.partial(torch.optim.SGD, lr=0.1),
                       lr_scheduler=functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.1, total_steps=100),
                       lr_scheduler_interval="step")
    trainer = fit(tmp_path, model, tiny_data(tiny_folder), [FullFinetune(backbone_lr_scale=0.5),
                  ScaleLearningRate(reference_batch_size=2)], epochs=1, limit_train_batches=1)
    groups = groups_by_name(trainer.optimizers[0])
    assert model.lr_factor == 2.0  # batch 4 vs reference 2
    assert groups["head"]["max_lr"] == pytest.approx(0.2)
    assert groups["backbone"]["max_lr"] == pytest.approx(0.1)
