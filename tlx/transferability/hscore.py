"""Regularised H-score (Bao et al., ICIP 2019; shrinkage form of Ibrahim et al., NeurIPS 2022).

``H = tr(cov(f)^-1 cov(E[f | y]))``: how much of the feature variance lies between the target
classes. With D ~ N (1280 features, a few hundred images) the empirical ``cov(f)`` is singular
and H explodes with noise; the regularised score uses the Ledoit-Wolf shrinkage estimate
``cov_a = (1 - a) cov + a mu I`` and ``H_a = tr(cov_a^-1 (1 - a) cov(E[f | y]))``.
"""

from __future__ import annotations

import numpy as np

from tlx.transferability.base import as_float64, as_labels, register_metric


def ledoit_wolf(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf (2004) shrunk covariance of centred ``x`` ``(N, D)``, and the shrinkage ``a``."""
    n, d = x.shape
    emp = x.T @ x / n
    mu = np.trace(emp) / d
    x2 = x**2
    # delta: distance of emp from mu*I; beta: estimated error of emp (both per feature).
    delta = (np.sum(emp**2) - 2 * mu * np.trace(emp) + d * mu**2) / d
    beta = (np.sum(x2.T @ x2) / n - np.sum(emp**2)) / (d * n)
    shrinkage = 0.0 if delta <= 0 else float(min(beta, delta) / delta)
    shrunk = (1 - shrinkage) * emp
    shrunk.flat[:: d + 1] += shrinkage * mu
    return shrunk, shrinkage


@register_metric("hscore", description="regularised H-score, Ledoit-Wolf shrinkage (Ibrahim et al. 2022)")
def hscore(features, labels) -> float:
    f = as_float64(features)
    f = f - f.mean(axis=0, keepdims=True)
    y = as_labels(labels)
    cov_f, a = ledoit_wolf(f)
    class_means = np.zeros_like(f)
    for c in np.unique(y):
        class_means[y == c] = f[y == c].mean(axis=0)
    cov_g = np.cov(class_means, rowvar=False)
    return float(np.trace(np.linalg.pinv(cov_f, hermitian=True) @ ((1 - a) * cov_g)))
