"""Optional dependencies: tlx imports without them, and a feature that needs one says what to install."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import REPO
from tlx.optional import MissingDependencyError, require


def test_require_names_the_extra_to_install():
    assert require("json", "export", "Reading JSON").dumps([]) == "[]"
    with pytest.raises(MissingDependencyError, match=r"ONNX export needs no_such_pkg.*pip install 'tlx\[export\]'"):
        require("no_such_pkg.sub", "export", "ONNX export")


@pytest.mark.multiprocess  # starts python processes
def test_tlx_imports_without_onnx_and_leaves_the_matplotlib_backend_alone():
    code = ("import sys; sys.modules['onnx'] = sys.modules['onnxruntime'] = None\n"
            "import tlx, tlx.cli, tlx.export, matplotlib\n"
            "print(matplotlib.get_backend())")
    env = {**os.environ, "MPLBACKEND": "svg", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "svg"  # a notebook's backend is not switched to Agg by importing tlx
