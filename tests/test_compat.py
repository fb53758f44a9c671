"""One test per private Lightning/torch API behind tlx/compat.py: when a Lightning or torch
upgrade moves one, the failing test names it."""

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from tests.helpers import tiny_model
from tlx import compat


def test_batchnorm_base_covers_every_batchnorm():
    for layer in (torch.nn.BatchNorm1d(2), torch.nn.BatchNorm2d(2), torch.nn.SyncBatchNorm(2), torch.nn.InstanceNorm2d(2)):
        assert isinstance(layer, compat.BatchNormBase)
    assert not isinstance(torch.nn.LayerNorm(2), compat.BatchNormBase)


def test_attached_trainer_is_none_when_detached_and_the_trainer_otherwise(tmp_path):
    model = tiny_model()
    assert compat.attached_trainer(model) is None
    trainer = Trainer(default_root_dir=str(tmp_path), logger=False)
    model.trainer = trainer
    assert compat.attached_trainer(model) is trainer


def test_request_graceful_stop_sets_lightnings_sigterm_flag(tmp_path):
    trainer = Trainer(default_root_dir=str(tmp_path), logger=False)
    assert not trainer.received_sigterm
    compat.request_graceful_stop(trainer)
    assert trainer.received_sigterm  # the public view the loops read


@pytest.mark.parametrize("every", [None, 3])
def test_checkpoint_every_n_epochs(every, tmp_path):
    cb = ModelCheckpoint(dirpath=tmp_path, every_n_epochs=every)
    assert compat.checkpoint_every_n_epochs(cb) == (1 if every is None else every)


def test_flatten_and_unflatten_dense_tensors_round_trip():
    tensors = [torch.arange(6.0).view(2, 3), torch.tensor([7.0])]
    flat = compat.flatten_dense_tensors(tensors)
    assert flat.tolist() == [0, 1, 2, 3, 4, 5, 7]
    back = compat.unflatten_dense_tensors(flat * 2, tensors)
    assert [b.shape for b in back] == [t.shape for t in tensors] and back[1].item() == 14


def test_max_abs_per_tensor():
    tensors = [torch.tensor([-3.0, 2.0]), torch.tensor([[0.5], [-0.25]]), torch.tensor([float("inf")])]
    assert [float(m) for m in compat.max_abs_per_tensor(tensors)] == [3.0, 0.5, float("inf")]


def test_mkldnn_bf16_supported_answers_a_bool():
    assert isinstance(compat.mkldnn_bf16_supported(), bool)


def test_no_private_lightning_or_torch_api_outside_compat():
    """The private names above appear in tlx/compat.py only."""
    import re
    from pathlib import Path

    root = Path(compat.__file__).parent
    private = re.compile(r"\._signal_connector|['\".]_every_n_epochs|(?<!self)\._trainer\b|_utils\._|\._NormBase|\._is_mkldnn|torch\._foreach_")
    offenders = [f"{p.relative_to(root)}: {m.group()}" for p in root.rglob("*.py") if p.name != "compat.py"
                 for m in private.finditer(p.read_text())]
    assert not offenders, offenders
