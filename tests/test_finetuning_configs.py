"""Every configs/finetuning/*.yaml runs through the CLI (tiny model and data swapped in)."""

import json
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY_MODEL, TINY_PREPROCESSING
from tests.helpers import run_cli
from tlx.finetuning import FinetuneStrategy

import tests.finetuning_utils  # noqa: F401 - one intra-op thread

CONFIGS = sorted((REPO / "configs" / "finetuning").glob("*.yaml"))


def test_one_config_per_strategy():
    names = {p.stem for p in CONFIGS}
    assert {"feature_extraction", "full", "freeze_unfreeze", "gradual_unfreeze", "layer_decay",
            "discriminative_lr", "bn_frozen_stats", "lora", "bitfit", "l2sp"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_fits(config: Path, tiny_folder, tmp_path):
    cli = run_cli([
        "fit", f"--config={config}",
        f"--model.init_args.backbone={TINY_MODEL['backbone']}",
        "--model.init_args.weights=null",
        f"--model.init_args.preprocessing={json.dumps(TINY_PREPROCESSING)}",
        f"--data.init_args.root={tiny_folder}",
        "--data.init_args.batch_size=4",
        "--data.init_args.num_workers=0",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.max_epochs=1",
        "--trainer.enable_progress_bar=false",
    ])
    strategies = [cb for cb in cli.trainer.callbacks if isinstance(cb, FinetuneStrategy)]
    assert len(strategies) == 1
    assert "params/trainable" in cli.trainer.callback_metrics
    assert "lr-" + type(cli.trainer.optimizers[0]).__name__ + "/head" in cli.trainer.callback_metrics
