"""Decoded-image cache: same pixels as decoding the files, fresh augmentation every epoch."""

from __future__ import annotations

import torch
from lightning.pytorch import seed_everything

from tests.helpers import TINY_MODEL, TINY_PREPROCESSING, tiny_trainer, write_image
from tlx.data import ImageFolderDataModule
from tlx.data.decoded_cache import DecodedImages
from tlx.models import ImageClassifier
from tlx.preprocessing import Preprocessing


def _datamodule(root, **kwargs) -> ImageFolderDataModule:
    dm = ImageFolderDataModule(root=str(root), num_workers=0, preprocessing=TINY_PREPROCESSING, **kwargs)
    dm.setup("fit")
    return dm


def test_eval_view_is_pixel_identical_to_the_plain_loader(tiny_folder, tmp_path):
    # a large JPEG and an odd-shaped PNG besides the tiny PNGs: decode drafts and resizes matter
    write_image(tiny_folder / "val" / "cat" / "big.jpg", (200, 40, 40), size=300, seed=7)
    write_image(tiny_folder / "val" / "dog" / "wide.png", (40, 40, 200), size=20, seed=8)
    plain, cached = _datamodule(tiny_folder), _datamodule(tiny_folder, cache_images=True)
    a, b = plain.eval_dataset("val"), cached.eval_dataset("val")
    assert len(a) == len(b) == 10
    for i in range(len(a)):
        (xa, ya), (xb, yb) = a[i], b[i]
        assert ya == yb
        assert torch.equal(xa, xb), a.samples[i][0]


def test_cached_images_are_resized_once_and_train_crops_stay_random(tiny_folder):
    dm = _datamodule(tiny_folder, cache_images=True)
    train = dm.train_dataset()
    assert dm._decoded["train"].status == "computed"
    img = dm._decoded["train"][0]
    assert img.dtype == torch.uint8 and min(img.shape[1:]) == TINY_PREPROCESSING["resize_size"]
    seed_everything(0)
    first = train[0][0]
    assert any(not torch.equal(first, train[0][0]) for _ in range(5))  # new crop/flip per draw
    assert dm.train_dataset().images is train.images  # built once per data module


def test_disk_cache_is_memory_mapped_and_reused(tiny_folder, tmp_path):
    paths = sorted(str(p) for p in (tiny_folder / "train").rglob("*.png"))
    first = DecodedImages(paths, 36, cache_dir=tmp_path / "c")
    again = DecodedImages(paths, 36, cache_dir=tmp_path / "c")
    assert (first.status, again.status) == ("computed", "disk")
    assert all(torch.equal(first[i], again[i]) for i in range(len(paths)))
    assert DecodedImages(paths, 40, cache_dir=tmp_path / "c").status == "computed"  # other size: rebuilt
    write_image(tiny_folder / "train" / "cat" / "cat_0.png", (1, 2, 3), size=41)
    assert DecodedImages(paths, 36, cache_dir=tmp_path / "c").status == "computed"  # file changed


def test_fit_with_cached_images_and_workers(tiny_folder, tmp_path):
    seed_everything(0)
    model = ImageClassifier(**TINY_MODEL)
    dm = ImageFolderDataModule(root=str(tiny_folder), batch_size=4, num_workers=2, cache_images=True,
                               image_cache_dir=str(tmp_path / "img"))
    trainer = tiny_trainer(tmp_path, max_epochs=2)
    trainer.fit(model, datamodule=dm)
    assert "val/acc" in trainer.callback_metrics
    assert len(list((tmp_path / "img").glob("images-*.npy"))) == 4  # train and val: pixels + index
    assert Preprocessing.from_dict(TINY_PREPROCESSING) == dm.preprocessing


def test_test_split_falling_back_to_val_reuses_its_decoded_cache(tmp_path):
    from tests.helpers import make_imagefolder

    root = make_imagefolder(tmp_path / "data")  # train/val, no test folder
    dm = _datamodule(root, cache_images=True)
    val = dm.eval_dataset("val")
    test = dm.eval_dataset("test")
    assert test.images is val.images and sorted(dm._decoded) == ["val"]


def test_hidden_files_are_not_predicted(tmp_path):
    """macOS AppleDouble files (._x.jpg) are skipped in predict_dir as in the class folders."""
    from tests.helpers import write_image
    from tlx.data.datasets import image_files

    write_image(tmp_path / "a.png", (10, 20, 30))
    (tmp_path / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    assert image_files(tmp_path) == [str(tmp_path / "a.png")]
