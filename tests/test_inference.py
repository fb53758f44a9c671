"""tlx.load(checkpoint) and model.predict(images): the Python API for a trained model."""

from __future__ import annotations

import sys
from functools import partial

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image

import tlx
from tests.helpers import TINY_MODEL, make_imagefolder, tiny_trainer
from tlx.checkpointing import CheckpointError
from tlx.data.transforms import eval_transform
from tlx.errors import DataError, TLXError


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model fitted one epoch on cat/dog folders, with an optimizer given as a partial."""
    tmp = tmp_path_factory.mktemp("inference")
    data = make_imagefolder(tmp / "data", n_train=4, n_val=3)
    model = tlx.ImageClassifier(**TINY_MODEL, optimizer=partial(torch.optim.SGD, lr=0.01, momentum=0.9))
    checkpoint = ModelCheckpoint(dirpath=tmp / "ckpt", filename="best")
    trainer = tiny_trainer(tmp, enable_checkpointing=True, callbacks=[checkpoint])
    trainer.fit(model, datamodule=tlx.ImageFolderDataModule(root=str(data), batch_size=4, num_workers=0))
    return model, checkpoint.best_model_path, data


def test_load_gives_the_trained_model_in_eval_mode(trained):
    model, ckpt, _ = trained
    loaded = tlx.load(ckpt)
    assert isinstance(loaded, tlx.ImageClassifier) and not loaded.training
    assert loaded.class_names == ["cat", "dog"]
    assert loaded.preprocessing == model.preprocessing
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a.cpu(), b), name
    # the partial optimizer was stored as plain data and is rebuilt
    assert loaded.hparams.optimizer == {"class_path": "torch.optim.sgd.SGD", "init_args": {"lr": 0.01, "momentum": 0.9}}
    assert loaded.optimizer_factory.func is torch.optim.SGD


def test_predict_takes_an_image_a_path_a_list_or_a_folder(trained):
    model, ckpt, data = trained
    loaded = tlx.load(ckpt)
    path = data / "val" / "dog" / "dog_0.png"
    one = loaded.predict(path)
    assert isinstance(one, tlx.Prediction) and one.path == str(path)
    assert set(one.probabilities) == {"cat", "dog"} and sum(one.probabilities.values()) == pytest.approx(1.0)
    assert one.label == max(one.probabilities, key=one.probabilities.get)
    assert one.probability == one.probabilities[one.label]
    # the same numbers as the trained model on the evaluation transform of the checkpoint's preprocessing
    model.eval()
    x = eval_transform(model.preprocessing)(Image.open(path).convert("RGB"))[None]
    with torch.no_grad():
        expected = model(x).softmax(-1)[0]
    assert one.probabilities["dog"] == pytest.approx(float(expected[1]), abs=1e-5)

    from_pil = loaded.predict(Image.open(path))
    assert from_pil.path is None and from_pil.probabilities == pytest.approx(one.probabilities, abs=1e-6)
    listed = loaded.predict([path, str(data / "val" / "cat" / "cat_0.png")], batch_size=1)
    assert [p.path for p in listed] == [str(path), str(data / "val" / "cat" / "cat_0.png")]
    folder = loaded.predict(data / "val")
    assert len(folder) == 6 and [p.path for p in folder] == sorted(p.path for p in folder)


def test_predict_and_load_refuse_bad_input_in_one_line(trained, tmp_path):
    _, ckpt, _ = trained
    loaded = tlx.load(ckpt)
    with pytest.raises(DataError, match="does not exist"):
        loaded.predict(tmp_path / "missing.jpg")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        loaded.predict(tmp_path / "empty")
    with pytest.raises(DataError, match="got int"):
        loaded.predict([3])
    with pytest.raises(CheckpointError, match="does not exist"):
        tlx.load(tmp_path / "nope.ckpt")
    torch.save({"state_dict": {}, "hyper_parameters": {}}, tmp_path / "bare.ckpt")
    with pytest.raises(CheckpointError, match="no class names"):
        tlx.load(tmp_path / "bare.ckpt")
    with pytest.raises(TLXError, match="trained model"):
        tlx.ImageClassifier(**TINY_MODEL).predict(tmp_path / "missing.jpg")


def test_onnx_export_without_onnx_says_what_to_install(trained, tmp_path, monkeypatch):
    from tlx.export import export_checkpoint
    from tlx.optional import MissingDependencyError

    _, ckpt, _ = trained
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'tlx\[export\]'"):
        export_checkpoint(tlx.load(ckpt), ckpt, formats="onnx", output_dir=str(tmp_path))
