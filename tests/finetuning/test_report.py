"""Every run logs trainable and frozen parameter counts per group (one line on change, metrics
every epoch), and the console shows ONE parameter table at the start and one per change."""

import logging

import pytest
from lightning.pytorch.loggers import CSVLogger

from tests.helpers import fit, tiny_data, tiny_model
from tlx.finetuning import FinetuningError, FreezeBackbone, FreezeUnfreeze


def test_counts_printed_on_change_and_logged(tiny_folder, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tlx")
    model = tiny_model()
    trainer = fit(tmp_path, model, tiny_data(tiny_folder), [FreezeUnfreeze(unfreeze_at_epoch=1)], epochs=2,
                  logger=CSVLogger(tmp_path))
    n_backbone = sum(p.numel() for p in model.backbone.parameters())
    n_head = sum(p.numel() for p in model.head.parameters())
    reports = [r.getMessage() for r in caplog.records if r.getMessage().startswith("FreezeUnfreeze, epoch")]
    assert len(reports) == 2  # epoch 0 and the unfreeze; nothing when nothing changes
    assert f"{n_head:,} trainable, {n_backbone:,} frozen" in reports[0]
    assert f"{n_head + n_backbone:,} trainable, 0 frozen" in reports[1]
    assert "training: head x1)" in reports[0] and "training: head x1, backbone x0.1)" in reports[1]
    m = trainer.callback_metrics
    assert m["params/trainable"].item() == n_head + n_backbone
    assert m["params/trainable/backbone"].item() == n_backbone
    assert m["params/frozen/backbone"].item() == 0
    csv = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "params/frozen/backbone" in csv.splitlines()[0]


def test_two_strategies_are_refused(tiny_folder, tmp_path):
    with pytest.raises(FinetuningError, match="Several fine-tuning strategies"):
        fit(tmp_path, tiny_model(), tiny_data(tiny_folder), [FreezeBackbone(), FreezeUnfreeze()], epochs=1)


def test_one_parameter_table_at_start_and_one_per_unfreeze(tiny_folder, tmp_path, capsys, caplog):
    """TrainableSummary replaces Lightning's summary (no second table) and shows the frozen
    backbone in eval mode from the start; the strategy itself prints no table."""
    from lightning.pytorch.callbacks import ModelSummary

    from tlx.callbacks import TrainableSummary

    caplog.set_level(logging.INFO)
    summary = TrainableSummary()
    trainer = fit(tmp_path, tiny_model(), tiny_data(tiny_folder), [FreezeUnfreeze(unfreeze_at_epoch=1), summary],
                  epochs=3, enable_model_summary=True)
    assert [cb for cb in trainer.callbacks if isinstance(cb, ModelSummary)] == [summary]
    out = capsys.readouterr().out
    assert out.count("Parameters at epoch") == 2  # the start, the unfreeze; not epoch 2
    tables = out.split("Parameters at epoch")[1:]
    assert tables[0].startswith(" 0") and " eval" in next(ln for ln in tables[0].splitlines() if ln.startswith("backbone"))
    assert tables[1].startswith(" 1") and next(ln for ln in tables[1].splitlines() if ln.startswith("backbone")).endswith("train")
    assert "| Name" not in out + caplog.text  # Lightning's own table
