"""What every domain-adaptation objective sees and returns, and pieces they share."""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class DomainBatch:
    """One training step's features and logits, source and target, from a single forward pass."""

    source_features: Tensor
    target_features: Tensor
    source_logits: Tensor
    target_logits: Tensor
    source_labels: Tensor
    progress: float = 1.0  # fraction of training done, in [0, 1] (drives warm-start schedules)


@dataclass
class ObjectiveOutput:
    """``loss`` is added to the source cross-entropy (already scaled by the trade-off);
    ``source_weights`` (one per source sample, mean 1), when given, weight that cross-entropy."""

    loss: Tensor
    source_weights: Tensor | None = None
    logs: dict[str, Tensor | float] = field(default_factory=dict)


class Objective(nn.Module):
    """A transfer objective: ``build`` once the feature width and class count are known, then
    ``forward(DomainBatch) -> ObjectiveOutput`` every training step.

    Objectives are submodules of the classifier, so parameters they create in ``build``
    (discriminators) are trained by its optimizer and saved in its checkpoints.

    Args:
        trade_off: weight of the transfer loss relative to the source cross-entropy.
    """

    def __init__(self, trade_off: float = 1.0):
        super().__init__()
        self.trade_off = trade_off

    def build(self, num_features: int, num_classes: int) -> None:
        """Create parameters that depend on the feature width or class count (default: none)."""

    def forward(self, batch: DomainBatch) -> ObjectiveOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict:
        """``class_path`` and ``init_args``: plain data for hyperparameters and checkpoints."""
        params = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {
            "class_path": f"{type(self).__module__}.{type(self).__qualname__}",
            "init_args": {p: getattr(self, p) for p in params if hasattr(self, p)},
        }


@contextlib.contextmanager
def float32(t: Tensor):
    """Autocast off: statistics such as covariances and kernels lose too much in bf16/fp16."""
    with torch.autocast(device_type=t.device.type, enabled=False):
        yield


def entropy(probs: Tensor, eps: float = 1e-5) -> Tensor:
    """Per-row Shannon entropy of probabilities."""
    return -(probs * torch.log(probs + eps)).sum(dim=1)


def certainty_weights(probs: Tensor) -> Tensor:
    """``1 + exp(-entropy)``, normalised to mean 1: confident samples count more (CDAN-E, MCC)."""
    w = 1.0 + torch.exp(-entropy(probs))
    return w * len(w) / w.sum()


def discriminator(in_features: int, hidden: int = 1024) -> nn.Sequential:
    """The domain discriminator of DANN/CDAN: two hidden layers, one logit (source = 1)."""
    return nn.Sequential(
        nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
        nn.Linear(hidden, 1),
    )


def domain_loss(
    discriminator: nn.Module, h: Tensor, num_source: int, weight: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Binary cross-entropy of a domain discriminator on ``h`` (source rows first, label 1; target
    rows label 0), its accuracy, and its float32 logits (DANN, CDAN, instance weighting)."""
    logits = discriminator(h).squeeze(1).float()
    labels = torch.zeros_like(logits)
    labels[:num_source] = 1.0
    loss = F.binary_cross_entropy_with_logits(logits, labels, weight=weight)
    accuracy = ((logits > 0).float() == labels).float().mean()
    return loss, accuracy, logits
