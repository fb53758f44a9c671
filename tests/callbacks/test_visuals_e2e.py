"""End to end on ants/bees with the packaged EfficientNet-Lite0: a short fit draws real pictures
in TensorBoard and shows frozen parameters; export matches the checkpoint on real images; predict
with TTA writes a top-k CSV."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from tests.helpers import HYMENOPTERA, REPO, assert_real_picture, decode, run_cli, tb_images

pytestmark = pytest.mark.e2e


def test_fit_pictures_export_and_tta_predict_on_hymenoptera(tmp_path, capfd):
    config = str(REPO / "configs" / "tutorial_frozen.yaml")  # draws pictures; trains the head alone
    common = [f"--config={config}", f"--data.init_args.root={HYMENOPTERA}", "--data.init_args.num_workers=0",
              "--trainer.enable_progress_bar=false"]
    run_cli(["fit", *common, f"--trainer.default_root_dir={tmp_path}", "--trainer.max_epochs=1",
             "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=2", "--data.init_args.batch_size=8"])
    summary = capfd.readouterr().out
    line = next(ln for ln in summary.splitlines() if "Non-trainable params" in ln)
    assert "M" in line, line  # the frozen backbone: millions of parameters not trained
    backbone = next(ln for ln in summary.splitlines() if ln.startswith("backbone "))  # TrainableSummary
    assert backbone.split()[1] == "0" and "3.4 M" in backbone and backbone.endswith("eval"), backbone
    log_dir = tmp_path / "lightning_logs" / "version_0"

    images = tb_images(log_dir)
    # 8 images (a batch) in 3x3 cells of 2.2 inches at 100 dpi, one title line each
    assert_real_picture(decode(images["train/augmented_samples"][0]), (660, int(3 * (2.2 + 0.18) * 100)))
    gallery = decode(images["val/predictions"][-1])  # 16 images (2 val batches of 8), 4x4, two title lines
    assert_real_picture(gallery, (880, int(4 * (2.2 + 0.36) * 100)))
    from PIL import Image

    Image.fromarray(gallery).save(tmp_path / "gallery.png")
    assert_real_picture(decode(images["val/top_losses"][-1]), (660, int(3 * (2.2 + 0.36) * 100)))
    assert_real_picture(decode(images["val/confusion_matrix"][-1]), (400, 400))

    # export: verified on 8 real validation images (the data module's, from the config)
    ckpt = log_dir / "checkpoints" / "best.ckpt"
    run_cli(["export", *common, f"--ckpt_path={ckpt}"])
    meta = json.loads((log_dir / "export" / "best.json").read_text())
    assert meta["class_names"] == ["ants", "bees"]
    assert len(meta["verification"]["images"]) == 8
    diffs = meta["verification"]["max_abs_diff"]
    assert set(diffs) == {"torchscript", "onnx"} and max(diffs.values()) < 1e-4, diffs
    assert min(meta["verification"]["top1_agreement"].values()) == 1.0
    print(f"export max |p - p_ckpt| on 8 hymenoptera images: {diffs}")

    # predict with flip TTA over a list of files: CSV with both classes
    files = sorted((HYMENOPTERA / "val" / "bees").glob("*.jpg"))[:3] + sorted((HYMENOPTERA / "val" / "ants").glob("*.jpg"))[:3]
    listing = tmp_path / "files.txt"
    listing.write_text("\n".join(str(f) for f in files))
    out = tmp_path / "pred.csv"
    run_cli(["predict", *common, f"--ckpt_path={ckpt}", f"--data.init_args.predict_files={listing}",
             "--data.init_args.tta=flip", "--prediction_writer.top_k=2", f"--prediction_writer.output={out}",
             f"--trainer.default_root_dir={tmp_path}"])
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["file"] for r in rows] == [str(f) for f in files]
    for r in rows:
        assert {r["predicted_class"], r["class_2"]} == {"ants", "bees"}
        assert np.isclose(float(r["probability"]) + float(r["probability_2"]), 1.0, atol=1e-4)
