"""Stopping without losing anything: SIGTERM (preemption) and a non-finite loss."""

from __future__ import annotations

import math
import signal

import pytest
import torch
from lightning.pytorch import Callback

from tests.helpers import REPO, run_cli, signal_once_saved, tiny_fit_args
from tlx.cli import main


@pytest.mark.multiprocess  # signals a real `python -m tlx fit` process
def test_sigterm_saves_a_checkpoint_then_exits_and_resume_finishes(tiny_folder, tmp_path, capsys):
    runs = tmp_path / "runs"
    last = runs / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    args = tiny_fit_args(tiny_folder, runs, epochs=1000, extra=["--trainer.enable_model_summary=false"])
    returncode, err = signal_once_saved(args, last, signal.SIGTERM)  # after the first validation
    assert returncode == 143
    assert f"SIGTERM received: saved {last}; resume with --ckpt_path last." in err
    assert "tlx: stopped by SIGTERM after saving a checkpoint; resume with --ckpt_path last." in err
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] > 4  # newer than the first validation's checkpoint (4 batches/epoch)

    main(tiny_fit_args(tiny_folder, runs, epochs=saved["epoch"] + 1, extra=["--ckpt_path=last"]))
    final = torch.load(last, weights_only=True)
    assert final["global_step"] == 4 * (saved["epoch"] + 1)  # the interrupted epoch was finished, not redone


class PoisonAt(Callback):
    """Puts a NaN into the head's weights before the given step, as a diverging run would."""

    def __init__(self, step: int = 3):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.head.parameters()).view(-1)[0] = math.nan


def test_non_finite_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tiny_folder, tmp_path, capsys):
    runs = tmp_path / "runs"
    last = runs / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    with pytest.raises(SystemExit) as exit_info:
        main(tiny_fit_args(tiny_folder, runs, epochs=3, extra=[
            "--trainer.callbacks+=tests.callbacks.test_stops.PoisonAt", "--last_checkpoint.every_n_train_steps=1"]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert (f"tlx: error: The training loss became nan at epoch 0, global step 3: training stopped before the "
            f"weights were updated. The last good checkpoint, {last}, is kept: resume from it with --ckpt_path last. "
            "Common fixes: a lower learning rate") in err
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())


def test_every_n_steps_saves_once_per_optimizer_step_under_accumulation(tiny_folder, tmp_path, monkeypatch):
    """accumulate_grad_batches=2: batches 2k and 2k+1 share a global step; one save per N steps."""
    from tlx.callbacks.last_checkpoint import LastCheckpoint

    steps, save = [], LastCheckpoint.save

    def recording_save(self, trainer):
        if trainer.training:  # saves from on_train_batch_end, not the one after each validation
            steps.append(trainer.global_step)
        return save(self, trainer)

    monkeypatch.setattr(LastCheckpoint, "save", recording_save)
    run_cli(tiny_fit_args(tiny_folder, tmp_path / "runs", epochs=2,
                          extra=["--last_checkpoint.every_n_train_steps=1", "--trainer.accumulate_grad_batches=2"]))
    assert steps == sorted(set(steps)) and 0 not in steps
    assert steps == list(range(1, steps[-1] + 1))  # every optimizer step once
