"""Samplers for evaluation under DDP: every image counted exactly once."""

from __future__ import annotations

import logging
from typing import Any

from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import Dataset, Sampler

log = logging.getLogger("tlx")


def eval_sampler(dataset: Dataset, trainer: Any) -> Sampler | None:
    """An unpadded shard of ``dataset`` for this rank, or ``None`` when not distributed.

    Lightning's default ``DistributedSampler`` pads the last shard with repeats of the first images
    when ``len(dataset) % world_size != 0``, so validation accuracy would count them twice and
    differ from the single-process figure. Here shards differ by at most one image instead, and
    torchmetrics sums the counts over ranks, so the metrics equal the single-process ones. (Safe
    in evaluation: DDP syncs buffers only on the first forward, which every rank makes as long as
    each shard holds one image.) Lightning leaves a ``DistributedSampler`` it finds in place.
    """
    kwargs = getattr(trainer, "distributed_sampler_kwargs", None) if trainer is not None else None
    if not kwargs or kwargs.get("num_replicas", 1) <= 1:
        return None
    if len(dataset) < kwargs["num_replicas"]:
        log.warning("%d evaluation images for %d processes: some images are counted twice.",
                    len(dataset), kwargs["num_replicas"])
        return None  # Lightning pads, so that no rank has an empty shard (it would hang DDP)
    return UnrepeatedDistributedSampler(dataset, num_replicas=kwargs["num_replicas"], rank=kwargs["rank"],
                                        shuffle=False)
