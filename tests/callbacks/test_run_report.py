"""report.html: written at the end of fit and of test, self-contained, with the run's content; on by
default in the CLI and off with one option; tables without matplotlib; drawn by a real browser."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import CSVLogger
from PIL import Image

from tests.helpers import REPO, TINY_MODEL, make_imagefolder, run_cli, tiny_fit_args
from tlx.callbacks import RunReport
from tlx.data import ImageFolderDataModule
from tlx.metrics import most_confused, per_class_rows
from tlx.models import ImageClassifier
from tlx.report_html import Evaluation, RunSummary, Worst, render_report


def inline_pngs(page: str) -> dict[str, np.ndarray]:
    """alt text -> decoded picture, for every inline PNG of the page."""
    found = re.findall(r'alt="([^"]*)" src="data:image/png;base64,([^"]+)"', page)
    return {alt: np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")) for alt, data in found}


def assert_self_contained(page: str) -> None:
    assert "<script" not in page and "<link" not in page
    assert not re.search(r'(src|href)="(?!data:)', page), "the page refers to something outside itself"


@pytest.fixture(scope="module")
def fit_then_test(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    root = make_imagefolder(tmp / "data", classes=("cat", "dog"), n_train=8, n_val=6)
    report = RunReport(top_losses=5)
    trainer = Trainer(default_root_dir=str(tmp), max_epochs=2, accelerator="cpu", devices=1,
                      logger=CSVLogger(str(tmp), name="", version="run"), enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[report], log_every_n_steps=1)
    model = ImageClassifier(**TINY_MODEL)
    dm = ImageFolderDataModule(root=str(root), batch_size=4, num_workers=0)
    trainer.fit(model, datamodule=dm)
    path = Path(trainer.log_dir) / "report.html"
    after_fit = path.read_text()
    trainer.test(model, datamodule=dm, verbose=False)
    return after_fit, path.read_text(), report


def test_fit_report_has_curves_confusion_matrix_per_class_table_and_top_losses(fit_then_test):
    page, _, report = fit_then_test
    assert_self_contained(page)
    assert [row["epoch"] for row in report.history if "val/acc" in row] == [1, 2]
    assert {"train/loss", "val/loss", "val/acc"} <= {k for row in report.history for k in row}
    pictures = inline_pngs(page)
    assert {"metric curves", "confusion matrix"} <= set(pictures)
    for alt in ("metric curves", "confusion matrix"):
        assert pictures[alt].shape[0] >= 300 and pictures[alt].std() > 20
    assert "Validation (last epoch of fit)" in page and "Test</h2>" not in page
    assert "<td>cat</td><td>6</td>" in page and "<td>dog</td><td>6</td>" in page  # per class: 6 images each
    thumbnails = [alt for alt in pictures if alt.endswith(".png")]
    assert len(thumbnails) == 5 and all(re.fullmatch(r".*/val/(cat|dog)/\1_\d+\.png", t) for t in thumbnails)
    for phase in ("training (without validation)", "validation", "wall time"):
        assert phase in page
    assert "Trainable and frozen parameters" in page and "<td>backbone</td>" in page


def test_report_is_written_again_after_test_with_the_test_section(fit_then_test):
    after_fit, after_test, report = fit_then_test
    assert after_test != after_fit and "test finished" in after_test
    assert "Validation (last epoch of fit)" in after_test and "Test</h2>" in after_test
    assert int(report.evaluations["test"].confusion.sum()) == 12  # the val split (no test folder): 2 x 6
    assert "test/acc" in after_test


def test_cli_writes_the_report_with_the_resolved_config_and_can_turn_it_off(tmp_path):
    data = make_imagefolder(tmp_path / "data", n_train=4, n_val=2)
    cli = run_cli(tiny_fit_args(data, tmp_path / "on"))
    page = (Path(cli.trainer.log_dir) / "report.html").read_text()
    assert "<h2>Resolved config</h2>" in page and "class_path: tlx.models.ImageClassifier" in page
    assert "run_report:" in page and "Best checkpoint:" in page
    cli = run_cli(tiny_fit_args(data, tmp_path / "off", extra=["--run_report.enabled=false"]))
    assert not (Path(cli.trainer.log_dir) / "report.html").exists()
    assert (Path(cli.trainer.log_dir) / "config.yaml").exists()


def summary() -> RunSummary:
    confusion = torch.tensor([[5, 1, 0], [2, 3, 1], [0, 0, 6]])
    worst = [Worst("ant", "bee", 2.5, 0.08, "/data/val/ant/a1.jpg",
                   png=b"not a real png, never decoded here")]
    return RunSummary(title="tiny on data", log_dir="/runs/version_0", status="fit finished",
                      metrics={"val/acc": 0.7778}, history=[{"epoch": 1, "step": 4, "val/acc": 0.5},
                                                            {"epoch": 2, "step": 8, "val/acc": 0.7778}],
                      evaluations=[Evaluation("Validation", ["ant", "bee", "wasp"], confusion, worst)],
                      trainable=[("backbone", 0, 100, "eval"), ("head", 12, 0, "train")],
                      config="model:\n  backbone: tiny\n", timing=[("fit", 3.0)])


def test_without_matplotlib_the_report_keeps_its_tables_and_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    page = render_report(summary())
    assert_self_contained(page)
    assert "matplotlib is not installed" in page
    assert 'class="plot"' not in page
    assert ">true \\ predicted</th><th>ant</th><th>bee</th><th>wasp</th>" in page  # the matrix as a table
    assert "<details open><summary>values per epoch</summary>" in page
    assert "model:\n  backbone: tiny" in page


def test_per_class_rows_and_most_confused_pairs():
    confusion = torch.tensor([[5, 1, 0], [2, 3, 1], [0, 0, 6]])
    rows = per_class_rows(confusion, ["ant", "bee", "wasp"])
    assert [(r["class"], r["images"], r["correct"]) for r in rows] == [("ant", 6, 5), ("bee", 6, 3), ("wasp", 6, 6)]
    assert rows[1]["accuracy"] == pytest.approx(0.5) and rows[1]["precision"] == pytest.approx(0.75)
    assert rows[1]["low"] < 0.5 < rows[1]["high"]
    assert most_confused(confusion, ["ant", "bee", "wasp"]) == [
        ("bee", "ant", 2, pytest.approx(1 / 3)), ("ant", "bee", 1, pytest.approx(1 / 6)),
        ("bee", "wasp", 1, pytest.approx(1 / 6))]


@pytest.mark.skipif(shutil.which("chromium") is None and shutil.which("chromium-browser") is None,
                    reason="Chromium not installed (Debian: apt-get install chromium); the page's content is "
                           "checked by the other tests")
def test_chromium_renders_the_report(fit_then_test, tmp_path):
    _, page, _ = fit_then_test
    report = tmp_path / "report.html"
    report.write_text(page)
    out = tmp_path / "shot.png"
    subprocess.run([sys.executable, str(REPO / "scripts" / "report_screenshot.py"), str(report), "--out", str(out),
                    "--height", "1600"], check=True, capture_output=True, timeout=180)
    shot = np.asarray(Image.open(out).convert("RGB")).astype(float)
    assert shot.shape == (1600, 1280, 3)
    drawn = (shot < 245).any(axis=-1)
    assert drawn.mean() > 0.03, f"only {drawn.mean():.1%} of the page is drawn"
    # the curves (inline PNGs) are drawn: the blue of matplotlib's first line is on the page
    assert (np.abs(shot - [31, 119, 180]).sum(axis=-1) < 30).sum() > 200


def test_a_run_stopped_by_an_error_still_leaves_its_report(tmp_path):
    class Boom(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                raise RuntimeError("disk on fire")

    root = make_imagefolder(tmp_path / "data", n_train=4, n_val=2)
    trainer = Trainer(default_root_dir=str(tmp_path), max_epochs=3, accelerator="cpu", logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[RunReport(), Boom()])
    with pytest.raises(RuntimeError, match="disk on fire"):
        trainer.fit(ImageClassifier(**TINY_MODEL), datamodule=ImageFolderDataModule(root=str(root), batch_size=4,
                                                                                      num_workers=0))
    page = (tmp_path / "report.html").read_text()
    assert "stopped early (RuntimeError)" in page and "Validation (last epoch of fit)" in page


def test_worst_images_take_files_only_when_the_labels_match_the_loader_order(tmp_path):
    from tlx.evaluation_rows import image_rows, worst_images

    files = [tmp_path / f"{i}.png" for i in range(3)]
    for f in files:
        Image.new("RGB", (300, 200), (200, 30, 30)).save(f)
    logits = torch.tensor([[3.0, 0.0], [0.0, 3.0], [2.0, 0.0]])
    rows = image_rows(logits, torch.tensor([0, 0, 1]))  # images 1 and 2 are wrong, 1 the worse
    worst = worst_images(rows, ["ant", "bee"], 2, [(str(f), label) for f, label in zip(files, [0, 0, 1])])
    assert [(w.true, w.predicted, w.file) for w in worst] == [("ant", "bee", str(files[1])), ("bee", "ant", str(files[2]))]
    assert Image.open(io.BytesIO(worst[0].png)).size == (160, 107)  # a thumbnail, aspect kept
    shuffled = worst_images(rows, ["ant", "bee"], 2, [(str(f), label) for f, label in zip(files, [1, 0, 0])])
    assert [w.file for w in shuffled] == [None, None] and [w.true for w in shuffled] == ["ant", "bee"]


def test_a_resumed_fit_keeps_the_curves_of_the_epochs_before_the_resume(tmp_path):
    root = make_imagefolder(tmp_path / "data", n_train=4, n_val=2)

    def fit(epochs: int, ckpt_path: str | None = None) -> RunReport:
        report = RunReport()
        trainer = Trainer(default_root_dir=str(tmp_path), max_epochs=epochs, accelerator="cpu", logger=False,
                          enable_progress_bar=False, enable_model_summary=False, callbacks=[report])
        trainer.fit(ImageClassifier(**TINY_MODEL), datamodule=ImageFolderDataModule(root=str(root), batch_size=4,
                                                                                      num_workers=0), ckpt_path=ckpt_path)
        return report

    fit(2)
    ckpt = next((tmp_path / "checkpoints").glob("*.ckpt"))
    resumed = fit(3, str(ckpt))
    assert [row["epoch"] for row in resumed.history if "val/acc" in row] == [1, 2, 3]
