"""What every transferability metric shares: its signature and a registry by name.

A metric scores one backbone on one target task from a single forward pass: ``features``
``(N, D)`` of the target images, their ``labels`` ``(N,)`` in ``[0, C)``, and, for metrics
that read the source task's predictions (LEEP, NCE), ``source_probs`` ``(N, Z)``: the
backbone's own ImageNet classifier's softmax. Higher is better for every metric. All
arithmetic is float64 in numpy: scores of bf16 and fp32 features must agree to 3 digits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tlx.errors import TLXError, close_names

ScoreFn = Callable[..., float]


@dataclass(frozen=True)
class Metric:
    name: str
    score: ScoreFn  # score(features, labels) or score(source_probs, labels)
    needs_source_classifier: bool = False
    description: str = ""


METRICS: dict[str, Metric] = {}


def register_metric(name: str, needs_source_classifier: bool = False, description: str = "") -> Callable[[ScoreFn], ScoreFn]:
    def decorator(fn: ScoreFn) -> ScoreFn:
        METRICS[name] = Metric(name, fn, needs_source_classifier, description)
        return fn

    return decorator


def get_metric(name: str) -> Metric:
    if name not in METRICS:
        raise TLXError(f"Unknown transferability metric {name!r}: choose from {', '.join(METRICS)}."
                       f"{close_names(name, METRICS)}")
    return METRICS[name]


def as_float64(x) -> np.ndarray:
    """A float64 numpy copy of a tensor (any dtype, bf16 included) or array."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def as_labels(y) -> np.ndarray:
    if hasattr(y, "detach"):
        y = y.detach().cpu().numpy()
    y = np.asarray(y).astype(np.int64).reshape(-1)
    if y.size and y.min() < 0:
        raise TLXError("Transferability labels must be class indices >= 0.")
    return y


def joint_source_target(source_probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Empirical joint ``P(y, z)`` ``(C, Z)`` of target label y and source label z."""
    num_classes = int(labels.max()) + 1
    joint = np.zeros((num_classes, source_probs.shape[1]))
    np.add.at(joint, labels, source_probs)
    return joint / len(labels)
