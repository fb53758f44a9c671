"""BatchNorm running statistics re-estimated after averaging weights.

An average of networks is a new network: the mean and variance of its BatchNorm inputs are not
the average of its ingredients' running statistics (those were measured on other weights), and
with the old statistics a soup or interpolation of BN networks can lose much of its accuracy
(Wortsman et al. 2022 and Izmailov et al. 2018, SWA, re-estimate them for this reason). A few
batches of training images in train mode, with no gradient, give the new statistics; weights
are untouched. torch's ``swa_utils.update_bn`` does exactly this (cumulative average, momentum
restored after).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch
from torch import nn
from torch.optim.swa_utils import update_bn


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def recalibrate_batchnorm(model: nn.Module, loader: Iterable, num_batches: int,
                          device: torch.device | str | None = None) -> bool:
    """Reset and re-estimate every BatchNorm layer's running statistics on the first
    ``num_batches`` batches of ``loader`` (``(images, labels)`` or images). Returns whether
    anything was re-estimated (``False`` with no BatchNorm or ``num_batches`` 0)."""
    if num_batches <= 0 or not has_batchnorm(model):
        return False
    update_bn(itertools.islice(loader, num_batches), model, device=device)
    model.eval()
    return True
