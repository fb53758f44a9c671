"""bf16 detection and fallback, channels_last and compile switches."""

from __future__ import annotations

import logging

import pytest
import torch

from tests.helpers import TINY_MODEL, run_cli, tiny_fit_args
from tlx.models import ImageClassifier
from tlx.speed import SpeedUp, precision
from tlx.speed.precision import resolve_precision


@pytest.fixture
def no_bf16(monkeypatch):
    monkeypatch.setattr(precision, "bf16_supported", lambda accelerator: False)


def test_bf16_falls_back_to_fp32_with_a_message(no_bf16, caplog):
    with caplog.at_level(logging.WARNING, logger="tlx"):
        assert resolve_precision("bf16-mixed", "cpu") == "32-true"
    assert "no native bf16" in caplog.text and "trainer.precision=32-true" in caplog.text


def test_other_precisions_pass_through(no_bf16, caplog):
    for value in ("32-true", "16-mixed", 32, None):
        assert resolve_precision(value, "cpu") == value
    assert caplog.text == ""


def test_bf16_kept_where_supported(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: True)
    assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: False)
    assert not precision.bf16_supported("cpu")


def test_cli_applies_the_fallback(no_bf16, tiny_folder, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="tlx"):
        cli = run_cli(tiny_fit_args(tiny_folder, tmp_path, extra=["--trainer.precision=bf16-mixed"]))
    assert cli.trainer.precision == "32-true"
    assert "no native bf16" in caplog.text


def test_speedup_channels_last_same_outputs_and_keys():
    torch.manual_seed(0)
    plain = ImageClassifier(**TINY_MODEL, class_names=["cat", "dog"]).eval()
    fast = ImageClassifier(**TINY_MODEL, class_names=["cat", "dog"]).eval()
    fast.load_state_dict(plain.state_dict())
    speedup = SpeedUp(channels_last=True)
    speedup.setup(None, fast, "fit")
    assert fast.backbone.model.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    assert fast.state_dict().keys() == plain.state_dict().keys()  # checkpoints stay interchangeable
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(fast(x), plain(x), atol=1e-5)
    speedup.teardown(None, fast, "fit")
    assert not fast.backbone._forward_pre_hooks
