"""Resuming is exact: a run resumed mid-epoch (or after validation) ends with the same weights."""

from __future__ import annotations

import torch
from lightning.pytorch import Callback

from tests.helpers import run_cli, tiny_fit_args

# Dropout, a cosine schedule and the default random crops/flips: every source of randomness.
RANDOM = ["--model.init_args.head=tlx.heads.LinearHead", "--model.init_args.head.dropout=0.3",
          "--model.init_args.lr_scheduler=torch.optim.lr_scheduler.CosineAnnealingLR",
          "--model.init_args.lr_scheduler.T_max=2", "--trainer.enable_model_summary=false"]


class SaveCopies(Callback):
    """Saves a copy at a mid-epoch step and at the end of the first validation."""

    def __init__(self, folder: str, step: int = 6):
        self.folder, self.step = folder, step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            trainer.save_checkpoint(f"{self.folder}/mid_epoch.ckpt")

    def on_validation_end(self, trainer, *args):
        if not trainer.sanity_checking and trainer.current_epoch == 0:
            trainer.save_checkpoint(f"{self.folder}/after_val.ckpt")


def weights(cli) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in cli.model.state_dict().items()}


def test_resumed_runs_end_with_identical_weights(tiny_folder, tmp_path):
    copies = tmp_path / "copies"
    base = run_cli(tiny_fit_args(tiny_folder, tmp_path / "base", epochs=2, extra=[
        *RANDOM, "--trainer.callbacks+=tests.test_resume.SaveCopies", f"--trainer.callbacks.folder={copies}"]))
    reference = weights(base)
    assert base.trainer.global_step == 8  # 4 batches x 2 epochs; the copy at step 6 is mid-epoch
    for name in ("mid_epoch", "after_val"):
        resumed = run_cli(tiny_fit_args(tiny_folder, tmp_path / name, epochs=2,
                                        extra=[*RANDOM, f"--ckpt_path={copies / name}.ckpt"]))
        assert resumed.trainer.global_step == 8
        final = weights(resumed)
        assert all(torch.equal(final[k], reference[k]) for k in reference), name
        assert resumed.trainer.callback_metrics["val/loss"] == base.trainer.callback_metrics["val/loss"]


def test_ckpt_path_last_continues_the_newest_run_in_its_folder(tiny_folder, tmp_path):
    runs = tmp_path / "runs"
    # No checkpoint yet: `last` starts afresh, so one command serves the first start and every restart.
    run_cli(tiny_fit_args(tiny_folder, runs, epochs=1, extra=["--ckpt_path=last"]))
    cli = run_cli(tiny_fit_args(tiny_folder, runs, epochs=2, extra=["--ckpt_path=last"]))
    assert cli.trainer.global_step == 8  # continued from epoch 1, not from scratch
    assert sorted(p.name for p in (runs / "lightning_logs").iterdir()) == ["version_0"]  # same folder
    last = torch.load(runs / "lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)
    assert last["global_step"] == 8


def test_epoch_order_is_a_function_of_seed_epoch_and_position():
    from tlx.data.resumable import EpochOrder, SeededDraws

    full = list(EpochOrder(10, seed=1, epoch=3))
    assert list(EpochOrder(10, seed=1, epoch=3, start=4)) == full[4:]  # resumes mid-epoch
    assert list(EpochOrder(10, seed=1, epoch=4)) != full and list(EpochOrder(10, seed=2, epoch=3)) != full
    assert sorted(k % 10 for k in full) == list(range(10))  # a permutation when not weighted
    weighted = list(EpochOrder(10, seed=1, weights=torch.tensor([0.0] * 5 + [1.0] * 5)))
    assert all(k % 10 >= 5 for k in weighted)  # class-balanced draws use the weights
    order = EpochOrder(10, seed=1)
    order.set_epoch(3)
    assert list(order) == full

    class Noise(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return torch.rand(2)  # a random augmentation

    draws = SeededDraws(Noise(), seed=1)
    before = torch.get_rng_state()
    assert torch.equal(draws[full[2]], draws[full[2]]) and not torch.equal(draws[full[2]], draws[full[3]])
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG (dropout) is untouched
