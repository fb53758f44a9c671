"""The fast settings through the CLI: fit on cached features, then test/predict from the checkpoint."""

from __future__ import annotations

import pytest

from tests.helpers import REPO, run_cli, tiny_fit_args

FAST = ["--trainer.callbacks+=tlx.finetuning.FreezeBackbone", "--trainer.callbacks+=tlx.speed.SpeedUp",
        "--trainer.callbacks+=tlx.speed.FeatureCache", "--trainer.callbacks.augmented_views=1"]


def _from_checkpoint(subcommand, data_root, ckpt, *extra):
    args = tiny_fit_args(data_root, ckpt.parent / subcommand)
    args = [subcommand if a == "fit" else a for a in args if not a.startswith("--trainer.max_epochs")]
    return run_cli([*args, f"--ckpt_path={ckpt}", *extra])


def test_fit_on_features_then_validate_and_predict_on_images(tiny_folder, tmp_path):
    cli = run_cli(tiny_fit_args(tiny_folder, tmp_path / "runs", epochs=2, extra=FAST))
    cache = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "FeatureCache")
    assert cache.last_status == {"train": "computed", "val": "computed"}
    fit_acc = float(cli.trainer.callback_metrics["val/acc"])
    ckpt = tmp_path / "runs" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    validate = _from_checkpoint("validate", tiny_folder, ckpt)
    assert float(validate.trainer.callback_metrics["val/acc"]) == pytest.approx(fit_acc, abs=1e-6)
    out = tmp_path / "pred.csv"
    _from_checkpoint("predict", tiny_folder, ckpt, f"--prediction_writer.output={out}")
    assert len(out.read_text().strip().splitlines()) == 1 + 8  # header + the 8 val images


@pytest.mark.parametrize("name", ["hymenoptera_fast.yaml", "hymenoptera_fast_finetune.yaml"])
def test_fast_configs_validate(name, capsys):
    # --print_config parses and type-checks every class path and argument without building anything
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", f"--config={REPO / 'configs' / name}", "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "tlx.speed.SpeedUp" in printed and "precision: bf16-mixed" in printed
    assert ("tlx.speed.FeatureCache" in printed) == (name == "hymenoptera_fast.yaml")
