"""The BatchNorm policy: which normalisation layers update their running statistics."""

from __future__ import annotations

from torch import nn

from tlx.compat import BatchNormBase


def apply_bn_policy(root: nn.Module, freeze_bn_stats: bool, pretrained: nn.Module | None = None) -> None:
    """A BatchNorm layer with affine parameters runs in train mode exactly when one of them
    trains (so a frozen one normalises as pretrained); ``freeze_bn_stats`` keeps every BatchNorm
    of ``pretrained`` (the backbone; default: all of ``root``) in eval mode (small or mixed-domain
    batches give noisy statistics), its affine parameters still training. A BatchNorm the model
    adds outside it (a domain-adaptation bottleneck) starts at mean 0, variance 1: frozen there it
    would not normalise at all, so it learns its statistics.

    Never ``track_running_stats = False``: that makes frozen BN normalise with batch statistics
    in training and still drift from its pretrained behaviour (Lightning 15062, 13902).
    """
    kept = {id(m) for m in (pretrained if pretrained is not None else root).modules()} if freeze_bn_stats else set()
    for bn in root.modules():
        if not isinstance(bn, BatchNormBase):
            continue
        params = list(bn.parameters(recurse=False))
        if id(bn) in kept:
            bn.eval()
        elif params:
            bn.train(any(p.requires_grad for p in params))
