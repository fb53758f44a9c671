"""The BatchNorm policy: which normalisation layers update their running statistics."""

from __future__ import annotations

from torch import nn

from tlx.compat import BatchNormBase


def apply_bn_policy(root: nn.Module, freeze_bn_stats: bool) -> None:
    """A BatchNorm layer with affine parameters runs in train mode exactly when one of them
    trains (so a frozen one normalises as pretrained); ``freeze_bn_stats`` keeps every BatchNorm
    in eval mode (small batches give noisy statistics), its affine parameters still training.

    Never ``track_running_stats = False``: that makes frozen BN normalise with batch statistics
    in training and still drift from its pretrained behaviour (Lightning 15062, 13902).
    """
    for bn in root.modules():
        if not isinstance(bn, BatchNormBase):
            continue
        params = list(bn.parameters(recurse=False))
        if freeze_bn_stats:
            bn.eval()
        elif params:
            bn.train(any(p.requires_grad for p in params))
