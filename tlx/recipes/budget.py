"""How long the default recipe fine-tunes: optimizer steps scaled to the data, not epochs.

    steps = clamp(ceil(epochs * n_train / batch_size), min_steps, max_steps)

with ``epochs = 2``, ``min_steps = 50``, ``max_steps = 300`` by default. A fixed epoch count gives
a small set almost no training (4 epochs of 100 images at batch 32 are 12 steps); the floor gives
it enough steps to move, the cap keeps a large set's run short, and in between the budget grows
with the data. The steps are run as whole epochs (``epochs_for``), so that every epoch is
complete and the last one ends with a validation.
"""

from __future__ import annotations

import math

from tlx.errors import TLXError


def step_budget(n_train: int, batch_size: int, epochs: float = 2.0, min_steps: int = 50, max_steps: int = 300) -> int:
    """Optimizer steps for ``n_train`` images at ``batch_size`` (see the module docstring)."""
    if n_train < 1 or batch_size < 1:
        raise TLXError(f"step_budget needs images and a batch size, got n_train={n_train}, batch_size={batch_size}.")
    if not 1 <= min_steps <= max_steps:
        raise TLXError(f"The step budget needs 1 <= min_steps <= max_steps, got {min_steps} and {max_steps}.")
    return min(max(math.ceil(epochs * n_train / batch_size), min_steps), max_steps)


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Batches in one epoch, with the image loader's rule: no last batch smaller than the others
    when the set is larger than one batch (``drop_last``)."""
    return n_train // batch_size if n_train > batch_size else 1


def epochs_for(steps: int, n_train: int, batch_size: int) -> int:
    """Whole epochs that make at least ``steps`` optimizer steps."""
    return max(1, math.ceil(steps / steps_per_epoch(n_train, batch_size)))
