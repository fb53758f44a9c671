"""k labelled images per class for training, the rest for validation."""

import pytest

from tests.helpers import make_imagefolder
from tlx.data.fewshot import FewShotImageFolder
from tlx.errors import DataError


def test_k_per_class_and_rest_validates(tmp_path):
    root = make_imagefolder(tmp_path / "d", n_train=6, n_val=3, split=False)  # 9 per class
    dm = FewShotImageFolder(str(root), shots=2, num_workers=0)
    train, val = dm.samples("train"), dm.samples("val")
    assert sorted(label for _, label in train) == [0, 0, 1, 1]
    assert len(val) == 14 and not set(train) & set(val)
    again = FewShotImageFolder(str(root), shots=2, num_workers=0)
    assert again.samples("train") == train  # seeded


def test_split_layout_keeps_val_folder(tiny_folder):
    dm = FewShotImageFolder(str(tiny_folder), shots=3, num_workers=0)
    assert len(dm.samples("train")) == 6
    assert all("/val/" in p for p, _ in dm.samples("val"))


def test_too_few_images(tmp_path):
    root = make_imagefolder(tmp_path / "d", n_train=2, n_val=0, split=False)
    with pytest.raises(DataError, match="shots=5"):
        FewShotImageFolder(str(root), shots=5, num_workers=0).samples("train")
