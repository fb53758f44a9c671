"""Uniform soup (Wortsman et al., 2022): the plain average of several fine-tuned runs' weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def average_weights(states: Sequence[dict[str, Tensor]], coefficients: Sequence[float]) -> dict[str, Tensor]:
    """``sum_i c_i * state_i`` for floating-point tensors. Integer buffers (BatchNorm's
    ``num_batches_tracked``) cannot be averaged: they come from the state of largest coefficient.

    Summed as ``c_0 s_0 + c_1 s_1 + ...`` in float32 or wider, so that a coefficient of exactly 1
    next to zeros returns that state bit for bit (WiSE-FT's alpha = 0 and 1)."""
    main = max(range(len(states)), key=lambda i: coefficients[i])
    out = {}
    for key, ref in states[main].items():
        if not ref.is_floating_point():
            out[key] = ref.clone()
            continue
        dtype = torch.promote_types(ref.dtype, torch.float32)  # half-precision weights summed in float32
        acc = None
        for c, s in zip(coefficients, states):
            term = s[key].to(dtype) * c
            acc = term if acc is None else acc + term
        out[key] = acc.to(ref.dtype)
    return out


def uniform_soup(states: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    """The mean of ``states`` (same keys and shapes)."""
    return average_weights(states, [1.0 / len(states)] * len(states))
