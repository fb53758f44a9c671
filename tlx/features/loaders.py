"""Loaders over precomputed features, shaped like the image loaders they stand in for."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from tlx.data.sampling import eval_sampler
from tlx.data.shared_build import rank_and_world


class FeatureBatches(Dataset):
    """Whole batches of cached features, one index list per item (no per-sample collation).

    ``features`` is ``(N, D)``, or ``(N, V, D)`` with V views per image, of which each draw
    takes one at random (a fresh augmentation per epoch, from a fixed pool). Activations of a
    partial backbone are ``(N, C, H, W)`` or ``(N, V, C, H, W)``: say ``views`` then.
    """

    def __init__(self, features: Tensor, labels: Tensor, views: bool | None = None):
        self.features, self.labels = features, labels
        self.views = features.ndim == 3 if views is None else views

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(indices)
        feats = self.features[idx]
        if self.views:
            feats = feats[torch.arange(len(idx)), torch.randint(feats.shape[1], (len(idx),))]
        return feats, self.labels[idx]


class FeatureSamples(FeatureBatches):
    """One image's features per item: for DDP, where Lightning and tlx shard samples, not batches."""

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        feats, labels = super().__getitem__([index])
        return feats[0], labels[0]


def feature_loader(features: Tensor, labels: Tensor, batch_size: int, train: bool, trainer: Any = None,
                   views: bool | None = None) -> DataLoader:
    """``(features, label)`` batches: shuffled for training, in order (and in unpadded DDP shards) otherwise.
    ``views``: whether dimension 1 holds views of each image (default: for ``(N, V, D)`` features)."""
    if rank_and_world()[1] > 1:
        # Under DDP: Lightning gives the training loader a DistributedSampler (reshuffled every
        # epoch); evaluation gets tlx's unpadded shards, so that metrics count each image once.
        dataset = FeatureSamples(features, labels, views)
        drop_last = train and len(dataset) > batch_size
        sampler = None if train else eval_sampler(dataset, trainer)
        return DataLoader(dataset, batch_size=batch_size, shuffle=train, sampler=sampler, drop_last=drop_last)
    dataset = FeatureBatches(features, labels, views)
    sampler = RandomSampler(dataset) if train else SequentialSampler(dataset)
    # Same rule as the image loader: no last batch of one image in training.
    batches = BatchSampler(sampler, batch_size, drop_last=train and len(dataset) > batch_size)
    return DataLoader(dataset, batch_size=None, sampler=batches, num_workers=0)
