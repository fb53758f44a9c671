"""Resuming from a checkpoint saved before, or after, an unfreeze continues with the same
parameter groups, learning rates and optimizer state: it ends exactly where an uninterrupted
run ends (Lightning 6891)."""

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from tests.helpers import STRATEGIES, OrderedData, build_callbacks, fit, fragment_callbacks, ids, tiny_model

EPOCHS = 4
# Unfreeze at the start of epoch 2; a 6-step warm-up runs across the epoch-2 checkpoint.
SCHEDULE = {"unfreeze_at_epoch": 2, "warmup_steps": 6, "unfreeze_every": 2, "num_groups": 2}
# The strategies of configs/finetuning/strategies/ that unfreeze during the run.
UNFREEZING = [f for f in STRATEGIES if {"unfreeze_at_epoch", "unfreeze_every"} & {
    k for spec in fragment_callbacks(f) for k in spec["init_args"]}]


def adamw(params):  # plain functions, not partials: checkpoints load with weights_only=True
    return torch.optim.AdamW(params, lr=0.01)


def step_lr(optimizer):
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)


def run(tmp_path, fragment, ckpt_path=None):
    model = tiny_model(optimizer=adamw, lr_scheduler=step_lr)
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    trainer = fit(tmp_path, model, OrderedData(str(tmp_path.parent / "data")), [*build_callbacks(fragment_callbacks(fragment, **SCHEDULE)), ckpt],
                  epochs=EPOCHS, enable_checkpointing=True, ckpt_path=ckpt_path)
    return trainer, model


def test_both_unfreezing_strategies_are_found():
    assert {f.stem for f in UNFREEZING} >= {"freeze_unfreeze", "gradual_unfreeze"}


@pytest.mark.parametrize("fragment", UNFREEZING, ids=ids(UNFREEZING))
def test_resume_before_and_after_unfreeze_matches_uninterrupted(fragment, tiny_folder, tmp_path):
    assert tiny_folder == tmp_path / "data"
    full_trainer, full = run(tmp_path / "full", fragment)
    reference = {k: v.clone() for k, v in full.state_dict().items()}
    ref_groups = [(g["name"], g["lr"]) for g in full_trainer.optimizers[0].param_groups]
    ref_metrics = {k: v.item() for k, v in full_trainer.callback_metrics.items() if k.startswith("val/")}
    for epoch in (1, 2):  # saved before the unfreeze at epoch 2, and after it
        ckpt = tmp_path / "full" / "ckpt" / f"epoch={epoch}.ckpt"
        trainer, resumed = run(tmp_path / f"from{epoch}", fragment, ckpt_path=str(ckpt))
        assert trainer.current_epoch == EPOCHS
        assert [(g["name"], g["lr"]) for g in trainer.optimizers[0].param_groups] == ref_groups
        state = resumed.state_dict()
        diff = [k for k in reference if not torch.equal(reference[k], state[k])]
        assert not diff, f"resumed from epoch {epoch}: {diff[:5]} differ"
        metrics = {k: v.item() for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        assert metrics == ref_metrics
        assert all(p.requires_grad for p in resumed.backbone.parameters()) == (fragment.stem == "freeze_unfreeze")
