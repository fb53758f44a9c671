"""LogME (You et al., ICML 2021; fixed-point form of You et al., JMLR 2022, arXiv 2110.10545).

Per class ``c`` a Bayesian linear model ``y_c = F w + noise`` with prior ``w ~ N(0, 1/alpha)``
and noise ``N(0, 1/beta)``; LogME is the log marginal evidence ``log p(y_c | F)`` maximised over
``alpha, beta``, divided by N and averaged over classes. As in the authors' reference code
(thuml/LogME, ``_fit_fixed_point``) everything is done on one SVD of ``F``: with
``F = U S V^T``, ``x = U^T y`` and ``sigma = s^2`` the evidence and its fixed-point updates are
sums over the singular values, so each class costs O(k) per iteration after the SVD.

Two choices differ from the reference, for numerical care: the iteration runs until
``alpha/beta`` moves by less than ``tol`` (relative, default 1e-7, at most 100 steps) instead
of 11 steps at 1e-3, and when ``N < D`` the ``D - k`` zero singular values still contribute
``log(alpha)`` each to ``log|A|`` (the reference drops that term, which biases wide features).
"""

from __future__ import annotations

import numpy as np

from tlx.transferability.base import as_float64, as_labels, register_metric

_EPS = 1e-5  # the reference's guard against a zero residual or a zero-norm weight vector


def _evidence_terms(sigma: np.ndarray, x2: np.ndarray, rest: float, t: float):
    """``gamma``, ``|m|^2`` and the residual ``|y - F m|^2`` at ``t = alpha / beta``."""
    gamma = float((sigma / (sigma + t)).sum())
    m2 = float((sigma * x2 / (sigma + t) ** 2).sum())
    res2 = float((x2 * (t / (sigma + t)) ** 2).sum()) + rest
    return gamma, m2, res2


def class_evidence(s: np.ndarray, x: np.ndarray, y_sq: float, n: int, d: int,
                   max_iter: int = 100, tol: float = 1e-7) -> float:
    """Maximum log evidence / N of one target column, from singular values ``s`` and ``x = U^T y``."""
    sigma, x2 = s**2, x**2
    rest = max(y_sq - float(x2.sum()), 0.0)  # the part of y outside the span of F
    alpha, beta = 1.0, 1.0
    for _ in range(max_iter):
        t = alpha / beta
        gamma, m2, res2 = _evidence_terms(sigma, x2, rest, t)
        alpha = gamma / (m2 + _EPS)
        beta = (n - gamma) / (res2 + _EPS)
        if abs(alpha / beta - t) / t <= tol:
            break
    _, m2, res2 = _evidence_terms(sigma, x2, rest, alpha / beta)
    log_det_a = float(np.log(alpha + beta * sigma).sum()) + (d - len(sigma)) * np.log(alpha)
    evidence = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - log_det_a / 2
                - beta / 2 * res2 - alpha / 2 * m2 - n / 2 * np.log(2 * np.pi))
    return float(evidence / n)


@register_metric("logme", description="log marginal evidence of a Bayesian linear model (You et al. 2021)")
def logme(features, labels, max_iter: int = 100, tol: float = 1e-7) -> float:
    f = as_float64(features)
    y = as_labels(labels)
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    keep = s > s.max() * max(n, d) * np.finfo(np.float64).eps if s.size else s > 0  # numerical rank
    u, s = u[:, keep], s[keep]
    scores = []
    for c in range(int(y.max()) + 1):
        y_c = (y == c).astype(np.float64)
        scores.append(class_evidence(s, u.T @ y_c, float(y_c @ y_c), n, d, max_iter, tol))
    return float(np.mean(scores))
