"""What `python -m tlx fit` prints must match what happens."""

import logging

from tests.helpers import run_cli
from tests.helpers import tiny_fit_args


def test_fit_does_not_claim_weights_only_defaults_to_false(tiny_folder, tmp_path, caplog, capfd):
    """Lightning logs "`weights_only` was not set, defaulting to `False`" for every
    trainer.save_checkpoint(path) without the argument (tlx's last.ckpt writer did that); tlx
    reads every checkpoint with weights_only=True, so the line said the opposite."""
    caplog.set_level(logging.INFO)
    # every_n_train_steps: LastCheckpoint writes last.ckpt itself (not only ModelCheckpoint)
    cli = run_cli(tiny_fit_args(tiny_folder, tmp_path / "runs", epochs=1,
                                extra=["--last_checkpoint.every_n_train_steps=2"]))
    assert any(p.name == "last.ckpt" for p in (tmp_path / "runs").rglob("*.ckpt"))
    out = caplog.text + "".join(capfd.readouterr())
    assert "weights_only" not in out, out
    assert cli.trainer.global_step > 0
