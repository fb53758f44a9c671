"""predict over a list of files or a folder, CSV with top-k, and test-time augmentation."""

from __future__ import annotations

import csv

import pytest
import torch
from PIL import Image

from tests.conftest import TINY_MODEL, write_image
from tests.helpers import run_cli
from tests.test_cli_smoke import tiny_fit_args
from tlx.data import ImageFolderDataModule
from tlx.data.file_list import read_file_list
from tlx.data.transforms import eval_transform
from tlx.data.tta import tta_transform
from tlx.errors import DataError
from tlx.models import ImageClassifier


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from tests.conftest import make_imagefolder

    tmp = tmp_path_factory.mktemp("pred")
    root = make_imagefolder(tmp / "data", n_train=6, n_val=3)
    run_cli(tiny_fit_args(root, tmp / "runs", extra=["--trainer.logger=false"]))
    return root, next((tmp / "runs").rglob("best.ckpt"))


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predict_a_list_file_with_tta_writes_topk_csv(tiny_ckpt, tmp_path):
    root, ckpt = tiny_ckpt
    files = sorted((root / "val").rglob("*.png"))[:4]
    list_file = tmp_path / "images.txt"
    # relative to the list file's folder, a comment and a blank line
    (tmp_path / "imgs").mkdir()
    for i, f in enumerate(files):
        Image.open(f).save(tmp_path / "imgs" / f"{i}.png")
    list_file.write_text("# to classify\nimgs/0.png\n\nimgs/1.png\nimgs/2.png\nimgs/3.png\n")
    out = tmp_path / "preds.csv"
    cli = run_cli(["predict", f"--ckpt_path={ckpt}", f"--data.init_args.predict_files={list_file}",
                   "--data.init_args.tta=flip_crops", "--data.init_args.num_workers=0",
                   "--prediction_writer.top_k=2", f"--prediction_writer.output={out}",
                   "--trainer.logger=false", "--trainer.enable_progress_bar=false"])
    rows = read_csv(out)
    assert [r["file"] for r in rows] == [str(tmp_path / "imgs" / f"{i}.png") for i in range(4)]
    assert list(rows[0]) == ["file", "predicted_class", "probability", "class_2", "probability_2"]
    model = cli.model.eval()
    for row in rows:
        assert {row["predicted_class"], row["class_2"]} == {"cat", "dog"}
        p1, p2 = float(row["probability"]), float(row["probability_2"])
        assert p1 >= p2 and abs(p1 + p2 - 1) < 1e-4
        # the CSV holds the average over the 10 views of this very file
        views = tta_transform(model.data_config, "flip_crops")(Image.open(row["file"]).convert("RGB"))
        with torch.no_grad():
            probs = model(views).softmax(-1).mean(0)
        assert abs(float(probs[model.class_names.index(row["predicted_class"])]) - p1) < 1e-4


def test_predict_step_averages_views_and_flip_tta_equals_manual_flip():
    model = ImageClassifier(**TINY_MODEL, class_names=["a", "b", "c"]).eval()
    img = Image.new("RGB", (50, 40))
    img.putdata([(x * 5 % 256, y * 6 % 256, (x * y) % 256) for y in range(40) for x in range(50)])
    views = tta_transform(model.data_config, "flip")(img)
    x = eval_transform(model.data_config)(img)
    assert torch.allclose(views[0], x) and torch.allclose(views[1], x.flip(-1))
    with torch.no_grad():
        out = model.predict_step((views[None], torch.tensor([0])), 0)
        expected = (model(x[None]).softmax(-1) + model(x.flip(-1)[None]).softmax(-1)) / 2
    assert torch.allclose(out["probs"], expected, atol=1e-6)
    assert tta_transform(model.data_config, "crops")(img).shape == (5, 3, 32, 32)


def test_predict_files_errors_name_the_entry(tmp_path):
    good = write_image(tmp_path / "a.png", (10, 20, 30))
    assert read_file_list([str(good)]) == [str(good)]
    assert read_file_list(str(good)) == [str(good)]
    (tmp_path / "list.txt").write_text(f"{good}\nmissing.jpg\n")
    with pytest.raises(DataError, match="missing.jpg"):
        read_file_list(str(tmp_path / "list.txt"))
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "list2.txt").write_text("notes.txt\n")
    with pytest.raises(DataError, match="not an image"):
        read_file_list(str(tmp_path / "list2.txt"))
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(DataError, match="lists no image"):
        read_file_list(str(tmp_path / "empty.txt"))
    with pytest.raises(DataError, match="neither an image"):
        ImageFolderDataModule(predict_files=str(tmp_path / "nope.txt"), preprocessing=TINY_MODEL["data_config"]).setup("predict")
