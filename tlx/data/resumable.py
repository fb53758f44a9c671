"""A training stream that a checkpoint can resume mid-epoch, bit for bit.

Lightning restores the loops' counters from a checkpoint but a plain DataLoader starts its epoch
again from a fresh shuffle. Here the order and every augmentation are functions of
``(seed, epoch, position)`` only:

* :class:`EpochOrder` draws each epoch's order from its own generator seeded with
  ``(seed, epoch)`` (Lightning calls ``set_epoch``) and can start part way into an epoch;
* :class:`SeededDraws` runs each sample's random transforms under a seed derived from the same
  ``(seed, epoch, position)``, whatever the worker, the prefetching or the global RNG did before.

:class:`ResumableTrainData` (mixed into the datamodule) stores ``seed``, epoch and batches done in
the checkpoint and positions the next loader accordingly. MixUp/CutMix, applied per batch by the
collate function, still draw from the worker's RNG and are not covered.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

log = logging.getLogger("tlx")

_MIX = 0x9E3779B97F4A7C15  # spreads nearby integers over the seed space


def _seed(*parts: int) -> int:
    h = 0
    for p in parts:
        h = (h * _MIX + int(p) + 1) % (2**63 - 1)
    return h


class EpochOrder(Sampler[int]):
    """Shuffled (or, with ``weights``, class-balanced) order per epoch, seeded by ``(seed, epoch)``.

    Yields ``index + n * draw`` where ``draw`` numbers the draws of the whole run:
    :class:`SeededDraws` splits it back into the index and the draw's seed.
    """

    def __init__(self, n: int, seed: int, weights: torch.Tensor | None = None, epoch: int = 0, start: int = 0):
        self.n, self.seed, self.weights = n, seed, weights
        self.epoch, self.start = epoch, start
        # For the DataLoader: its workers' base seed comes from here, not from the global RNG
        # (a draw there would shift the dropout of every later step after a resume).
        self.generator = torch.Generator().manual_seed(_seed(seed, epoch, 1))

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.start = epoch, 0  # a resume position belongs to its own epoch only
            self.generator.manual_seed(_seed(self.seed, epoch, 1))

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(_seed(self.seed, self.epoch))
        if self.weights is None:
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        start, self.start = self.start, 0
        base = self.epoch * self.n
        for pos in range(start, self.n):
            yield int(order[pos]) + self.n * (base + pos)


class SeededDraws(Dataset):
    """``dataset[index]`` for the keys of :class:`EpochOrder`, with transforms seeded per draw."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int) -> Any:
        draw, index = divmod(key, len(self.dataset))
        # fork_rng: the seed stays local, the caller's RNG (dropout in the main process) is untouched.
        # (default_generator, not torch.manual_seed, which would also reseed every CUDA generator.)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(_seed(self.seed, draw))
            return self.dataset[index]

    def __getattr__(self, name: str) -> Any:  # targets, samples, ... of the wrapped dataset
        if name in ("dataset", "seed"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


class ResumableTrainData:
    """Mixin for a LightningDataModule: checkpoint where the training stream is, resume there."""

    _resume: dict[str, int] | None = None
    _order_seed: int | None = None

    def resumable(self, dataset: Dataset, batch_size: int, weights: torch.Tensor | None = None) -> dict[str, Any]:
        """DataLoader arguments (dataset, sampler, generator), positioned where a checkpoint left off."""
        if self._order_seed is None:
            self._order_seed = torch.initial_seed()  # the run's seed (seed_everything)
        n = len(dataset)
        epoch, start = 0, 0
        if self._resume:  # once: a later epoch's loader starts at its beginning
            state, self._resume = self._resume, None
            epoch, start = (state["epoch"] + 1, 0) if state["finished"] else (state["epoch"], state["done"] * batch_size)
            if start and getattr(getattr(self, "trainer", None), "distributed_sampler_kwargs", None) is not None:
                # Under DDP the sampler is sharded by Lightning's wrapper, which needs whole epochs:
                # the interrupted epoch restarts from its beginning (same order), as in plain Lightning.
                log.warning("Resuming mid-epoch under DDP: epoch %d restarts from its first batch.", epoch)
                start = 0
        order = EpochOrder(n, self._order_seed, weights, epoch=epoch, start=start)
        return {"dataset": SeededDraws(dataset, self._order_seed), "sampler": order, "generator": order.generator}

    def state_dict(self) -> dict[str, Any]:
        trainer = getattr(self, "trainer", None)
        if trainer is None or self._order_seed is None:
            return {}
        # Batches whose step is done in this epoch (``processed`` also counts the one whose
        # on_train_batch_end is saving this checkpoint).
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {
            "order_seed": self._order_seed,
            "epoch": trainer.current_epoch,
            "done": done,
            "finished": done >= trainer.num_training_batches,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            self._order_seed = int(state_dict["order_seed"])
            self._resume = {k: int(state_dict[k]) for k in ("epoch", "done", "finished")}
