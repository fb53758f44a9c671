"""The default recipe (tlx.recipes): step budget, LP-FT's start from the probe, the fall-back to
the probe, and ``python -m tlx fit --data.root DIR`` with no config."""

from __future__ import annotations

import json

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint

from tests.helpers import TINY_MODEL, TINY_PREPROCESSING, make_imagefolder, run_cli, tiny_trainer
from tlx.cli import with_default_recipe
from tlx.data import ImageFolderDataModule
from tlx.metrics import wilson_interval
from tlx.models import ImageClassifier
from tlx.recipes import DEFAULT_RECIPE, LinearProbeFinetune, step_budget
from tlx.recipes.budget import epochs_for
from tlx.recipes.lpft import bn_stats_frozen


def test_step_budget_scales_with_the_data_between_floor_and_cap():
    # ceil(2 * n / batch), at least 50, at most 300
    assert step_budget(100, 32) == 50  # 7 steps by the formula: the floor
    assert step_budget(1000, 32) == 63
    assert step_budget(2000, 32) == 125
    assert step_budget(2000, 64) == 63
    assert step_budget(100_000, 32) == 300  # the cap
    assert step_budget(1000, 32, epochs=4, min_steps=10, max_steps=1000) == 125
    # run as whole epochs: 50 steps of 8 batches (drop_last) are 7 epochs
    assert epochs_for(50, 256, 32) == 7 and epochs_for(50, 20, 32) == 50


def test_bn_rule_and_interval():
    assert bn_stats_frozen(32, 50_000) and bn_stats_frozen(128, 500) and not bn_stats_frozen(128, 50_000)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(75, 100)
    assert (lo, hi) == (pytest.approx(0.6569, abs=1e-3), pytest.approx(0.8245, abs=1e-3))


class HeadAtStart(Callback):
    def on_train_start(self, trainer, pl_module):
        self.head = {k: v.clone() for k, v in pl_module.head.state_dict().items()}


class ModesAtStart(Callback):
    def on_train_start(self, trainer, pl_module):
        self.bn = [m.training for m in pl_module.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]


class ShiftClassesAfterEachStep(Callback):
    """Sabotage: the head's rows rolled by one class after every step, so fine-tuning's
    validations are worse than the probe's."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        with torch.no_grad():
            for p in pl_module.head.parameters():
                p.copy_(p.roll(1, dims=0))


def _fit(tmp_path, *callbacks, lr=3e-4, max_steps=6, **lpft_kwargs):
    data = make_imagefolder(tmp_path / "data", classes=("cat", "dog", "fox"), n_train=8, n_val=4)
    model = ImageClassifier(**TINY_MODEL, optimizer=lambda p: torch.optim.AdamW(p, lr=lr))
    dm = ImageFolderDataModule(str(data), batch_size=4, num_workers=0)
    lpft = LinearProbeFinetune(min_steps=1, probe_epochs=30, probe_lr=0.05, **lpft_kwargs)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/acc", mode="max", filename="best")
    trainer = tiny_trainer(tmp_path, max_steps=max_steps, callbacks=[lpft, ckpt, *callbacks], enable_checkpointing=True)
    trainer.fit(model, datamodule=dm)
    return trainer, model, lpft, ckpt


def test_finetuning_starts_from_the_probes_head(tmp_path):
    start, modes = HeadAtStart(), ModesAtStart()
    trainer, model, lpft, _ = _fit(tmp_path, start, modes)
    # the probe's feature extraction leaves the frozen statistics frozen (small data: the BN rule
    # freezes every BatchNorm): fine-tuning starts from the features the probe was fitted on
    assert lpft.freeze_bn_stats and modes.bn and not any(modes.bn)
    assert lpft.probe_head is not None and lpft.probe_acc is not None
    for name, value in lpft.probe_head.items():
        assert torch.equal(start.head[name], value)
    # the probe really trained the head (it is not the random initialisation), and ran steps after
    assert lpft.probe_acc > 1 / 3
    assert trainer.global_step == 6 and lpft.total_steps == 6
    assert trainer.max_epochs == 1  # 24 images at batch 4: the 6 steps are one epoch


def test_a_tie_in_float_noise_is_not_a_win():
    from tlx.recipes.lpft import beats

    n = 563
    assert not beats(490 / n + 1e-7, 490 / n, n)  # the same 490 images, counted by two codes
    assert beats(491 / n, 490 / n, n) and not beats(None, 0.5, n) and not beats(489 / n, 490 / n, n)


def test_falls_back_to_the_probe_when_finetuning_is_worse(tmp_path, caplog):
    with caplog.at_level("INFO", logger="tlx"):
        trainer, model, lpft, ckpt = _fit(tmp_path, ShiftClassesAfterEachStep())
    assert lpft.outcome["result"] == "probe"
    assert lpft.outcome["finetune_best_acc"] <= lpft.outcome["probe_acc"]
    assert "did not beat the linear probe" in caplog.text and "95% CI" in caplog.text
    # the model in memory and best.ckpt are the probe's: its head, the backbone it started from
    for name, value in lpft.probe_head.items():
        assert torch.equal(model.head.state_dict()[name], value)
    saved = torch.load(ckpt.best_model_path, weights_only=True)["state_dict"]
    for name, value in lpft.probe_head.items():
        assert torch.equal(saved[f"head.{name}"], value)
    assert all(torch.equal(saved[f"backbone.{k}"], v) for k, v in lpft._backbone_start.items())
    assert float(ckpt.best_model_score) == pytest.approx(lpft.probe_acc)


def test_reestimated_bn_statistics_are_what_the_probe_and_the_fall_back_use(tmp_path, caplog):
    with caplog.at_level("INFO", logger="tlx"):
        trainer, model, lpft, ckpt = _fit(tmp_path, ShiftClassesAfterEachStep(), reestimate_bn=True)
    choice = lpft.bn_choice
    assert choice["kept"] == "reestimated" and choice["shift"] > 0 and "re-estimated on the training images" in caplog.text
    assert lpft.probe_acc == choice["reestimated_acc"]
    # the fall-back restores the re-estimated statistics (the ones the probe head was fitted under),
    # not the pretrained ones, also when rebuilt after a resume (bn_start in the callback's state)
    assert lpft.outcome["result"] == "probe" and lpft.bn_start
    fresh = {f"backbone.{k}": v for k, v in lpft._pretrained_state(model).items()}
    saved = torch.load(ckpt.best_model_path, weights_only=True)["state_dict"]
    for name, value in lpft.bn_start.items():
        assert torch.equal(saved[f"backbone.{name}"], value) and torch.equal(fresh[f"backbone.{name}"], value)
    assert any(not torch.equal(lpft.bn_start[n], ImageClassifier(**TINY_MODEL).backbone.state_dict()[n])
               for n in lpft.bn_start if "running_mean" in n)
    assert lpft.state_dict()["bn_start"] is lpft.bn_start


def test_bn_statistics_chosen_by_the_probes_validation(tmp_path):
    _, _, lpft, _ = _fit(tmp_path, max_steps=1, reestimate_bn=None)
    choice = lpft.bn_choice
    better = "reestimated" if choice["reestimated_acc"] > choice["pretrained_acc"] else "pretrained"
    assert choice["kept"] == better
    assert lpft.probe_acc == max(choice["reestimated_acc"], choice["pretrained_acc"])
    assert (lpft.bn_start is not None) == (better == "reestimated")
    _, _, never, _ = _fit(tmp_path / "never", max_steps=1)  # the default: never
    assert never.bn_choice == {} and never.bn_start is None


def test_the_default_recipe_only_without_a_model_config(tmp_path):
    full = tmp_path / "full.yaml"
    full.write_text("model:\n  class_path: tlx.models.ImageClassifier\n")
    data_only = tmp_path / "data.yaml"
    data_only.write_text("data:\n  init_args:\n    root: /x\n")
    assert with_default_recipe(["fit", "--data.root", "/x"]) == ["fit", "--config", str(DEFAULT_RECIPE), "--data.root", "/x"]
    assert with_default_recipe(["fit", "--config", str(data_only)])[2] == str(DEFAULT_RECIPE)
    assert with_default_recipe(["fit", "--config", str(full)]) == ["fit", "--config", str(full)]
    assert with_default_recipe(["fit", "--model.class_path=tlx.models.ImageClassifier"])[1] != "--config"
    assert with_default_recipe(["test", "--data.root", "/x"]) == ["test", "--data.root", "/x"]


def test_fit_with_no_config_runs_the_default_recipe(tmp_path):
    data = make_imagefolder(tmp_path / "data", n_train=6, n_val=3)
    cli = run_cli(["fit", "--data.root", str(data),
                   # a tiny model and a short budget keep the test fast; nothing else is configured
                   f"--model.init_args.backbone={TINY_MODEL['backbone']}", "--model.init_args.weights=null",
                   f"--model.init_args.preprocessing={json.dumps(TINY_PREPROCESSING)}",
                   "--data.init_args.num_workers=0", "--trainer.max_steps=3",
                   f"--trainer.default_root_dir={tmp_path / 'runs'}", "--trainer.enable_progress_bar=false"])
    lpft = [c for c in cli.trainer.callbacks if isinstance(c, LinearProbeFinetune)]
    assert len(lpft) == 1 and lpft[0].outcome["result"] in ("probe", "finetuned")
    assert cli.trainer.global_step == 3
    assert isinstance(cli.model.optimizers().optimizer, torch.optim.SGD)
    scheduler = cli.trainer.lr_scheduler_configs[0]
    assert scheduler.interval == "step" and scheduler.scheduler.total_steps == 3  # the schedule spans the budget
    ckpt = tmp_path / "runs" / "lightning_logs" / "version_0" / "checkpoints" / "best.ckpt"
    assert ckpt.is_file()


def test_the_default_recipe_runs_without_a_logger(tmp_path):
    # the recipe's LearningRateMonitor would refuse a run with `--trainer.logger false`: it is dropped
    from lightning.pytorch.callbacks import LearningRateMonitor

    data = make_imagefolder(tmp_path / "data", n_train=6, n_val=3)
    cli = run_cli(["fit", "--data.root", str(data), f"--model.init_args.backbone={TINY_MODEL['backbone']}",
                   "--model.init_args.weights=null", f"--model.init_args.preprocessing={json.dumps(TINY_PREPROCESSING)}",
                   "--data.init_args.num_workers=0", "--trainer.max_steps=2", "--trainer.logger=false",
                   f"--trainer.default_root_dir={tmp_path / 'runs'}", "--trainer.enable_progress_bar=false"])
    assert cli.trainer.global_step == 2 and cli.trainer.logger is None
    assert not any(isinstance(c, LearningRateMonitor) for c in cli.trainer.callbacks)


def test_result_order_probe_then_finetuned_then_wise_ft():
    from tlx.recipes.lpft import result_of

    n = 100
    assert result_of(0.90, 0.90, 0.90, n) == "probe"  # ties keep the probe
    assert result_of(0.90, 0.91, 0.91, n) == "finetuned"
    assert result_of(0.90, 0.91, 0.92, n) == "wise_ft"
    assert result_of(0.90, 0.85, 0.91, n) == "wise_ft"  # above the probe, which fine-tuning did not beat
    assert result_of(0.90, None, None, n) == "probe"


class EndWeights(Callback):
    def on_train_end(self, trainer, pl_module):  # before LP-FT's on_fit_end picks the result
        self.state = {k: v.clone() for k, v in pl_module.state_dict().items()}


def test_wise_ft_curve_is_the_interpolated_models_validation(tmp_path):
    from tlx.fusion import interpolate_weights

    end = EndWeights()
    trainer, model, lpft, _ = _fit(tmp_path, end, wise_alphas=[0.0, 0.5, 1.0])
    curve = lpft.outcome["wise_ft_curve"]
    assert [p["alpha"] for p in curve] == [0.5]  # the ends are the probe and fine-tuning's own validations
    # alpha 0.5, rebuilt here and validated through Lightning's own loop, gives the curve's accuracy
    probe = {**{f"backbone.{k}": v for k, v in lpft._backbone_start.items()},
             **{f"head.{k}": v for k, v in lpft.probe_head.items()}}
    model.load_state_dict(interpolate_weights({**end.state, **probe}, end.state, 0.5))
    metrics = trainer.validate(model, datamodule=trainer.datamodule, verbose=False)[0]
    assert metrics["val/acc"] == pytest.approx(curve[0]["val_acc"], abs=1e-6)


class WiseWins(LinearProbeFinetune):
    """Forces WiSE-FT to win, with real interpolated weights (alpha 0.5)."""

    def _wise_ft(self, trainer, pl_module):
        from tlx.fusion import interpolate_weights

        backbone = interpolate_weights(self._backbone_start, pl_module.backbone.state_dict(), 0.5)
        head = interpolate_weights(self.probe_head, pl_module.head.state_dict(), 0.5)
        return {"alpha": 0.5, "val_acc": 1.0, "backbone": backbone, "head": head}


def test_a_winning_wise_ft_is_the_model_and_the_best_checkpoint(tmp_path, caplog):
    data = make_imagefolder(tmp_path / "data", classes=("cat", "dog", "fox"), n_train=8, n_val=4)
    model = ImageClassifier(**TINY_MODEL, optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3))
    lpft = WiseWins(min_steps=1, probe_epochs=1, probe_lr=1e-6)  # a probe left near chance, below WiSE's 100%
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/acc", mode="max", filename="best")
    trainer = tiny_trainer(tmp_path, max_steps=6, callbacks=[lpft, ckpt], enable_checkpointing=True)
    with caplog.at_level("INFO", logger="tlx"):
        trainer.fit(model, datamodule=ImageFolderDataModule(str(data), batch_size=4, num_workers=0))
    assert lpft.outcome["result"] == "wise_ft" and lpft.outcome["wise_ft_alpha"] == 0.5
    assert "WiSE-FT at alpha 0.5" in caplog.text and "written over best.ckpt" in caplog.text
    saved = torch.load(ckpt.best_model_path, weights_only=True)["state_dict"]
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    # the head is really between the probe's and the fine-tuned one (not either end)
    name = next(iter(lpft.probe_head))
    assert not torch.equal(model.head.state_dict()[name], lpft.probe_head[name])
    assert float(ckpt.best_model_score) == 1.0
