"""examples/ run as a user runs them, on tiny generated images."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import REPO, make_imagefolder


@pytest.mark.multiprocess  # starts python processes
def test_quickstart_fits_loads_and_predicts(tmp_path):
    data = make_imagefolder(tmp_path / "data", n_train=6, n_val=3)
    out = tmp_path / "logs"
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "quickstart.py"), "--data", str(data), "--backbone",
         "timm:test_efficientnet", "--weights", "none", "--image-size", "32", "--epochs", "2",
         "--batch-size", "4", "--output", str(out)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "validation images right" in result.stdout
    assert "['cat', 'dog']; " in result.stdout and "/6 validation images right" in result.stdout
    assert list(out.rglob("best.ckpt"))
