"""Figures reach every logger: PNG files beside a CSVLogger's metrics, MLflow's log_figure and
W&B's log_image (stand-in loggers: neither package is needed), one failing logger costs nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger, Logger
from PIL import Image

from tests.helpers import TINY_MODEL, make_imagefolder
from tlx.callbacks import AugmentationPreview, PredictionGallery, TopLosses
from tlx.data import ImageFolderDataModule
from tlx.figures import figure_file_name, log_figure
from tlx.models import ImageClassifier
from tlx.visuals import new_figure


class StubLogger(Logger):
    """A logger that records nothing of its own (subclasses add the image methods)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    @property
    def name(self) -> str:
        return "stub"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        pass


class MlflowLike(StubLogger):
    """What Lightning's MLFlowLogger offers: ``run_id``, and an MlflowClient as ``experiment``."""

    run_id = "run-1"

    @property
    def experiment(self) -> Any:
        return self

    def log_figure(self, run_id: str, figure: Any, artifact_file: str) -> None:
        self.calls.append((run_id, artifact_file, figure.get_size_inches().tolist()))


class WandbLike(StubLogger):
    """What Lightning's WandbLogger offers: ``log_image(key, images, step)``."""

    def log_image(self, key: str, images: list[Any], step: int | None = None) -> None:
        self.calls.append((key, step, [np.asarray(i).shape for i in images]))


class Broken(StubLogger):
    """A TensorBoard-like logger whose writer fails."""

    @property
    def experiment(self) -> Any:
        return self

    def add_figure(self, *args: Any) -> None:
        raise RuntimeError("tracking server unreachable")


@pytest.fixture(scope="module")
def loggers_after_fit(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("figures")
    root = make_imagefolder(tmp / "data", n_train=8, n_val=4)
    loggers = [CSVLogger(str(tmp / "csv"), name="", version="run"), MlflowLike(), WandbLike(), Broken()]
    callbacks = [AugmentationPreview(num_images=4), PredictionGallery(num_images=4), TopLosses(k=4, every_n_epochs=0)]
    trainer = Trainer(default_root_dir=str(tmp), max_epochs=2, accelerator="cpu", devices=1, logger=loggers,
                      enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                      callbacks=callbacks, log_every_n_steps=1)
    trainer.fit(ImageClassifier(**TINY_MODEL), datamodule=ImageFolderDataModule(root=str(root), batch_size=4, num_workers=0))
    return loggers


EXPECTED = ["train_augmented_samples_0.png", "val_confusion_matrix_0.png", "val_confusion_matrix_1.png",
            "val_predictions_0.png", "val_predictions_1.png", "val_top_losses_1.png"]


def test_csv_logger_gets_every_figure_as_a_png_in_its_run_folder(loggers_after_fit):
    folder = Path(loggers_after_fit[0].log_dir) / "figures"
    assert sorted(p.name for p in folder.iterdir()) == EXPECTED
    for path in folder.iterdir():
        assert path.stat().st_size > 1000
        with Image.open(path) as im:
            pixels = np.asarray(im.convert("RGB"))
        assert pixels.shape[0] >= 200 and pixels.shape[1] >= 200 and pixels.std() > 5  # a picture, not a blank


def test_mlflow_like_logger_gets_log_figure_calls_with_artifact_names(loggers_after_fit):
    calls = loggers_after_fit[1].calls
    assert sorted(c[1] for c in calls) == [f"figures/{name}" for name in EXPECTED]
    assert {c[0] for c in calls} == {"run-1"}


def test_wandb_like_logger_gets_rendered_images_per_tag_and_step(loggers_after_fit):
    calls = loggers_after_fit[2].calls
    # at the global step (W&B's x axis): 16 images / batch 4 = 4 steps an epoch
    assert sorted((k, s) for k, s, _ in calls) == [
        ("train/augmented_samples", 0), ("val/confusion_matrix", 4), ("val/confusion_matrix", 8),
        ("val/predictions", 4), ("val/predictions", 8), ("val/top_losses", 8)]
    for _, _, shapes in calls:
        assert len(shapes) == 1 and shapes[0][2] == 3 and min(shapes[0][:2]) >= 200


def test_a_failing_logger_is_one_warning_and_the_others_still_get_the_figure(tmp_path, caplog):
    trainer = Trainer(default_root_dir=str(tmp_path), logger=[Broken(), CSVLogger(str(tmp_path), name="", version=0)])
    fig = new_figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [1, 0])
    log_figure(trainer, "val/x", fig, 5)
    assert (tmp_path / "version_0" / "figures" / "val_x_5.png").stat().st_size > 0
    assert "Could not draw val/x for Broken (RuntimeError: tracking server unreachable)" in caplog.text


def test_figure_file_names_are_flat_and_safe():
    assert figure_file_name("val/confusion_matrix", 3) == "val_confusion_matrix_3.png"
    assert figure_file_name("a b/../c", 0) == "a_b_.._c_0.png"
