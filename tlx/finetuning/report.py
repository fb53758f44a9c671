"""Trainable and frozen parameter counts per strategy group: one log line when they change,
metrics (``params/...``) every epoch. The table per part of the model is
:class:`tlx.callbacks.TrainableSummary`'s (or Lightning's model summary) alone."""

from __future__ import annotations

import logging

from lightning.pytorch import LightningModule

from tlx.optim import ParamGroup

log = logging.getLogger("tlx")


def group_counts(groups: list[ParamGroup], module: LightningModule) -> dict[str, tuple[int, int]]:
    """``{group name: (trainable, frozen)}``, plus ``(not optimised)`` for parameters in no group."""
    counts: dict[str, tuple[int, int]] = {}
    grouped: set[int] = set()
    for g in groups:
        grouped.update(id(p) for p in g.params)
        counts[g.name] = (sum(p.numel() for p in g.params if p.requires_grad), sum(p.numel() for p in g.params if not p.requires_grad))
    rest = [p for p in module.parameters() if id(p) not in grouped]
    if rest:
        counts["(not optimised)"] = (sum(p.numel() for p in rest if p.requires_grad), sum(p.numel() for p in rest if not p.requires_grad))
    return counts


class CountReport:
    def __init__(self, title: str):
        self.title = title
        self._last: dict[str, tuple[int, int]] | None = None

    def reset(self) -> None:
        self._last = None

    def __call__(self, groups: list[ParamGroup], module: LightningModule, epoch: int, is_global_zero: bool) -> None:
        counts = group_counts(groups, module)
        total_t = sum(t for t, _ in counts.values())
        total_f = sum(f for _, f in counts.values())
        if counts != self._last and is_global_zero:
            training = ", ".join(f"{n} x{g.lr_scale:.4g}" for g in groups if (n := g.name) in counts and counts[n][0])
            log.info(f"{self.title}, epoch {epoch}: {total_t:,} trainable, {total_f:,} frozen parameters (training: {training})")
        self._last = counts
        values = {"params/trainable": float(total_t), "params/frozen": float(total_f)}
        for n, (t, f) in counts.items():
            values[f"params/trainable/{n}"] = float(t)
            values[f"params/frozen/{n}"] = float(f)
        module.log_dict(values, on_step=False, on_epoch=True, batch_size=1)
