"""Shared fixtures: tiny generated image folders and tiny models, plus paths to the real data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = (REPO / ".." / "shared").resolve()
HYMENOPTERA = SHARED / "data" / "hymenoptera"
OFFICE31 = SHARED / "data" / "office31"
TORCH_CACHE = SHARED / "weights"

# Preprocessing for tiny generated images: keeps unit tests fast whatever the backbone.
TINY_PREPROCESSING = {"input_size": 32, "resize_size": 36, "interpolation": "bilinear",
                      "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
# A timm test model (0.1 M parameters), random init: no download.
TINY_MODEL = {"backbone": "timm:test_efficientnet", "weights": None, "preprocessing": TINY_PREPROCESSING}

COLOURS = {"cat": (200, 40, 40), "dog": (40, 40, 200), "fox": (40, 200, 40)}


def write_image(path: Path, colour: tuple[int, int, int], size: int = 40, seed: int = 0, fmt: str | None = None) -> Path:
    """A noisy image of one dominant colour: classes are learnable, files differ."""
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(colour)[None, None, :] + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def make_imagefolder(root: Path, classes=("cat", "dog"), n_train: int = 8, n_val: int = 4, split: bool = True) -> Path:
    """``root/{train,val}/<class>/*.png`` (or ``root/<class>/*.png`` when ``split`` is False)."""
    seed = 0
    for cls in classes:
        parts = (("train", n_train), ("val", n_val)) if split else (("", n_train + n_val),)
        for part, n in parts:
            for i in range(n):
                seed += 1
                write_image(root / part / cls / f"{cls}_{i}.png", COLOURS[cls], seed=seed)
    return root


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


os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the network
