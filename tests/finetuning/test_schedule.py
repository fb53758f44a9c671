"""Groups that start training mid-run are driven by the LR scheduler, carry their LR ratio and
show up by name in LearningRateMonitor; warm-up ramps them in."""

from functools import partial

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger

from tests.helpers import fit, tiny_data, tiny_model
from tlx.finetuning import FreezeUnfreeze, GradualUnfreeze

LR = 0.01
EPOCHS = 4
SCHEDULERS = {
    "step": partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5),
    "cosine": partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=EPOCHS),
    "onecycle": partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=LR, total_steps=EPOCHS),
}


class EpochLRs(Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        self.lrs = getattr(self, "lrs", [])
        self.lrs.append({g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups})


def reference_lrs(make_scheduler) -> list[float]:
    """What the scheduler gives a plain one-group optimizer, epoch by epoch."""
    opt = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=LR)
    sched = make_scheduler(opt)
    out = []
    for _ in range(EPOCHS):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("sched", list(SCHEDULERS))
def test_unfrozen_backbone_follows_scheduler(sched, tiny_folder, tmp_path):
    rec = EpochLRs()
    model = tiny_model(optimizer=partial(torch.optim.AdamW, lr=LR), lr_scheduler=SCHEDULERS[sched])
    strategy = FreezeUnfreeze(unfreeze_at_epoch=2, backbone_lr_scale=0.1)
    trainer = fit(tmp_path, model, tiny_data(tiny_folder), [strategy, rec, LearningRateMonitor("epoch")],
                  epochs=EPOCHS, logger=CSVLogger(tmp_path))
    expected = reference_lrs(SCHEDULERS[sched])
    assert len(set(expected)) > 1  # the schedule really changes the LR
    for epoch, lrs in enumerate(rec.lrs):
        assert lrs["head"] == pytest.approx(expected[epoch], rel=1e-6)
        assert lrs["backbone"] == pytest.approx(0.1 * expected[epoch], rel=1e-6), f"epoch {epoch}"
    assert {"lr-AdamW/head", "lr-AdamW/backbone"} <= set(trainer.callback_metrics)
    assert trainer.callback_metrics["lr-AdamW/backbone"].item() == pytest.approx(0.1 * expected[-1], rel=1e-5)
    assert all(p.requires_grad for p in model.backbone.parameters())


def test_gradual_groups_follow_onecycle_with_layer_decay(tiny_folder, tmp_path):
    rec = EpochLRs()
    model = tiny_model(optimizer=partial(torch.optim.AdamW, lr=LR), lr_scheduler=SCHEDULERS["onecycle"])
    strategy = GradualUnfreeze(num_groups=3, layer_decay=0.5)
    fit(tmp_path, model, tiny_data(tiny_folder), [strategy, rec], epochs=EPOCHS)
    expected = reference_lrs(SCHEDULERS["onecycle"])
    names = [g.name for g in strategy._groups]
    assert len(names) == 4 and names[0] == "head"
    for epoch, lrs in enumerate(rec.lrs):
        for depth, name in enumerate(names[1:]):
            assert lrs[name] == pytest.approx(expected[epoch] * 0.5**depth, rel=1e-6)


class StepLRs(Callback):
    """The LR each step really uses (a step pre-hook registered after the strategy's)."""

    def on_fit_start(self, trainer, pl_module):
        self.used = []
        trainer.optimizers[0].register_step_pre_hook(
            lambda opt, a, k: self.used.append({g["name"]: g["lr"] for g in opt.param_groups}))


def test_warmup_ramps_the_unfrozen_backbone(tiny_folder, tmp_path):
    steps = StepLRs()
    model = tiny_model(optimizer=partial(torch.optim.AdamW, lr=LR))
    strategy = FreezeUnfreeze(unfreeze_at_epoch=1, backbone_lr_scale=0.1, warmup_steps=4)
    fit(tmp_path, model, tiny_data(tiny_folder), [strategy, steps], epochs=2)
    per_epoch = len(steps.used) // 2
    backbone = [s["backbone"] for s in steps.used[per_epoch:]]
    ramp = [0.1 * LR * min(1.0, (i + 1) / 4) for i in range(per_epoch)]
    assert backbone == pytest.approx(ramp, rel=1e-6)
    assert all(s["head"] == pytest.approx(LR) for s in steps.used)
    # the ramp lives around the step only: the group's own LR (what schedulers read) is intact
    groups = {g["name"]: g for g in model.trainer.optimizers[0].param_groups}
    assert groups["backbone"]["lr"] == pytest.approx(0.1 * LR) == groups["backbone.no_decay"]["lr"]
