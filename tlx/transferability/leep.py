"""LEEP, the log expected empirical prediction (Nguyen et al., ICML 2020).

The source classifier's softmax ``theta(x)`` over Z source classes defines the empirical joint
``P(y, z) = 1/N sum_i theta(x_i)_z [y_i = y]`` and the conditional ``P(y | z)``; LEEP is the
average log-likelihood of the "expected empirical predictor"
``p(y_i | x_i) = sum_z P(y_i | z) theta(x_i)_z``. At most 0; higher transfers better.
"""

from __future__ import annotations

import numpy as np

from tlx.transferability.base import as_float64, as_labels, joint_source_target, register_metric


@register_metric("leep", needs_source_classifier=True,
                 description="log expected empirical prediction from the source classifier (Nguyen et al. 2020)")
def leep(source_probs, labels) -> float:
    theta = as_float64(source_probs)
    y = as_labels(labels)
    joint = joint_source_target(theta, y)  # (C, Z)
    conditional = joint / np.maximum(joint.sum(axis=0, keepdims=True), np.finfo(np.float64).tiny)  # P(y | z)
    eep = (theta * conditional[y]).sum(axis=1)  # sum_z P(y_i | z) theta(x_i)_z
    return float(np.mean(np.log(np.maximum(eep, np.finfo(np.float64).tiny))))
