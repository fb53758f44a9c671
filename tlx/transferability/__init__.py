"""Which backbone will transfer? Transferability scores from one forward pass, before any training.

One metric per file (``logme``, ``leep``, ``nce``, ``hscore``, ``knn``), registered by name;
:mod:`~tlx.transferability.extract` runs a backbone over the target images once and
:mod:`~tlx.transferability.ranking` scores, sorts and reports (``python -m tlx rank``).
"""

from tlx.transferability import hscore, knn, leep, logme, nce  # noqa: F401  (registration)
from tlx.transferability.base import METRICS, Metric, get_metric, register_metric

__all__ = ["METRICS", "Metric", "get_metric", "register_metric"]
