"""The CLI end to end on a tiny generated dataset and a tiny model (seconds)."""

import json

from tests.conftest import TINY_MODEL, TINY_PREPROCESSING
from tests.helpers import run_cli


def tiny_fit_args(data_root, out_dir, epochs=1, extra=()):
    return [
        "fit",
        "--model.class_path=tlx.models.ImageClassifier",
        f"--model.init_args.backbone={TINY_MODEL['backbone']}",
        "--model.init_args.weights=null",
        f"--model.init_args.preprocessing={json.dumps(TINY_PREPROCESSING)}",
        "--data.class_path=tlx.data.ImageFolderDataModule",
        f"--data.init_args.root={data_root}",
        "--data.init_args.batch_size=4",
        "--data.init_args.num_workers=0",
        f"--trainer.default_root_dir={out_dir}",
        f"--trainer.max_epochs={epochs}",
        "--trainer.enable_progress_bar=false",
        *extra,
    ]


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
