"""The CLI ways to look at a model: predict (top-k CSV, file lists, TTA), export, lr_find; tiny data."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import TINY_MODEL, TINY_PREPROCESSING, run_cli, tiny_fit_args, write_image
from tlx.data import ImageFolderDataModule
from tlx.data.file_list import read_file_list
from tlx.data.transforms import eval_transform
from tlx.data.tta import tta_transform
from tlx.errors import DataError
from tlx.models import ImageClassifier


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
                   "--trainer.logger=false", "--trainer.enable_progress_bar=false",
                   f"--trainer.default_root_dir={tmp_path}"])
    rows = read_csv(out)
    assert [r["file"] for r in rows] == [str(tmp_path / "imgs" / f"{i}.png") for i in range(4)]
    assert list(rows[0]) == ["file", "predicted_class", "probability", "class_2", "probability_2"]
    model = cli.model.eval()
    for row in rows:
        assert {row["predicted_class"], row["class_2"]} == {"cat", "dog"}
        p1, p2 = float(row["probability"]), float(row["probability_2"])
        assert p1 >= p2 and abs(p1 + p2 - 1) < 1e-4
        # the CSV holds the average over the 10 views of this very file
        views = tta_transform(model.preprocessing, "flip_crops")(Image.open(row["file"]).convert("RGB"))
        with torch.no_grad():
            probs = model(views).softmax(-1).mean(0)
        assert abs(float(probs[model.class_names.index(row["predicted_class"])]) - p1) < 1e-4


def test_predict_step_averages_views_and_flip_tta_equals_manual_flip():
    model = ImageClassifier(**TINY_MODEL, class_names=["a", "b", "c"]).eval()
    img = Image.new("RGB", (50, 40))
    img.putdata([(x * 5 % 256, y * 6 % 256, (x * y) % 256) for y in range(40) for x in range(50)])
    views = tta_transform(model.preprocessing, "flip")(img)
    x = eval_transform(model.preprocessing)(img)
    assert torch.allclose(views[0], x) and torch.allclose(views[1], x.flip(-1))
    with torch.no_grad():
        out = model.predict_step((views[None], torch.tensor([0])), 0)
        expected = (model(x[None]).softmax(-1) + model(x.flip(-1)[None]).softmax(-1)) / 2
    assert torch.allclose(out["probs"], expected, atol=1e-6)
    assert tta_transform(model.preprocessing, "crops")(img).shape == (5, 3, 32, 32)


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
        ImageFolderDataModule(predict_files=str(tmp_path / "nope.txt"), preprocessing=TINY_PREPROCESSING).setup("predict")


def test_export_round_trips_through_torchscript_and_onnxruntime(tiny_ckpt, tmp_path):
    import onnxruntime as ort

    root, ckpt = tiny_ckpt
    out = tmp_path / "export"
    run_cli(["export", f"--ckpt_path={ckpt}", f"--output_dir={out}", f"--verify_images={root / 'val'}",
             "--num_verify=4"])
    meta = json.loads((out / "best.json").read_text())
    assert meta["class_names"] == ["cat", "dog"]
    assert meta["preprocessing"]["input_size"] == 32 and meta["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    assert len(meta["verification"]["images"]) == 4
    assert max(meta["verification"]["max_abs_diff"].values()) <= 1e-4

    # The exported files alone (no tlx model) reproduce the checkpoint on other images, any batch size.
    model = ImageClassifier.load_from_checkpoint(ckpt, weights=None).eval()
    files = sorted((root / "train").rglob("*.png"))[::3][:3]
    from tlx.export import unit_range_transform
    from tlx.preprocessing import Preprocessing

    cfg = Preprocessing.from_dict(meta["preprocessing"])
    x = torch.stack([unit_range_transform(cfg)(Image.open(f).convert("RGB")) for f in files])
    with torch.no_grad():
        expected = model(torch.stack([eval_transform(model.preprocessing)(Image.open(f).convert("RGB")) for f in files])).softmax(-1)
    session = ort.InferenceSession(str(out / "best.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["probabilities"], {"image": x.numpy()})[0]
    assert got.shape == (3, 2) and abs(got - expected.numpy()).max() < 1e-4
    props = session.get_modelmeta().custom_metadata_map
    assert json.loads(props["class_names"]) == ["cat", "dog"]
    assert json.loads(props["preprocessing"])["resize_size"] == 36
    extra = {"tlx.json": ""}
    scripted = torch.jit.load(str(out / "best.torchscript.pt"), _extra_files=extra)
    assert json.loads(extra["tlx.json"])["class_names"] == ["cat", "dog"]
    with torch.no_grad():
        assert torch.allclose(scripted(x), expected, atol=1e-4)

    # No images given, no config: the checkpoint's own data (still on disk) supplies them.
    run_cli(["export", f"--ckpt_path={ckpt}", f"--output_dir={tmp_path / 'onnx_only'}", "--format=onnx",
             "--num_verify=2"])
    meta = json.loads((tmp_path / "onnx_only" / "best.json").read_text())
    assert list(meta["files"]) == ["onnx", "metadata"]
    assert len(meta["verification"]["images"]) == 2
    assert all(p.startswith(str(root / "val")) for p in meta["verification"]["images"])


def test_export_errors_are_clear(tiny_ckpt, tmp_path):
    from tlx.errors import TLXError

    _, ckpt = tiny_ckpt
    with pytest.raises(TLXError, match="unknown export format"):
        run_cli(["export", f"--ckpt_path={ckpt}", "--format=tflite", f"--output_dir={tmp_path}"])
    with pytest.raises(TLXError, match="needs a trained checkpoint"):
        run_cli(["export", f"--output_dir={tmp_path}", "--model.init_args.backbone=timm:test_efficientnet",
                 "--model.init_args.weights=null", "--model.init_args.class_names=[a,b]"])


def test_lr_find_saves_the_plot_and_suggests_a_rate(tiny_ckpt, tmp_path, capsys):
    root, _ = tiny_ckpt
    args = tiny_fit_args(root, tmp_path / "runs")
    args[0] = "lr_find"
    cli = run_cli(args + ["--num_training=12", "--min_lr=1e-5", "--max_lr=1", "--early_stop_threshold=null"])
    log_dir = tmp_path / "runs" / "lightning_logs" / "version_0"
    img = np.asarray(Image.open(log_dir / "lr_find.png").convert("RGB")).astype(int)
    assert img.shape == (480, 640, 3)
    # a line plot is mostly white: look for the curve itself (matplotlib's first colour, #1f77b4)
    curve = (np.abs(img - np.array([0x1F, 0x77, 0xB4])).sum(-1) < 60).sum()
    assert curve > 300, f"{curve} curve pixels"
    result = json.loads((log_dir / "lr_find.json").read_text())
    assert len(result["lr"]) == len(result["loss"]) > 5
    assert result["lr"][0] >= 1e-5 and result["lr"][-1] <= 1.0
    out = capsys.readouterr().out
    if result["suggestion"] is None:
        assert "no suggestion" in out
    else:
        assert 1e-5 <= result["suggestion"] <= 1.0
        assert "Suggested learning rate" in out
        red = ((img[..., 0] > 200) & (img[..., 1] < 60) & (img[..., 2] < 60)).sum()
        assert red > 30, "the suggestion is marked"
    assert not list(cli.trainer.default_root_dir and (tmp_path / "runs").glob(".lr_find_*.ckpt"))
