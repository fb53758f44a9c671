"""Build a per-dataset cache once under DDP: each rank does its share, every rank gets the whole.

The caches (decoded images, backbone features) are functions of the file list, so under DDP every
process would otherwise build the same cache in full. Here rank ``r`` of ``w`` builds items
``r, r + w, r + 2w, ...`` and the parts are exchanged with ``torch.distributed`` collectives, as
Lightning's strategy set them up (no process group of our own). Outside DDP these are no-ops.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if _distributed() else (0, 1)


def build_shared(items: Sequence[Any], build: Callable[[Sequence[Any]], list[T]]) -> list[T]:
    """``build(items)``, its work split across the ranks; every rank returns the full list."""
    rank, world = rank_and_world()
    if world == 1:
        return build(items)
    mine = build(items[rank::world])
    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, mine)  # pickled: fine for features and shrunk images
    out: list[Any] = [None] * len(items)
    for r, part in enumerate(parts):
        out[r::world] = part
    return out


def all_ranks(flag: bool) -> bool:
    """True when ``flag`` holds on every rank (say, a cache file each of them can read)."""
    if not _distributed():
        return flag
    t = torch.tensor([int(flag)])
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def is_writer() -> bool:
    """Global rank 0 writes a cache to disk; the others already hold it in memory."""
    return rank_and_world()[0] == 0


def barrier() -> None:
    if _distributed():
        dist.barrier()
