"""The command line: composition of configs, checkpoints, test/predict, reproducibility, errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch

from tests.helpers import HYMENOPTERA, REPO, Recorder, printed_config, run_cli, tiny_fit_args
from tlx.cli import TLXCLI


def _ckpt(root, name="best.ckpt", version=0):
    return root / "lightning_logs" / f"version_{version}" / "checkpoints" / name


def test_fit_writes_config_classes_checkpoints_and_tensorboard(tiny_folder, tmp_path):
    cli = run_cli(tiny_fit_args(tiny_folder, tmp_path / "runs"))
    log_dir = tmp_path / "runs" / "lightning_logs" / "version_0"
    assert (log_dir / "config.yaml").is_file()
    assert json.loads((log_dir / "run.json").read_text())["class_names"] == ["cat", "dog"]
    assert (log_dir / "checkpoints" / "best.ckpt").is_file()
    assert (log_dir / "checkpoints" / "last.ckpt").is_file()
    assert list(log_dir.glob("events.out.tfevents.*"))
    assert cli.model.class_names == ["cat", "dog"]
    assert "val/acc" in cli.trainer.callback_metrics


def test_print_config_shows_the_whole_recipe(capsys):
    config = printed_config(capsys, "configs/hymenoptera.yaml")
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    assert (model["backbone"], model["head"]["class_path"]) == ("efficientnet_lite0", "tlx.heads.LinearHead")
    assert (config["checkpoint"]["monitor"], config["seed_everything"]) == ("val/acc", 42)
    assert data["root"] == "../shared/data/hymenoptera"
    # the default recipe under the data-only demo config, defaults filled in: the whole recipe
    assert model["optimizer"]["class_path"] == "torch.optim.SGD" and "dampening" in model["optimizer"]["init_args"]
    assert config["trainer"]["callbacks"][0]["class_path"] == "tlx.recipes.LinearProbeFinetune"


def test_tutorial_recipe_is_expressible_in_yaml():
    cli = TLXCLI(args=["--config", str(REPO / "configs/tutorial_finetune.yaml")], run=False)
    cli.model.class_names = ["ants", "bees"]
    cli.model.configure_model()
    config = cli.model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.001, 0.9, 0.0)
    assert isinstance(scheduler, torch.optim.lr_scheduler.StepLR)
    assert (scheduler.step_size, scheduler.gamma) == (7, 0.1)
    assert cli.trainer.max_epochs == 25 and cli.datamodule.hparams.batch_size == 4


def test_frozen_tutorial_trains_only_the_head(tiny_folder, tmp_path):
    """configs/tutorial_frozen.yaml, tiny model and data swapped in: after a real epoch the head's
    weights moved and the backbone is bit-identical, BatchNorm statistics included."""
    cli = run_cli(["fit", "--config", str(REPO / "configs/tutorial_frozen.yaml"),
                   *tiny_fit_args(tiny_folder, tmp_path / "runs")[1:],
                   "--trainer.callbacks+=tests.helpers.Recorder"])
    recorder = next(c for c in cli.trainer.callbacks if isinstance(c, Recorder))
    model = cli.model
    assert cli.trainer.global_step == 4  # 16 training images, batch 4: it did train
    changed = recorder.changed_params(model)
    assert changed and all(n.startswith("head.") for n in changed)
    assert {n for n, _ in model.head.named_parameters(prefix="head")} <= changed
    assert not recorder.changed_bn_buffers(model)
    assert recorder.bn_buffers(model, "backbone.")  # there were statistics to keep


def test_several_configs_compose(tiny_folder, tmp_path):
    override = tmp_path / "override.yaml"
    override.write_text("trainer:\n  max_epochs: 2\n  limit_val_batches: 1\n")
    cli = run_cli([*tiny_fit_args(tiny_folder, tmp_path / "runs"), "--config", str(override)])
    assert cli.trainer.max_epochs == 2 and cli.trainer.current_epoch == 2


def test_rerun_into_the_same_log_directory_does_not_fail(tiny_folder, tmp_path):
    pinned = ["--trainer.logger=lightning.pytorch.loggers.TensorBoardLogger",
              f"--trainer.logger.save_dir={tmp_path / 'runs'}", "--trainer.logger.version=fixed"]
    for _ in range(2):
        run_cli([*tiny_fit_args(tiny_folder, tmp_path / "runs"), *pinned])
    assert (tmp_path / "runs" / "lightning_logs" / "fixed" / "config.yaml").is_file()


def test_same_seed_gives_identical_validation_metrics(tiny_folder, tmp_path):
    results = []
    for run in ("a", "b"):
        cli = run_cli(tiny_fit_args(tiny_folder, tmp_path / run, epochs=2, extra=["--data.init_args.num_workers=1"]))
        results.append({k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")})
    assert results[0] == results[1]
    assert "val/loss" in results[0]


def test_test_and_predict_from_the_checkpoint(tiny_folder, tmp_path):
    fit = run_cli(tiny_fit_args(tiny_folder, tmp_path / "runs", epochs=2))
    best = _ckpt(tmp_path / "runs")
    best_score = float(fit.trainer.checkpoint_callback.best_model_score)
    common = [f"--data.init_args.root={tiny_folder}", "--data.init_args.num_workers=0",
              f"--trainer.default_root_dir={tmp_path / 'eval'}", "--trainer.enable_progress_bar=false",
              f"--ckpt_path={best}"]
    test = run_cli(["test", "--data.class_path=tlx.data.ImageFolderDataModule", *common])
    assert float(test.trainer.callback_metrics["test/acc"]) == pytest.approx(best_score)

    # predict needs nothing but the checkpoint and a folder: classes and preprocessing travel with it.
    out = tmp_path / "predictions.csv"
    run_cli(["predict", f"--ckpt_path={best}", f"--data.init_args.predict_dir={tiny_folder / 'val'}",
             "--data.init_args.num_workers=0", f"--prediction_writer.output={out}",
             f"--trainer.default_root_dir={tmp_path / 'pred'}", "--trainer.enable_progress_bar=false"])
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 8
    assert {r["predicted_class"] for r in rows} <= {"cat", "dog"}
    assert all(0.5 <= float(r["probability"]) <= 1.0 for r in rows)
    assert rows[0]["file"].endswith("val/cat/cat_0.png")


@pytest.mark.multiprocess  # the real `python -m tlx` entry point, in its own process
def test_user_errors_print_a_message_not_a_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tlx", "fit", "--config", "configs/hymenoptera.yaml",
         f"--data.init_args.root={tmp_path / 'no_such_data'}", f"--trainer.default_root_dir={tmp_path}"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert "tlx: error:" in result.stderr and "no_such_data' does not exist" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.e2e
def test_hymenoptera_end_to_end_with_real_weights(tmp_path):
    """The demo (the default recipe: linear probe, then one epoch of fine-tuning) on the real data:
    test and predict from its best checkpoint agree with its validation accuracy."""
    root = tmp_path / "runs"
    common = ["--config", str(REPO / "configs/hymenoptera.yaml"), f"--data.init_args.root={HYMENOPTERA}",
              f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false"]
    fit = run_cli(["fit", *common, "--trainer.max_epochs=1"])
    # the default recipe's result: the best of fine-tuning and the linear probe (best.ckpt)
    val_acc = float(fit.trainer.checkpoint_callback.best_model_score)
    assert val_acc >= 0.9
    test = run_cli(["test", *common, f"--ckpt_path={_ckpt(root)}"])
    assert float(test.trainer.callback_metrics["test/acc"]) == pytest.approx(val_acc)
    out = tmp_path / "pred.csv"
    run_cli(["predict", *common, f"--ckpt_path={_ckpt(root)}", f"--prediction_writer.output={out}"])
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 153
    correct = sum(r["predicted_class"] in r["file"].split("/")[-2] for r in rows)
    assert correct / 153 == pytest.approx(val_acc, abs=1e-6)
    info = json.loads((root / "lightning_logs" / "version_0" / "run.json").read_text())
    assert info["class_names"] == ["ants", "bees"] and info["preprocessing"]["interpolation"] == "bicubic"


def test_data_preprocessing_override_travels_with_the_checkpoint(tiny_folder, tmp_path):
    """data.preprocessing overrides the model's: run.json and the checkpoint record what the data
    fed the model, so predict and export from the checkpoint preprocess as training did."""
    override = {"input_size": 24, "resize_size": 28, "interpolation": "bilinear",
                "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    fit = run_cli(tiny_fit_args(tiny_folder, tmp_path / "runs",
                                extra=[f"--data.init_args.preprocessing={json.dumps(override)}"]))
    assert fit.model.preprocessing.to_dict() == override
    log_dir = tmp_path / "runs" / "lightning_logs" / "version_0"
    assert json.loads((log_dir / "run.json").read_text())["preprocessing"] == override
    saved = torch.load(_ckpt(tmp_path / "runs"), weights_only=True)["hyper_parameters"]["preprocessing"]
    assert saved == override


def test_built_in_safety_callbacks_are_not_doubled(tiny_folder, tmp_path):
    """A config naming tlx's always-on callbacks gets them once, with its own settings."""
    from tlx.callbacks.finite_loss import StopOnNonFinite
    from tlx.callbacks.random_state import RandomState

    cli = run_cli(tiny_fit_args(tiny_folder, tmp_path / "runs", extra=[
        "--trainer.callbacks+=tlx.callbacks.random_state.RandomState",
        "--trainer.callbacks+=tlx.callbacks.finite_loss.StopOnNonFinite",
        "--trainer.callbacks.check_gradients=false"]))
    stops = [cb for cb in cli.trainer.callbacks if isinstance(cb, StopOnNonFinite)]
    assert len(stops) == 1 and stops[0].check_gradients is False
    assert sum(isinstance(cb, RandomState) for cb in cli.trainer.callbacks) == 1


def test_fit_help_says_what_tlx_is_and_where_the_data_options_are(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", "--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert out.startswith("usage: tlx [options] fit")
    assert "tlx: transfer learning for images on PyTorch Lightning" in out
    assert "tlx fit --data.help ImageFolderDataModule" in out
    assert "Lightning Trainer command line tool" not in out
    with pytest.raises(SystemExit):
        run_cli(["fit", "--data.help", "ImageFolderDataModule"])
    assert "--data.root ROOT" in capsys.readouterr().out


def test_tlx_log_lines_go_to_the_current_stderr_even_after_the_old_one_closed(monkeypatch):
    import io
    import logging
    import sys

    from tlx.cli import _configure_logging

    logger = logging.getLogger("tlx")
    monkeypatch.setattr(logger, "handlers", [])
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    _configure_logging()  # while the first stream is sys.stderr
    first.close()  # what a test harness or a notebook cell does with its stream
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    logger.info("after the swap")
    assert "[tlx] INFO: after the swap" in second.getvalue()
