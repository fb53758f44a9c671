"""NCE, negative conditional entropy (Tran et al., ICCV 2019).

Each target image gets one hard source label ``z_i = argmax theta(x_i)``; NCE is
``-H(Y | Z) = sum_{y,z} P(y, z) log P(y | z)`` over the empirical joint of (target label,
source label). At most 0; 0 means the source labels determine the target labels.
"""

from __future__ import annotations

import numpy as np

from tlx.transferability.base import as_float64, as_labels, joint_source_target, register_metric


@register_metric("nce", needs_source_classifier=True,
                 description="negative conditional entropy of target given source label (Tran et al. 2019)")
def nce(source_probs, labels) -> float:
    theta = as_float64(source_probs)
    y = as_labels(labels)
    hard = np.zeros_like(theta)
    hard[np.arange(len(y)), theta.argmax(axis=1)] = 1.0
    joint = joint_source_target(hard, y)
    marginal = joint.sum(axis=0, keepdims=True)  # P(z)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / np.broadcast_to(marginal, joint.shape)[nz])).sum())
