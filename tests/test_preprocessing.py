"""tlx.preprocessing: one type, one resolver (weights -> model option -> data option -> checkpoint)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import TINY_MODEL, TINY_PREPROCESSING
from tests.helpers import tiny_trainer
from tlx.data import ImageFolderDataModule
from tlx.errors import DataError, TLXError
from tlx.models import ImageClassifier
from tlx.preprocessing import Preprocessing, fed_preprocessing, resolve_preprocessing

WEIGHTS = Preprocessing(224, 256, "bicubic", (0.5,) * 3, (0.5,) * 3)
MODEL = {**TINY_PREPROCESSING, "input_size": 40, "resize_size": 44}
DATA = {**TINY_PREPROCESSING, "mean": [0.4, 0.4, 0.4]}


def test_each_step_overrides_the_one_before():
    assert resolve_preprocessing(WEIGHTS) == WEIGHTS
    assert resolve_preprocessing(WEIGHTS, MODEL) == Preprocessing.from_dict(MODEL)
    assert resolve_preprocessing(WEIGHTS, MODEL, DATA) == Preprocessing.from_dict(DATA)
    assert resolve_preprocessing(WEIGHTS, None, DATA) == Preprocessing.from_dict(DATA)
    with pytest.raises(DataError, match="No preprocessing known"):
        resolve_preprocessing(None)


def test_a_bad_override_names_the_option_and_the_keys():
    with pytest.raises(TLXError, match="data.preprocessing: unknown key.s. crop; the keys are input_size"):
        resolve_preprocessing(WEIGHTS, None, {**DATA, "crop": 1})
    with pytest.raises(TLXError, match="model.preprocessing: missing std"):
        resolve_preprocessing(WEIGHTS, {k: v for k, v in MODEL.items() if k != "std"})
    # the plain form may carry more (an export's sidecar adds its steps)
    assert Preprocessing.from_dict({**DATA, "steps": ["resize"]}) == Preprocessing.from_dict(DATA)


def test_the_model_records_what_the_data_feeds_it(tiny_folder, tmp_path):
    model = ImageClassifier(**{**TINY_MODEL, "preprocessing": MODEL})
    assert model.preprocessing == Preprocessing.from_dict(MODEL) and model.hparams["preprocessing"] == MODEL
    dm = ImageFolderDataModule(root=str(tiny_folder), batch_size=4, num_workers=0, preprocessing=DATA)
    assert fed_preprocessing(model, dm) == Preprocessing.from_dict(DATA)
    tiny_trainer(tmp_path, max_steps=1, limit_val_batches=1).fit(model, datamodule=dm)
    assert model.preprocessing == dm.preprocessing == Preprocessing.from_dict(DATA)
    assert model.hparams["preprocessing"] == DATA and model.hparams["data_config"] is None
    # without an override of its own the data module adopts the model's
    dm2 = ImageFolderDataModule(root=str(tiny_folder), batch_size=4, num_workers=0)
    tiny_trainer(tmp_path).validate(ImageClassifier(**{**TINY_MODEL, "preprocessing": MODEL}), datamodule=dm2,
                                    verbose=False)
    assert dm2.preprocessing == Preprocessing.from_dict(MODEL)


def test_checkpoints_of_the_old_name_still_load(tiny_folder, tmp_path):
    """Checkpoints written before the rename hold hyper_parameters["data_config"]."""
    model = ImageClassifier(**{**TINY_MODEL, "preprocessing": MODEL}, class_names=["cat", "dog"])
    path = tmp_path / "old.ckpt"
    tiny_trainer(tmp_path).strategy.connect(model)
    blob = {"state_dict": model.state_dict(), "pytorch-lightning_version": "2.6.0",
            "hyper_parameters": {**{k: v for k, v in model.hparams.items() if k != "preprocessing"},
                                 "data_config": MODEL}}
    torch.save(blob, path)
    with pytest.warns(FutureWarning, match="data_config is deprecated"):
        loaded = ImageClassifier.load_from_checkpoint(path, weights_only=True)
    assert loaded.preprocessing == Preprocessing.from_dict(MODEL)
    assert torch.equal(loaded.head.fc.weight, model.head.fc.weight)
