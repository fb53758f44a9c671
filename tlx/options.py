"""Range checks for numeric options, at the boundary, with the option's name in the message.

A batch size of 0, ``num_workers`` -1 or ``crop_scale`` [2, 1] otherwise end deep inside torch or
torchvision (or, worse, train: ``hflip`` 2 flips every image). The DataModule base, the model and
:func:`tlx.preprocessing.as_preprocessing` call :func:`check_options`; the rule for each name is
written once here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from tlx.errors import TLXError


class OptionError(TLXError, ValueError):
    """An option outside its valid range."""


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


# name: (holds, what a valid value is)
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "batch_size": (_positive_int, "a positive integer"),
    "eval_batch_size": (lambda v: v is None or _positive_int(v), "a positive integer (or null: batch_size)"),
    "num_workers": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0 (0: load in the main process)"),
    "hflip": (lambda v: _number(v) and 0 <= v <= 1, "a probability in [0, 1]"),
    "crop_scale": (lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(_number(x) for x in v)
                   and 0 < v[0] <= v[1] <= 1, "two area fractions [min, max] with 0 < min <= max <= 1"),
    "mixup_alpha": (lambda v: _number(v) and v >= 0, "a number >= 0 (0: off)"),
    "cutmix_alpha": (lambda v: _number(v) and v >= 0, "a number >= 0 (0: off)"),
    "val_split": (lambda v: _number(v) and 0 < v < 1, "a fraction between 0 and 1 (exclusive)"),
    "label_smoothing": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "input_size": (_positive_int, "a positive number of pixels"),
    "resize_size": (_positive_int, "a positive number of pixels"),
    "mean": (lambda v: isinstance(v, (list, tuple)) and len(v) == 3 and all(_number(x) for x in v), "three numbers (R, G, B)"),
    "std": (lambda v: isinstance(v, (list, tuple)) and len(v) == 3 and all(_number(x) and x > 0 for x in v),
            "three positive numbers (R, G, B)"),
}


def check_options(values: Mapping[str, Any], prefix: str) -> None:
    """Raise :class:`OptionError` for the first of ``values`` outside its rule; ``prefix`` is where the
    options live on the command line (``data``, ``model``, ``data.preprocessing``)."""
    for name, value in values.items():
        rule = RULES.get(name)
        if rule is not None and not rule[0](value):
            raise OptionError(f"{prefix}.{name} must be {rule[1]}, got {value!r}.")
