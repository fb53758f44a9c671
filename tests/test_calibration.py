"""Calibration: the ``ece`` metric, temperature scaling (tlx.calibration, configs/callbacks/temperature.yaml)
and T travelling through the checkpoint to predict and the ONNX export."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

import tlx
from tests.helpers import REPO, build_callbacks, make_imagefolder, run_cli, tiny_data, tiny_fit_args, tiny_model, tiny_trainer
from tlx.calibration import calibrate, expected_calibration_error, fit_temperature
from tlx.data.transforms import eval_transform
from tlx.metrics import LogitCalibrationError

FRAGMENT = REPO / "configs" / "callbacks" / "temperature.yaml"


def noisy_logits(n=3000, classes=5, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    logits = torch.randn(n, classes, generator=g)
    logits[torch.arange(n), labels] += 1.5
    return logits * scale, labels


def test_ece_on_a_hand_made_example():
    # 4 predictions at confidence 0.9, 3 right (|0.9 - 0.75| = 0.15); 2 at 0.6, both right (0.4):
    # ECE = (4 * 0.15 + 2 * 0.4) / 6.
    probs = torch.tensor([[0.9, 0.1]] * 4 + [[0.4, 0.6]] * 2)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    metric = LogitCalibrationError(2)
    metric.update(probs.log(), labels)  # logits: the metric takes the softmax itself
    assert float(metric.compute()) == pytest.approx((4 * 0.15 + 2 * 0.4) / 6, abs=1e-6)
    assert expected_calibration_error(probs.log(), labels) == pytest.approx(0.7 / 3, abs=1e-6)
    # logits that happen to lie in [0, 1] are still logits (torchmetrics alone would take them for probabilities)
    small = torch.tensor([[0.9, 0.1]])
    metric = LogitCalibrationError(2)
    metric.update(small, torch.tensor([0]))
    assert float(metric.compute()) == pytest.approx(1 - torch.softmax(small, -1)[0, 0].item(), abs=1e-6)


def test_temperature_fitted_on_over_confident_logits_is_above_one_and_lowers_nll_and_ece():
    logits, labels = noisy_logits(scale=4.0)
    report = calibrate(logits, labels)
    assert report.temperature > 1.5
    assert report.nll_after < report.nll_before - 0.1 and report.ece_after < report.ece_before / 3
    # the minimum: a nearby T is no better
    nll = lambda t: float(F.cross_entropy(logits / t, labels))  # noqa: E731
    assert nll(report.temperature) <= min(nll(report.temperature * 1.05), nll(report.temperature / 1.05))
    # scaling the logits scales T: the fit finds the same calibrated model
    assert fit_temperature(logits / 4, labels) == pytest.approx(report.temperature / 4, rel=1e-3)
    under = calibrate(*noisy_logits(scale=0.2))
    assert under.temperature < 1 and under.nll_after < under.nll_before
    assert "T = " in report.line("validation images")


def test_a_state_dict_without_temperature_loads_as_one():
    model = tiny_model(class_names=["cat", "dog"])
    state = {k: v for k, v in model.state_dict().items() if k != "temperature"}
    model.temperature.fill_(3.0)
    model.load_state_dict(state)  # strict: the missing buffer is filled in, not an error
    assert float(model.temperature) == 1.0


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A tiny CLI fit with configs/callbacks/temperature.yaml: its best.ckpt carries a fitted T."""
    tmp = tmp_path_factory.mktemp("calibrated")
    root = make_imagefolder(tmp / "data", n_train=8, n_val=6)
    spec = yaml.safe_load(FRAGMENT.read_text())["trainer"]["callbacks+"][0]
    cli = run_cli(tiny_fit_args(root, tmp / "runs", epochs=3, extra=[
        "--trainer.logger=false", f"--trainer.callbacks+={spec['class_path']}", "--model.init_args.optimizer=torch.optim.SGD",
        "--model.init_args.optimizer.init_args.lr=0.5"]))
    callback = next(cb for cb in cli.trainer.callbacks if isinstance(cb, tlx.callbacks.TemperatureScaling))
    return root, next((tmp / "runs").rglob("best.ckpt")), callback.report, cli.model


def test_temperature_is_fitted_at_the_end_of_fit_and_round_trips_through_the_checkpoint(calibrated, caplog):
    root, ckpt, report, model = calibrated
    assert report is not None and report.n == 12 and not math.isclose(report.temperature, 1.0, rel_tol=1e-3)
    saved = torch.load(ckpt, weights_only=True)
    assert float(saved["state_dict"]["temperature"]) == pytest.approx(report.temperature)
    assert saved["calibration"]["ece_before"] == pytest.approx(report.ece_before)
    assert float(model.temperature) == pytest.approx(report.temperature)  # the fitted model too
    loaded = tlx.load(ckpt)
    assert float(loaded.temperature) == pytest.approx(report.temperature)

    # T was fitted on the best weights' validation logits: refitting on them gives it again
    logits, labels = val_logits(loaded, root)
    assert fit_temperature(logits, labels) == pytest.approx(report.temperature, rel=1e-4)
    assert report.nll_after <= report.nll_before


def val_images(model, root):
    files = sorted((root / "val").rglob("*.png"))
    x = torch.stack([eval_transform(model.preprocessing)(Image.open(f).convert("RGB")) for f in files])
    return files, x, torch.tensor([model.class_names.index(f.parent.name) for f in files])


def val_logits(model, root):
    _, x, labels = val_images(model, root)
    with torch.no_grad():
        return model(x), labels


def test_predict_and_test_use_the_temperature(calibrated, tmp_path):
    root, ckpt, report, _ = calibrated
    model = tlx.load(ckpt)
    t = float(model.temperature)
    files, x, labels = val_images(model, root)
    with torch.no_grad():
        logits = model(x)
    expected = (logits / t).softmax(-1)
    assert (expected - logits.softmax(-1)).abs().max() > 1e-3  # T visibly changes the probabilities
    predictions = model.predict(files)
    got = torch.tensor([[p.probabilities[c] for c in model.class_names] for p in predictions])
    assert torch.allclose(got, expected, atol=1e-5)
    # predict_step (python -m tlx predict) too
    assert torch.allclose(model.predict_step((x, torch.arange(len(x))), 0)["probs"], expected, atol=1e-6)
    # test/ece is the calibrated model's
    trainer = tiny_trainer(tmp_path)
    trainer.test(model, datamodule=tiny_data(root))  # the test split is the val folder here
    assert float(trainer.callback_metrics["test/ece"]) == pytest.approx(expected_calibration_error(logits, labels, t), abs=1e-5)


def test_cli_predict_writes_calibrated_probabilities(calibrated, tmp_path):
    import csv

    root, ckpt, report, _ = calibrated
    model = tlx.load(ckpt)
    files, x, _ = val_images(model, root)
    list_file = tmp_path / "images.txt"
    list_file.write_text("".join(f"{f}\n" for f in files))
    out = tmp_path / "preds.csv"
    run_cli(["predict", f"--ckpt_path={ckpt}", f"--data.init_args.predict_files={list_file}",
             "--data.init_args.num_workers=0", f"--prediction_writer.output={out}", "--trainer.logger=false",
             "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}"])
    with open(out) as f:
        rows = list(csv.DictReader(f))
    with torch.no_grad():
        expected = (model(x) / report.temperature).softmax(-1).max(-1).values
    assert [r["file"] for r in rows] == [str(f) for f in files]
    assert torch.allclose(torch.tensor([float(r["probability"]) for r in rows]), expected, atol=1e-4)


def test_onnx_export_divides_by_the_temperature(calibrated, tmp_path):
    import onnxruntime as ort

    from tlx.export import unit_range_transform

    root, ckpt, report, _ = calibrated
    out = tmp_path / "export"
    run_cli(["export", f"--ckpt_path={ckpt}", f"--output_dir={out}", "--format=onnx", f"--verify_images={root / 'val'}",
             "--num_verify=4"])
    meta = json.loads((out / "best.json").read_text())
    assert meta["temperature"] == pytest.approx(report.temperature)
    assert meta["verification"]["max_abs_diff"]["onnx"] <= 1e-4
    model = tlx.load(ckpt)
    files = sorted((root / "train").rglob("*.png"))[::4]
    x = torch.stack([unit_range_transform(model.preprocessing)(Image.open(f).convert("RGB")) for f in files])
    with torch.no_grad():
        logits = model(torch.stack([eval_transform(model.preprocessing)(Image.open(f).convert("RGB")) for f in files]))
    session = ort.InferenceSession(str(out / "best.onnx"), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(["probabilities"], {"image": x.numpy()})[0])
    assert torch.allclose(got, (logits / report.temperature).softmax(-1), atol=1e-4)
    assert not torch.allclose(got, logits.softmax(-1), atol=1e-3)
    assert json.loads(session.get_modelmeta().custom_metadata_map["temperature"]) == pytest.approx(report.temperature)


def test_the_fragment_builds_the_callback():
    callbacks = build_callbacks(yaml.safe_load(FRAGMENT.read_text())["trainer"]["callbacks+"])
    assert [type(cb).__name__ for cb in callbacks] == ["TemperatureScaling"]
