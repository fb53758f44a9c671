"""BatchNorm running statistics after averaging weights: kept when the ingredients share them,
re-estimated when they differ.

An average of networks is a new network. When the ingredients trained their BatchNorm running
statistics, each measured them on its own weights, and their average is not the statistics of the
averaged network: a soup or interpolation of such networks can lose much of its accuracy
(Wortsman et al. 2022 and Izmailov et al. 2018, SWA, re-estimate them for this reason). A few
batches of training images in train mode, with no gradient, give the new statistics; weights are
untouched. torch's ``swa_utils.update_bn`` does exactly this (cumulative average, momentum
restored after).

When the ingredients carry identical statistics (fine-tuned with them frozen, as tlx's default
LP-FT recipe does on small data, and the linear probe that shares the pretrained ones), the
average keeps them exactly, and they are the statistics the probe's head and every run were
trained under: re-estimating them then only swaps in a noisier estimate from a few batches, and
on a shifted domain loses what the pretrained statistics gave. :func:`recalibration_plan` applies
that rule; an explicit number of batches (0 included) overrides it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import update_bn

DEFAULT_BATCHES = 20  # re-estimation batches when the rule asks for it


def batchnorm_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def has_batchnorm(model: nn.Module) -> bool:
    return bool(batchnorm_layers(model))


def statistics_keys(model: nn.Module) -> list[str]:
    """State-dict keys of every BatchNorm layer's running mean and variance (not the step count,
    which says how long a layer trained, not what it measured)."""
    prefix = lambda name: f"{name}." if name else ""  # noqa: E731  a bare BatchNorm module is named ""
    return [f"{prefix(name)}{buf}" for name, m in batchnorm_layers(model).items()
            if m.track_running_stats for buf in ("running_mean", "running_var")]


def statistics_differ(model: nn.Module, states: Sequence[dict[str, Tensor]]) -> bool:
    """Whether the ``states`` (state dicts of ``model``'s architecture) hold BatchNorm running
    statistics that are not bit-for-bit the same. Frozen statistics are copied, never recomputed,
    so equality is exact; any difference at all means some ingredient measured its own."""
    keys = statistics_keys(model)
    return any(not torch.equal(s[k], states[0][k]) for s in states[1:] for k in keys)


@dataclass(frozen=True)
class RecalibrationPlan:
    """What happens to BatchNorm statistics after an average: ``batches`` to re-estimate them on
    (0: the averaged statistics stay), and why."""

    batches: int
    reason: str
    requested: int | None
    statistics_differ: bool

    def to_dict(self) -> dict:
        return {"requested": self.requested, "batches": self.batches,
                "statistics_differ": self.statistics_differ, "reason": self.reason}


def recalibration_plan(model: nn.Module, states: Sequence[dict[str, Tensor]],
                       requested: int | None = None) -> RecalibrationPlan:
    """``requested`` ``None``: re-estimate on :data:`DEFAULT_BATCHES` batches only when the
    ingredients' statistics differ; a number: that many batches regardless (0: never)."""
    if not has_batchnorm(model):
        return RecalibrationPlan(0, "the network has no BatchNorm", requested, False)
    differ = statistics_differ(model, states)
    if requested is not None:
        what = f"re-estimated on {requested} training batches" if requested else "kept as averaged"
        return RecalibrationPlan(requested, f"{what}, as --bn_recalibration_batches {requested} asks "
                                 f"(the ingredients' statistics {'differ' if differ else 'are identical'})",
                                 requested, differ)
    if differ:
        return RecalibrationPlan(DEFAULT_BATCHES, f"the ingredients' running statistics differ (BatchNorm trained): "
                                 f"re-estimated on {DEFAULT_BATCHES} training batches after every average",
                                 requested, True)
    return RecalibrationPlan(0, "the ingredients' running statistics are identical (fine-tuned with them frozen): "
                             "every average keeps them, no re-estimation (--bn_recalibration_batches N forces it)",
                             requested, False)


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
