"""Train/eval modes, restored module by module.

``module.train(was_training)`` after an evaluation pass sets *every* submodule to that mode: the
parts a fine-tuning strategy froze (and its frozen BatchNorm statistics) would silently go back to
train mode. :func:`evaluating` puts each module back into its own mode instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode inside the block; every submodule's own mode back after it."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training
