"""Regularised H-score (Bao et al., ICIP 2019; shrinkage form of Ibrahim et al., NeurIPS 2022).

``H = tr(cov(f)^-1 cov(E[f | y]))``: how much of the feature variance lies between the target
classes. With D ~ N (1280 features, a few hundred images) the empirical ``cov(f)`` is singular
and H explodes with noise; the regularised score uses the Ledoit-Wolf shrinkage estimate
``cov_a = (1 - a) cov + a mu I`` and ``H_a = tr(cov_a^-1 (1 - a) cov(E[f | y]))``.

Computed without any D x D matrix: with the centred features ``X = U S V^T``, ``cov_a`` is
``(1 - a) S^2 / N + a mu`` on the span of V (and ``a mu`` beside it), and the class means lie
in that span, so ``H_a = (1 - a) / (N - 1) sum_j |G v_j|^2 / ((1 - a) s_j^2 / N + a mu)`` with G
the per-image class means. O(N^2 D) instead of O(D^3): 1280-wide features cost milliseconds.
"""

from __future__ import annotations

import numpy as np

from tlx.transferability.base import as_float64, as_labels, register_metric


def ledoit_wolf_shrinkage(x: np.ndarray) -> tuple[float, float]:
    """Ledoit-Wolf (2004) shrinkage ``a`` and target scale ``mu`` for centred ``x`` ``(N, D)``,
    as scikit-learn's ``ledoit_wolf_shrinkage``, with every D x D sum taken in N x N form."""
    n, d = x.shape
    gram = x @ x.T
    trace = np.trace(gram) / n  # tr(emp), emp = X^T X / n
    mu = trace / d
    emp_sq = np.sum(gram**2) / n**2  # |emp|_F^2 = |X X^T|_F^2 / n^2
    x2_sq = np.sum(np.sum(x**2, axis=1) ** 2)  # sum of all entries of (X^2)^T X^2
    delta = (emp_sq - 2 * mu * trace + d * mu**2) / d
    beta = (x2_sq / n - emp_sq) / (d * n)
    return (0.0 if delta <= 0 else float(min(beta, delta) / delta)), float(mu)


@register_metric("hscore", description="regularised H-score, Ledoit-Wolf shrinkage (Ibrahim et al. 2022)")
def hscore(features, labels) -> float:
    f = as_float64(features)
    f = f - f.mean(axis=0, keepdims=True)
    y = as_labels(labels)
    n = len(y)
    a, mu = ledoit_wolf_shrinkage(f)
    class_means = np.zeros_like(f)
    for c in np.unique(y):
        class_means[y == c] = f[y == c].mean(axis=0)
    _, s, vt = np.linalg.svd(f, full_matrices=False)
    eig = (1 - a) * s**2 / n + a * mu  # cov_a on the span of the features
    projected = class_means @ vt.T  # (N, k): class means in that basis (np.cov's mean is 0 here)
    return float((1 - a) / (n - 1) * np.sum(projected**2 / np.maximum(eig, np.finfo(np.float64).tiny)))
