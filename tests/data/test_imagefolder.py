"""ImageFolderDataModule: both layouts, preprocessing from the weights, and every bad-data case."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import COLOURS, HYMENOPTERA, TINY_PREPROCESSING, make_imagefolder, write_image
from tlx.data import ImageFolderDataModule
from tlx.data.images import load_rgb
from tlx.errors import DataError
from tlx.preprocessing import Preprocessing


def datamodule(root, **kwargs) -> ImageFolderDataModule:
    kwargs = {"num_workers": 0, "batch_size": 4, "preprocessing": TINY_PREPROCESSING, **kwargs}
    return ImageFolderDataModule(root=str(root), **kwargs)


def test_split_layout_gives_classes_and_loaders_sized_by_the_preprocessing(tiny_folder):
    dm = datamodule(tiny_folder)
    assert dm.class_names == ["cat", "dog"]
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    assert len(dm.samples("train")) == 16 and len(dm.samples("val")) == 8
    xv, yv = next(iter(dm.val_dataloader()))
    assert xv.shape == (4, 3, 32, 32)
    # Normalised with the configured mean/std: values in [-1, 1] for mean = std = 0.5.
    assert xv.min() >= -1.0 and xv.max() <= 1.0


def test_preprocessing_comes_from_the_model_weights(tiny_folder):
    from lightning.pytorch import Trainer

    from tlx.models import ImageClassifier

    model = ImageClassifier(backbone="efficientnet_lite0")
    dm = ImageFolderDataModule(root=str(tiny_folder), num_workers=0)
    trainer = Trainer(accelerator="cpu", logger=False)
    trainer.strategy.connect(model)
    dm.trainer = trainer
    dm.setup("validate")
    assert dm.preprocessing == model.backbone.preprocessing
    x, _ = next(iter(dm.val_dataloader()))
    assert x.shape[-2:] == (224, 224)


def test_single_folder_layout_is_split_stratified_and_seeded(tmp_path):
    root = make_imagefolder(tmp_path / "flat", classes=("cat", "dog", "fox"), n_train=8, n_val=2, split=False)
    dm = datamodule(root, val_split=0.3, split_seed=7)
    train, val = dm.samples("train"), dm.samples("val")
    assert Counter(label for _, label in val) == {0: 3, 1: 3, 2: 3}
    assert not set(train) & set(val) and len(train) + len(val) == 30
    again = datamodule(root, val_split=0.3, split_seed=7)
    assert again.samples("val") == val
    other = datamodule(root, val_split=0.3, split_seed=8)
    assert other.samples("val") != val
    # No test folder: testing uses the validation split.
    assert dm.samples("test") == val


def test_classes_that_differ_between_train_and_val(tiny_folder):
    (tiny_folder / "val" / "dog").rename(tiny_folder / "val" / "wolf")
    with pytest.raises(DataError, match=r"only in the first: \['dog'\]; only in the second: \['wolf'\]"):
        datamodule(tiny_folder).samples("train")


def test_files_that_are_not_images_are_skipped_and_reported(tiny_folder, caplog):
    (tiny_folder / "train" / "cat" / "notes.txt").write_text("hello")
    write_image(tiny_folder / "train" / "cat" / "placeholder.gif", (0, 0, 0), fmt="GIF")
    with caplog.at_level(logging.WARNING, logger="tlx"):
        samples = datamodule(tiny_folder).samples("train")
    assert len(samples) == 16
    assert "skipped 2 file(s) that are not images by extension" in caplog.text
    assert "placeholder.gif" in caplog.text


@pytest.mark.e2e
def test_hymenoptera_placeholder_gif_is_not_an_ant(caplog):
    with caplog.at_level(logging.WARNING, logger="tlx"):
        dm = datamodule(HYMENOPTERA, verify_images=False)
        train = dm.samples("train")
    assert Counter(label for _, label in train) == {0: 123, 1: 121}
    assert "imageNotFound.gif" in caplog.text


def test_corrupt_and_truncated_images_are_skipped_before_training(tiny_folder, caplog):
    good = write_image(tiny_folder / "train" / "cat" / "photo.jpg", COLOURS["cat"], size=64)
    data = good.read_bytes()
    (tiny_folder / "train" / "cat" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tiny_folder / "train" / "dog" / "garbage.png").write_bytes(b"not a png at all")
    (tiny_folder / "train" / "dog" / "empty.jpg").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="tlx"):
        dm = datamodule(tiny_folder)
        dm.setup("fit")
    names = {p.rsplit("/", 1)[-1] for p, _ in dm.samples("train")}
    assert "photo.jpg" in names and not names & {"truncated.jpg", "garbage.png", "empty.jpg"}
    assert "skipped 3 unreadable image(s)" in caplog.text
    for name in ("truncated.jpg", "garbage.png", "empty.jpg (empty file (0 bytes))"):
        assert name in caplog.text
    # Every remaining file loads: an epoch cannot die on a bad file.
    assert sum(len(y) for _, y in dm.train_dataloader()) == 16  # 17 files, drop_last with batch 4


@pytest.mark.parametrize(
    "mode,make",
    [
        ("L", lambda: Image.new("L", (20, 10), 128)),
        ("RGBA", lambda: Image.new("RGBA", (20, 10), (255, 0, 0, 0))),
        ("P", lambda: Image.new("RGB", (20, 10), (0, 255, 0)).convert("P")),
        ("CMYK", lambda: Image.new("CMYK", (20, 10), (0, 255, 255, 0))),
        ("I;16", lambda: Image.fromarray(np.full((10, 20), 65535, dtype=np.uint16))),
    ],
)
def test_every_image_mode_loads_as_rgb(tmp_path, mode, make):
    img = make()
    assert img.mode == mode
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I;16") else "x.png")
    img.save(path)
    rgb = load_rgb(path)
    assert rgb.mode == "RGB" and rgb.size == (20, 10)
    pixel = rgb.getpixel((5, 5))
    expected = {"L": (128,) * 3, "RGBA": (255, 255, 255), "P": (0, 255, 0), "CMYK": (255, 0, 0), "I;16": (255,) * 3}
    assert pixel == expected[mode]


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: viewers show it 20 x 40
    img.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_rgb(tmp_path / "rotated.jpg").size == (20, 40)


def test_fast_decode_keeps_enough_resolution_for_the_resize(tmp_path):
    write_image(tmp_path / "big.jpg", (10, 200, 10), size=1600)
    img = load_rgb(tmp_path / "big.jpg", min_short_side=256)
    assert 256 <= min(img.size) < 1600


def test_mixup_gives_soft_targets_and_balanced_sampling_evens_classes(tmp_path):
    root = tmp_path / "imbalanced"
    make_imagefolder(root, classes=("cat",), n_train=24, n_val=2)
    make_imagefolder(root, classes=("dog",), n_train=4, n_val=2)
    dm = datamodule(root, mixup_alpha=0.4, batch_size=8)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert y.shape == (8, 2) and torch.allclose(y.sum(1), torch.ones(8))
    torch.manual_seed(0)
    balanced = datamodule(root, balanced_sampling=True, batch_size=28)
    balanced.setup("fit")
    labels = torch.cat([y for _, y in balanced.train_dataloader()])
    assert 0.3 < labels.float().mean() < 0.7  # dog is 1/7 of the files but about half the draws


def test_predict_over_a_folder_of_unlabelled_images(tmp_path, tiny_folder):
    folder = tmp_path / "unlabelled"
    for i in range(3):
        write_image(folder / "sub" / f"{i}.png", (1, 2, 3))
    dm = datamodule(tiny_folder, predict_dir=str(folder))
    dm.setup("predict")
    assert [p.rsplit("/", 1)[-1] for p in dm.predict_paths] == ["0.png", "1.png", "2.png"]
    x, index = next(iter(dm.predict_dataloader()))
    assert x.shape == (3, 3, 32, 32) and index.tolist() == [0, 1, 2]
    with pytest.raises(DataError, match="predict_dir .*missing' does not exist"):
        datamodule(tiny_folder, predict_dir=str(tmp_path / "missing")).setup("predict")


def test_preprocessing_round_trips_as_plain_data():
    cfg = Preprocessing.from_dict(TINY_PREPROCESSING)
    assert Preprocessing.from_dict(cfg.to_dict()) == cfg
