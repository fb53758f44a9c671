"""Run a (partial) backbone over a dataset once: bf16 where the hardware has it, split across DDP
ranks, cached on disk by content.

:func:`extract_features` is the one way tlx turns images into feature tensors; the feature cache
of a frozen-backbone fit (:class:`tlx.speed.FeatureCache`) is one caller, and ranking backbones,
distillation or partial fine-tuning call it the same way. The on-disk key is a digest of what
decides the result: the network's weights, the data (files and their preprocessing, from the
dataset or the caller's ``cache_key``), the number of views and the precision. Change any and
the features are recomputed; a file written by another run with the same key is reused.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from tlx.checkpointing import atomic_torch_save
from tlx.data.folders import files_digest
from tlx.data.shared_build import all_ranks, build_shared, is_writer
from tlx.errors import TLXError
from tlx.features.digest import content_key, weights_digest
from tlx.modes import evaluating

log = logging.getLogger("tlx")


# What extraction_precision understands: None (fp32), auto, the short names and Lightning's strings.
PRECISIONS = (None, "auto", "bf16", "32", "16", "bf16-mixed", "bf16-true", "32-true", "16-mixed", "16-true")


def _draw_seed() -> int:
    """One draw from the caller's torch stream, as a DataLoader's iterator takes its base seed."""
    return int(torch.empty((), dtype=torch.int64).random_().item())


@contextlib.contextmanager
def _seeded_views(seed: int):
    """Draw the views (augmentations, loader seeds) from ``seed``, on a fork of the random state.

    The caller's stream advances by the one draw that made ``seed``, whether the features are
    computed or read from disk: a run that builds a cache trains on the same shuffles and dropout
    masks as one that loads it, and successive calls still draw different views.
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def extraction_precision(precision: str | int | None, device: torch.device) -> str:
    """``bf16``, ``16`` or ``32``: what the extraction computes in. ``auto``: bf16 where native."""
    p = str(precision if precision is not None else "32")
    if p == "auto":
        from tlx.speed.precision import bf16_supported  # here: tlx.speed imports this module

        return "bf16" if bf16_supported(device.type) else "32"
    if "bf16" in p:
        return "bf16"
    return "16" if p.startswith("16") else "32"


def _autocast(precision: str, device: torch.device):
    if precision == "32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def dataset_key(dataset: Dataset) -> dict[str, Any]:
    """What decides a tlx image dataset's pixels: its files, its transform, its decoding."""
    samples = getattr(dataset, "samples", None)
    if samples is None:
        raise TLXError(
            f"extract_features cannot tell what {type(dataset).__name__} holds: pass cache_key "
            "(a description of its files and preprocessing) to cache its features on disk."
        )
    return {
        "dataset": type(dataset).__name__,
        "files": files_digest(samples),
        "transform": repr(getattr(dataset, "transform", None)),
        "min_short_side": getattr(dataset, "min_short_side", None),
    }


def features_cache_key(network: nn.Module, data: Any, views: int, precision: str) -> str:
    """The content key :func:`extract_features` files its result under (``data``: the dataset's key)."""
    return content_key(weights=weights_digest(network), data=data, views=views, precision=precision)


def extract_features(
    network: nn.Module,
    dataset: Dataset | Callable[[], Dataset],
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    precision: str | int | None = "auto",
    views: int = 1,
    cache_dir: str | Path | None = None,
    cache_key: Any = None,
    stats: dict[str, Any] | None = None,
    channels_last: bool = False,
) -> tuple[Tensor, Tensor]:
    """``network`` over every item of ``dataset`` (``(image, label)`` pairs): ``(features, labels)``.

    Args:
        network: any module from images to feature vectors (a backbone, a truncated backbone); run
            in eval mode without gradients on the device its parameters are on (its mode is restored).
        dataset: ``(image, label)`` items; with random augmentation, each view is a fresh draw.
            Or a function returning the dataset, called only when the features are not on disk
            (building some datasets costs time: a decoded-image cache); give ``cache_key`` then.
        batch_size, num_workers: of the extraction loader.
        precision: ``auto`` (bf16 where the hardware has it natively, else fp32), or a Lightning
            precision (``bf16-mixed``, ``32-true``, ...). Features come back as float32.
        views: passes over the dataset; ``views > 1`` gives ``(N, views, D)`` features, else ``(N, D)``
            (``D`` stands for the network's output shape: ``C, H, W`` for a backbone's bottom).
        cache_dir: keep the result here as ``features-<key>.pt`` and reuse it when the key matches.
        cache_key: what decides the dataset's content when the dataset cannot say it itself
            (default: its file list, transform and decoding, see :func:`dataset_key`).
        stats: filled with ``status`` (``disk`` or ``computed``), ``key``, ``seconds`` and ``extracted``
            (the items this process ran, its DDP share).
        channels_last: feed image batches (4-D) in channels-last layout. Convolutions then run on
            oneDNN's NHWC kernels: about 1.8x faster for EfficientNet-Lite0 on a 2-core CPU, same
            values up to float rounding. Opt-in, so that a caller's published figures stay bit for bit.

    Randomness: each call takes one draw from torch's global stream and draws its views from a
    generator seeded with it (python's and numpy's states are restored), so the caller's stream is
    at the same point afterwards whether the features were computed or read from disk.

    Under DDP every rank must call this: each runs a share of the items and all receive the whole
    (:mod:`tlx.data.shared_build`); rank 0 alone writes ``cache_dir``.
    """
    if views < 1:
        raise TLXError(f"extract_features: views must be >= 1, got {views}.")
    param = next(network.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    precision = extraction_precision(precision, device)
    stats = {} if stats is None else stats
    stats.update(status="computed", key=None, seconds=0.0, extracted=0)
    seed = _draw_seed()  # before the disk lookup: a hit advances the caller's stream as a miss does
    file = None
    if cache_dir is not None:
        if cache_key is None and callable(dataset) and not isinstance(dataset, Dataset):
            dataset = dataset()
        data = cache_key if cache_key is not None else dataset_key(dataset)
        stats["key"] = features_cache_key(network, data, views, precision)
        file = Path(cache_dir) / f"features-{stats['key']}.pt"
        if all_ranks(file.is_file()):  # every rank reads it, or every rank computes
            blob = torch.load(file, weights_only=True)
            stats["status"] = "disk"
            return blob["features"], blob["labels"]

    if callable(dataset) and not isinstance(dataset, Dataset):
        dataset = dataset()

    def run(indices: Sequence[int]) -> list[tuple[Tensor, Tensor]]:
        loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, num_workers=num_workers)
        feats, labels = [], []
        with torch.no_grad(), _autocast(precision, device):
            for x, y in loader:
                x = x.to(device)
                if channels_last and x.ndim == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                feats.append(network(x).float().cpu())
                labels.append(torch.as_tensor(y))
        stats["extracted"] += len(indices)
        return list(zip(torch.cat(feats), torch.cat(labels))) if feats else []

    start = time.perf_counter()
    # every module's own mode back afterwards (tlx.modes): a strategy's frozen parts stay in eval mode
    with evaluating(network), _seeded_views(seed):
        passes = [build_shared(range(len(dataset)), run) for _ in range(views)]
    stats["seconds"] = time.perf_counter() - start
    features = torch.stack([torch.stack([f for f, _ in p]) for p in passes], dim=1) if passes[0] else torch.zeros(0)
    labels = torch.stack([y for _, y in passes[0]]) if passes[0] else torch.zeros(0, dtype=torch.long)
    if views == 1 and passes[0]:  # (N, ...) whatever the output's shape (pooled or activations)
        features = features[:, 0]
    if file is not None and is_writer():
        atomic_torch_save({"features": features, "labels": labels}, file)  # a killed run leaves no half file
    return features, labels
