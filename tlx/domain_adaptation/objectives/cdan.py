"""CDAN (Long et al., 2018): the discriminator sees features conditioned on class predictions."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from tlx.domain_adaptation.objectives.base import (
    DomainBatch,
    Objective,
    ObjectiveOutput,
    certainty_weights,
    discriminator,
    domain_loss,
)
from tlx.domain_adaptation.objectives.grl import reverse_gradient, warm_start


def multilinear_map(f: Tensor, g: Tensor) -> Tensor:
    """Flattened outer product ``f (x) g``: (B, F) and (B, C) to (B, F*C)."""
    return torch.bmm(g.unsqueeze(2), f.unsqueeze(1)).flatten(1)


class MultilinearMap(nn.Module):
    """:func:`multilinear_map` as a module, so that ``CDAN.map`` is always callable. It holds no
    parameters or buffers: checkpoints (state_dict keys) are as they were without it."""

    def forward(self, f: Tensor, g: Tensor) -> Tensor:
        return multilinear_map(f, g)


class RandomizedMultilinearMap(nn.Module):
    """``(f R_f) * (g R_g) / sqrt(d)`` with fixed Gaussian ``R``: an unbiased, ``d``-dimensional
    estimate of the multilinear map's inner products, when ``F * C`` is too wide."""

    def __init__(self, num_features: int, num_classes: int, output_dim: int):
        super().__init__()
        self.output_dim = output_dim
        # Buffers: fixed, moved with the model, saved in checkpoints.
        self.register_buffer("rf", torch.randn(num_features, output_dim))
        self.register_buffer("rg", torch.randn(num_classes, output_dim))

    def forward(self, f: Tensor, g: Tensor) -> Tensor:
        return (f @ self.rf.to(f.dtype)) * (g @ self.rg.to(g.dtype)) / math.sqrt(self.output_dim)


class CDAN(Objective):
    """Conditional adversarial alignment of the joint distribution of features and predictions.

    Args:
        trade_off: weight of the domain loss.
        entropy_conditioning: weight samples by ``1 + exp(-entropy)`` of their prediction
            (CDAN+E): confidently predicted samples drive the alignment.
        randomized: ``"auto"`` uses the randomized map when ``features * classes`` exceeds
            ``max_map_dim``; ``true``/``false`` force it.
        randomized_dim: output width of the randomized map.
        max_map_dim: the widest multilinear map used as it is.
        gamma: steepness of the gradient-reversal warm-start schedule.
        hidden: width of the discriminator's hidden layers.
    """

    def __init__(
        self,
        trade_off: float = 1.0,
        entropy_conditioning: bool = True,
        randomized: bool | str = "auto",
        randomized_dim: int = 1024,
        max_map_dim: int = 4096,
        gamma: float = 10.0,
        hidden: int = 1024,
    ):
        super().__init__(trade_off)
        self.entropy_conditioning = entropy_conditioning
        self.randomized = randomized
        self.randomized_dim = randomized_dim
        self.max_map_dim = max_map_dim
        self.gamma = gamma
        self.hidden = hidden
        self.map: nn.Module = MultilinearMap()
        self.discriminator: nn.Module | None = None

    def build(self, num_features: int, num_classes: int) -> None:
        randomized = self.randomized
        if randomized == "auto":
            randomized = num_features * num_classes > self.max_map_dim
        if randomized:
            self.map = RandomizedMultilinearMap(num_features, num_classes, self.randomized_dim)
            width = self.randomized_dim
        else:
            self.map = MultilinearMap()
            width = num_features * num_classes
        self.discriminator = discriminator(width, self.hidden)

    def forward(self, batch: DomainBatch) -> ObjectiveOutput:
        f = torch.cat([batch.source_features, batch.target_features])
        # Predictions condition the discriminator but are not trained through it.
        g = torch.cat([batch.source_logits, batch.target_logits]).float().softmax(dim=1).detach()
        h = reverse_gradient(self.map(f, g.to(f.dtype)), warm_start(batch.progress, self.gamma))
        weight = certainty_weights(g) if self.entropy_conditioning else None
        loss, acc, _ = domain_loss(self.discriminator, h, len(batch.source_features), weight)
        return ObjectiveOutput(self.trade_off * loss, logs={"domain_loss": loss.detach(), "domain_acc": acc})
