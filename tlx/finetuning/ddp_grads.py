"""Gradient averaging under DDP for parameters unfrozen after DDP was set up.

Freezing happens in ``setup``, before DDP wraps the model, so frozen parameters are not in
DDP's reducer and ``find_unused_parameters`` is not needed (Lightning 17212). Parameters
unfrozen later are not in the reducer either: their gradients are averaged here, in one
all-reduce over a flattened buffer.
"""

from __future__ import annotations

import torch
from torch import nn

from tlx.compat import flatten_dense_tensors, unflatten_dense_tensors


class LateGradientAverager:
    def __init__(self) -> None:
        self._tracked: set[int] | None = None

    def track(self, module: nn.Module, world_size: int) -> None:
        """Remember what DDP's reducer covers: the parameters trainable now."""
        self._tracked = {id(p) for p in module.parameters() if p.requires_grad} if world_size > 1 else None

    def average(self, module: nn.Module, world_size: int) -> None:
        if self._tracked is None or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        grads = [p.grad for p in module.parameters() if p.grad is not None and id(p) not in self._tracked]
        if not grads:
            return
        flat = flatten_dense_tensors(grads)
        torch.distributed.all_reduce(flat)
        flat /= world_size
        for g, synced in zip(grads, unflatten_dense_tensors(flat, grads)):
            g.copy_(synced)
