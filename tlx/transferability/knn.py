"""The cheap honest baseline: leave-one-out k-nearest-neighbour accuracy on the features.

Cosine similarity on L2-normalised features, each image voted on by its ``k`` nearest other
images (votes weighted by similarity, so ties break toward the closer neighbours). An accuracy
in [0, 1] that a user reads directly, at the cost of one N x N matrix product.
"""

from __future__ import annotations

import numpy as np

from tlx.transferability.base import as_float64, as_labels, register_metric


@register_metric("knn", description="leave-one-out 5-NN accuracy, cosine similarity")
def knn(features, labels, k: int = 5) -> float:
    f = as_float64(features)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    y = as_labels(labels)
    n = len(y)
    k = min(k, n - 1)
    if k < 1:
        return float("nan")
    sim = f @ f.T
    np.fill_diagonal(sim, -np.inf)  # leave one out
    nearest = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    votes = np.zeros((n, int(y.max()) + 1))
    np.add.at(votes, (np.repeat(np.arange(n), k), y[nearest].reshape(-1)),
              np.take_along_axis(sim, nearest, axis=1).reshape(-1) + 1.0)  # +1: cosine >= -1, weights > 0
    return float((votes.argmax(axis=1) == y).mean())
