"""TensorBoard image callbacks and the hyperparameters view, on tiny data and a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.helpers import TINY_MODEL, assert_real_picture, decode, make_imagefolder, tb_images
from tlx.callbacks import AugmentationPreview, HParamsMetrics, PredictionGallery, TopLosses
from tlx.data import ImageFolderDataModule
from tlx.metrics import confusion_figure
from tlx.models import ImageClassifier
from tlx.visuals import denormalize, figure_to_array, image_grid_figure


@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vis")
    root = make_imagefolder(tmp / "data", n_train=8, n_val=4)
    logger = TensorBoardLogger(str(tmp / "tb"), name="", version="run")
    callbacks = [AugmentationPreview(num_images=6), PredictionGallery(num_images=8, every_n_epochs=1),
                 TopLosses(k=4, every_n_epochs=0, at_fit_end=True), HParamsMetrics()]
    trainer = Trainer(default_root_dir=str(tmp), max_epochs=2, accelerator="cpu", devices=1, logger=logger,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                      log_every_n_steps=1)
    model = ImageClassifier(**TINY_MODEL)
    dm = ImageFolderDataModule(root=str(root), batch_size=4, num_workers=0)
    trainer.fit(model, datamodule=dm)
    return logger.log_dir, tb_images(logger.log_dir)


def test_augmentation_preview_is_drawn_once_at_the_start(fitted_run):
    _, images = fitted_run
    events = images["train/augmented_samples"]
    assert [e.step for e in events] == [0]
    # 4 images (one batch of 4) in a 2x2 grid of 2.2-inch cells at 100 dpi, one title line each
    assert_real_picture(decode(events[0]), (440, int(2 * (2.2 + 0.18) * 100)))


def test_gallery_is_drawn_every_epoch_and_topk_only_at_the_end(fitted_run):
    _, images = fitted_run
    gallery = images["val/predictions"]
    assert [e.step for e in gallery] == [0, 1]
    assert_real_picture(decode(gallery[-1]), (660, int(3 * (2.2 + 0.36) * 100)))
    top = images["val/top_losses"]
    assert [e.step for e in top] == [1]
    assert_real_picture(decode(top[0]), (440, int(2 * (2.2 + 0.36) * 100)))


def test_confusion_matrix_is_logged_each_epoch(fitted_run):
    _, images = fitted_run
    events = images["val/confusion_matrix"]
    assert [e.step for e in events] == [0, 1]
    assert_real_picture(decode(events[-1]), (400, 400))


def test_hparams_view_carries_the_final_metrics(fitted_run):
    log_dir, _ = fitted_run
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    experiments = [plugin_data_pb2.HParamsPluginData.FromString(v) for k, v in content.items()
                   if k == "_hparams_/experiment"]
    assert experiments
    metric_names = {m.name.tag for m in experiments[-1].experiment.metric_infos}
    assert {"hp_metric", "final/val/acc", "final/val/loss"} <= metric_names
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = session.session_start_info.hparams
    assert hp["backbone"].string_value == TINY_MODEL["backbone"]
    assert "data/batch_size" in hp
    hparams_yaml = (Path(log_dir) / "hparams.yaml").read_text()
    assert "backbone" in hparams_yaml and "data/batch_size" not in hparams_yaml
    hp_metric = [s.value for s in acc.Scalars("hp_metric")]
    assert hp_metric[-1] != -1 and 0.0 <= hp_metric[-1] <= 1.0


def test_grid_figure_of_denormalised_images_has_the_expected_size():
    x = torch.rand(5, 3, 32, 32)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    normalised = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(denormalize(normalised, mean, std), x, atol=1e-6)
    img = figure_to_array(image_grid_figure(x, [f"img {i}" for i in range(5)], ncols=5))
    assert_real_picture(img, (1100, int(2.2 * 100 + 18)))


def test_confusion_figure_has_class_names_and_counts():
    fig = confusion_figure(torch.tensor([[3, 1], [0, 4]]), ["ant", "bee"])
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["ant", "bee"]
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ["1", "3", "4"]
    assert_real_picture(figure_to_array(fig), (400, 400))


def test_gallery_spreads_over_classes_and_top_losses_keeps_the_worst_across_batches():
    gallery = PredictionGallery(num_images=4)
    x = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1).expand(8, 3, 2, 2)
    y = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1])
    logits = torch.zeros(8, 2)
    gallery.collect(x[:4], y[:4], logits[:4])  # batch 1: mostly class 0
    gallery.collect(x[4:], y[4:], logits[4:])
    assert torch.cat(gallery._targets).tolist() == [0, 0, 1, 1]
    assert torch.cat(gallery._images)[:, 0, 0, 0].tolist() == [0, 1, 3, 4]

    top = TopLosses(k=3)
    true_prob = torch.tensor([0.9, 0.2, 0.6, 0.05, 0.99, 0.3, 0.7, 0.1])
    logits = torch.stack([torch.zeros(8), torch.log(true_prob / (1 - true_prob))], 1)  # softmax(.)[1] = true_prob
    y = torch.ones(8, dtype=torch.long)
    top.collect(x[:3], y[:3], logits[:3])
    top.collect(x[3:6], y[3:6], logits[3:6])
    top.collect(x[6:], y[6:], logits[6:])
    assert top._images[:, 0, 0, 0].tolist() == [3, 7, 1]  # lowest probabilities of the true class
    assert torch.allclose(top._losses, -true_prob[[3, 7, 1]].log(), atol=1e-5)


def test_trainable_summary_splits_trainable_and_frozen_per_part(tmp_path, capsys):
    from tlx.callbacks import TrainableSummary
    from tlx.finetuning import FreezeBackbone

    root = make_imagefolder(tmp_path / "data", n_train=4, n_val=2)
    trainer = Trainer(default_root_dir=str(tmp_path), max_epochs=2, accelerator="cpu", logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=0, callbacks=[FreezeBackbone(), TrainableSummary()])
    model = ImageClassifier(**TINY_MODEL)
    trainer.fit(model, datamodule=ImageFolderDataModule(root=str(root), batch_size=4, num_workers=0))
    out = capsys.readouterr().out
    assert out.count("Parameters at epoch") == 1  # printed once: nothing changed in epoch 1
    rows = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.split() and ln.split()[0] in ("backbone", "head")}
    head = sum(p.numel() for p in model.head.parameters())
    assert rows["backbone"][1] == "0" and rows["backbone"][-1] == "eval"
    assert rows["head"][1] == str(head) and rows["head"][2] == "0"
