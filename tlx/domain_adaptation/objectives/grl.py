"""Gradient reversal (Ganin & Lempitsky, 2015): identity forward, ``-coeff * grad`` backward."""

from __future__ import annotations

import math

import torch
from torch import Tensor


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, coeff: float) -> Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.coeff * grad, None


def reverse_gradient(x: Tensor, coeff: float = 1.0) -> Tensor:
    """``x`` unchanged; its gradient multiplied by ``-coeff`` on the way back."""
    return _ReverseGrad.apply(x, coeff)


def warm_start(progress: float, gamma: float = 10.0, high: float = 1.0) -> float:
    """``high * (2 / (1 + exp(-gamma p)) - 1)``: 0 at the start of training, ``high`` at the end,
    so the discriminator's noisy early gradients do not disturb the features."""
    p = min(max(progress, 0.0), 1.0)
    return high * (2.0 / (1.0 + math.exp(-gamma * p)) - 1.0)
