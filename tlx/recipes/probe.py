"""The linear probe of LP-FT: a head fitted on the frozen backbone's pooled features
(extracted once by :func:`tlx.features.extract_features`).

The head is fitted as tlx's cached linear probe (``configs/hymenoptera_fast.yaml``) trains it:
AdamW (lr 3e-3, weight decay 0.01), batch 32, cosine over 15 epochs, the best epoch by validation
accuracy kept, so that "never worse than the linear probe" compares with that probe. On cached
features this takes well under a second.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class ProbeResult:
    head_state: dict[str, Tensor]  # the best epoch's head weights
    val_correct: int
    val_total: int
    best_epoch: int

    @property
    def val_acc(self) -> float:
        return self.val_correct / self.val_total


def count_correct(head: nn.Module, features: Tensor, labels: Tensor) -> int:
    """Top-1 hits of ``head`` on cached features (eval mode, no gradients)."""
    head.eval()
    with torch.no_grad():
        return int((head(features).argmax(dim=1) == labels).sum())


def fit_probe(head: nn.Module, train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor], epochs: int = 15,
              batch_size: int = 32, lr: float = 3e-3, weight_decay: float = 0.01, seed: int = 0) -> ProbeResult:
    """Train ``head`` on cached ``(features, labels)``; leaves it holding the best epoch's weights."""
    features, labels = train
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    n = len(labels)
    drop_last = n > batch_size  # the image loader's rule
    best: ProbeResult | None = None
    for epoch in range(epochs):
        head.train()
        order = torch.randperm(n, generator=generator)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            idx = order[start:start + batch_size]
            loss = nn.functional.cross_entropy(head(features[idx]), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        scheduler.step()
        correct = count_correct(head, *val)
        if best is None or correct > best.val_correct:  # ties keep the earlier epoch
            best = ProbeResult(copy.deepcopy(head.state_dict()), correct, len(val[1]), epoch)
    head.load_state_dict(best.head_state)
    return best
