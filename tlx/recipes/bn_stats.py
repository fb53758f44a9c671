"""BatchNorm statistics re-estimated on the training images, for the layers that fine-tune.

On a shifted domain (X-rays, hand signs on a plain background, aerial scenes) the pretrained
running statistics describe ImageNet, not the data: the layers then normalise with the wrong mean
and variance. ``reestimate_bn_stats`` replaces them by the exact average over the training images
(evaluation view, no gradients: "precise BN", as ``torch.optim.swa_utils.update_bn`` does for a
whole model, here for chosen layers only, the frozen ones keeping their pretrained statistics).

``shift`` measures how far the data is from the pretrained statistics: the mean over the layers'
channels of ``|new mean - old mean| / old std``, in units of the pretrained spread.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from tlx.compat import BatchNormBase
from tlx.modes import evaluating

BNState = dict[nn.Module, tuple[Tensor, Tensor, Tensor]]


def batchnorm_layers(modules: Iterable[nn.Module]) -> list[nn.Module]:
    """Every BatchNorm with running statistics inside ``modules`` (each once)."""
    seen: dict[int, nn.Module] = {}
    for module in modules:
        for m in module.modules():
            if isinstance(m, BatchNormBase) and m.track_running_stats:
                seen.setdefault(id(m), m)
    return list(seen.values())


def save_bn_state(layers: list[nn.Module]) -> BNState:
    return {bn: (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()) for bn in layers}


def load_bn_state(state: BNState) -> None:
    for bn, (mean, var, count) in state.items():
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.num_batches_tracked.copy_(count)


def shift(before: BNState) -> float:
    """Mean over channels of ``|mean now - mean before| / std before`` (see the module docstring)."""
    total, channels = 0.0, 0
    for bn, (mean, var, _) in before.items():
        total += float(((bn.running_mean - mean).abs() / (var + bn.eps).sqrt()).sum())
        channels += mean.numel()
    return total / max(channels, 1)


@torch.no_grad()
def reestimate_bn_stats(network: nn.Module, layers: list[nn.Module], dataset: Dataset, batch_size: int = 64,
                        num_workers: int = 0) -> BNState:
    """Replace the running statistics of ``layers`` (inside ``network``) by their average over
    ``dataset``; every other module runs in eval mode. Returns the statistics before (to measure
    the :func:`shift` or to put them back with :func:`load_bn_state`). Modes are restored."""
    before = save_bn_state(layers)
    momenta = {bn: bn.momentum for bn in layers}
    device = next(network.parameters()).device
    try:
        with evaluating(network):  # every module's own mode back afterwards
            for bn in layers:
                bn.reset_running_stats()
                bn.momentum = None  # a cumulative average: every batch weighs the same
                bn.train()
            for x, _ in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers):
                if len(x) > 1:  # one image has no variance
                    network(x.to(device))
    finally:
        for bn, momentum in momenta.items():
            bn.momentum = momentum
    return before
