"""Fixtures (tiny generated image folders, the torchvision weights cache) and the session's
settings; everything else tests share is in tests/helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the network (set before any hub import)

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.helpers import HYMENOPTERA, TORCH_CACHE, make_imagefolder  # noqa: E402

# Tiny convolutions on a loaded 2-core machine: one intra-op thread is ~10x faster than two
# threads fighting the other processes (measured: 0.6 s against 12 s per tiny fit).
torch.set_num_threads(1)


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    return make_imagefolder(tmp_path / "data")


@pytest.fixture
def torch_home_cache(monkeypatch):
    """torchvision's own cache pointed at ../shared/weights (MobileNetV2 IMAGENET1K_V1 inside)."""
    monkeypatch.setenv("TORCH_HOME", str(TORCH_CACHE))
    return TORCH_CACHE


def pytest_collection_modifyitems(config, items):
    if not HYMENOPTERA.is_dir():
        skip = pytest.mark.skip(reason=f"real data not found at {HYMENOPTERA}")
        for item in items:
            if "e2e" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A trained tiny checkpoint and its data (predict and export cases)."""
    from tests.helpers import make_imagefolder, run_cli, tiny_fit_args

    tmp = tmp_path_factory.mktemp("trained")
    root = make_imagefolder(tmp / "data", n_train=6, n_val=3)
    run_cli(tiny_fit_args(root, tmp / "runs", extra=["--trainer.logger=false"]))
    return root, next((tmp / "runs").rglob("best.ckpt"))

