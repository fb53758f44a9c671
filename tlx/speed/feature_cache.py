"""Cached features for a frozen backbone: run it once, then train the head on tensors.

When the backbone stays frozen (and in eval mode) for the whole run, every epoch would feed
the same images through the same function: :class:`FeatureCache` computes the pooled features
once at the start of ``fit`` (the evaluation view of every train and val image, and optionally
``augmented_views`` random training views per image), and for the rest of the run the train and
val dataloaders yield ``(features, label)`` batches. :class:`~tlx.models.ImageClassifier`
skips its backbone on 2-D inputs, so epochs never run the backbone, while validation metrics are
logged under the same names and checkpoints still hold the whole model (test / predict from them
run on images as usual).

The cache is keyed by a hash of the backbone's weights, the preprocessing, the extraction
precision and the file list (path, size, modification time, label): change any of them and the
features are recomputed. Keys live in memory (this callback instance) and, with ``cache_dir``,
on disk across runs. Under DDP each rank extracts a share of the images and all receive the
whole (:mod:`tlx.data.shared_build`); rank 0 alone writes ``cache_dir``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler, Subset

from tlx.data.folders import files_digest
from tlx.data.sampling import eval_sampler
from tlx.data.shared_build import all_ranks, build_shared, is_writer, rank_and_world
from tlx.errors import TLXError

log = logging.getLogger("tlx")

CACHE_VERSION = 1  # bump when the stored layout or the extraction changes meaning


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer (names, shapes, dtypes, bytes)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cache_key(weights: str, preprocessing: dict[str, Any], files: str) -> str:
    blob = json.dumps({"v": CACHE_VERSION, "weights": weights, "prep": preprocessing, "files": files}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class FeatureBatches(Dataset):
    """Whole batches of cached features, one index list per item (no per-sample collation).

    ``features`` is ``(N, D)``, or ``(N, V, D)`` with V views per image, of which each draw
    takes one at random (a fresh augmentation per epoch, from a fixed pool).
    """

    def __init__(self, features: Tensor, labels: Tensor):
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(indices)
        feats = self.features[idx]
        if feats.ndim == 3:
            feats = feats[torch.arange(len(idx)), torch.randint(feats.shape[1], (len(idx),))]
        return feats, self.labels[idx]


class FeatureSamples(FeatureBatches):
    """One image's features per item: for DDP, where Lightning and tlx shard samples, not batches."""

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        feats, labels = super().__getitem__([index])
        return feats[0], labels[0]


def feature_loader(features: Tensor, labels: Tensor, batch_size: int, train: bool, trainer: Any = None) -> DataLoader:
    if rank_and_world()[1] > 1:
        # Under DDP: Lightning gives the training loader a DistributedSampler (reshuffled every
        # epoch); evaluation gets tlx's unpadded shards, so that metrics count each image once.
        dataset = FeatureSamples(features, labels)
        drop_last = train and len(dataset) > batch_size
        sampler = None if train else eval_sampler(dataset, trainer)
        return DataLoader(dataset, batch_size=batch_size, shuffle=train, sampler=sampler, drop_last=drop_last)
    dataset = FeatureBatches(features, labels)
    sampler = RandomSampler(dataset) if train else SequentialSampler(dataset)
    # Same rule as the image loader: no last batch of one image in training.
    batches = BatchSampler(sampler, batch_size, drop_last=train and len(dataset) > batch_size)
    return DataLoader(dataset, batch_size=None, sampler=batches, num_workers=0)


class FeatureCache(Callback):
    """Train the head of a frozen backbone on features computed once (see the module docs).

    Needs a frozen backbone (add :class:`tlx.finetuning.FreezeBackbone`, ``train_bn: false``)
    and an :class:`~tlx.data.ImageFolderDataModule` (anything with ``samples(split)``,
    ``eval_dataset(split)``, ``train_dataset()``).

    Args:
        augmented_views: random training views (crop, flip, ... of the data module) computed per
            training image besides the evaluation view; each epoch draws one of them per image.
            0: train on the evaluation view only (the fastest; usually as accurate for a probe).
        cache_dir: also keep the features on disk here, so later runs with the same weights,
            preprocessing and files skip extraction. ``None``: in memory only.
        batch_size: training batch size on features (default: the data module's).
        eval_batch_size: validation batch size on features (default: the data module's).
        extract_batch_size: batch size of the extraction pass.
        head_threads: intra-op threads while training on features (restored after ``fit``).
            Head-sized operations are too small to gain from threads, and their OpenMP
            synchronisation costs 10x the step itself on a busy machine. ``None``: unchanged.
    """

    def __init__(
        self,
        augmented_views: int = 0,
        cache_dir: str | None = None,
        batch_size: int | None = None,
        eval_batch_size: int | None = None,
        extract_batch_size: int = 64,
        head_threads: int | None = 1,
    ):
        if augmented_views < 0:
            raise TLXError(f"FeatureCache augmented_views must be >= 0, got {augmented_views}.")
        self.augmented_views = augmented_views
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.extract_batch_size = extract_batch_size
        self.head_threads = head_threads
        self._threads: int | None = None
        self._memory: dict[str, tuple[Tensor, Tensor]] = {}
        self._patched: Any = None
        self.last_status: dict[str, str] = {}  # split -> "memory" | "disk" | "computed"
        self.extract_seconds = 0.0
        self.extracted_here = 0

    # ---- checks ------------------------------------------------------------------------------
    @staticmethod
    def _check(trainer: Trainer, pl_module: LightningModule) -> Any:
        backbone = getattr(pl_module, "backbone", None)
        if backbone is None:
            raise TLXError("FeatureCache needs a model with a `backbone` (tlx.models.ImageClassifier).")
        if any(p.requires_grad for p in backbone.parameters()):
            raise TLXError(
                "FeatureCache needs a backbone that stays frozen for the whole run: add the callback "
                "tlx.finetuning.FreezeBackbone (train_bn: false), or drop FeatureCache to fine-tune."
            )
        dm = trainer.datamodule
        if dm is None or not all(hasattr(dm, a) for a in ("samples", "eval_dataset", "train_dataset")):
            raise TLXError("FeatureCache needs an ImageFolderDataModule (samples(), eval_dataset(), train_dataset()).")
        return dm

    # ---- extraction --------------------------------------------------------------------------
    def _extract(self, trainer: Trainer, pl_module: LightningModule, dataset: Dataset, workers: int) -> Tensor:
        backbone = pl_module.backbone

        def extract(indices: Sequence[int]) -> list[Tensor]:
            loader = DataLoader(Subset(dataset, indices), batch_size=self.extract_batch_size, num_workers=workers)
            out = []
            with torch.no_grad(), trainer.precision_plugin.forward_context():
                for x, _ in loader:
                    out.append(backbone(x.to(pl_module.device)).float().cpu())
            self.extracted_here += len(indices)
            return list(torch.cat(out)) if out else []

        # Under DDP each rank extracts its share and all receive the whole (built once, not per rank).
        return torch.stack(build_shared(range(len(dataset)), extract))

    def _features(self, key: str, split: str, compute) -> tuple[Tensor, Tensor]:
        if key in self._memory:
            self.last_status[split] = "memory"
            return self._memory[key]
        file = self.cache_dir / f"{split}-{key}.pt" if self.cache_dir else None
        if all_ranks(file is not None and file.is_file()):
            blob = torch.load(file, weights_only=True)
            value, self.last_status[split] = (blob["features"], blob["labels"]), "disk"
        else:
            start = time.perf_counter()
            value, self.last_status[split] = compute(), "computed"
            self.extract_seconds += time.perf_counter() - start
            if file is not None and is_writer():
                file.parent.mkdir(parents=True, exist_ok=True)
                tmp = file.with_suffix(f".{os.getpid()}.tmp")  # per process: runs may share cache_dir
                torch.save({"features": value[0], "labels": value[1]}, tmp)
                os.replace(tmp, file)  # atomic: a killed run leaves no half-written cache
        self._memory[key] = value
        return value

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        dm = self._check(trainer, pl_module)
        hp = getattr(dm, "hparams", {})
        workers = int(hp.get("num_workers", 0))
        weights = weights_digest(pl_module.backbone)
        prep = {
            "data_config": dm.data_config.to_dict() if hasattr(dm.data_config, "to_dict") else repr(dm.data_config),
            "fast_decode": hp.get("fast_decode"),
            "precision": str(trainer.precision),
        }
        was_training = pl_module.backbone.training
        pl_module.backbone.eval()
        self.extract_seconds = 0.0
        self.extracted_here = 0  # images this process ran through the backbone (its DDP share)
        try:
            train_samples, val_samples = dm.samples("train"), dm.samples("val")
            train_prep = dict(prep, views=self.augmented_views)
            if self.augmented_views:  # the random views depend on the training transform too
                # (and on cache_images: crops of the shrunk, cached image differ from the file's)
                train_prep["augment"] = {k: hp.get(k) for k in ("crop_scale", "hflip", "auto_augment", "cache_images")}

            def train_features() -> tuple[Tensor, Tensor]:
                views = [self._extract(trainer, pl_module, dm.eval_dataset("train"), workers)]
                train_set = dm.train_dataset()
                for _ in range(self.augmented_views):
                    views.append(self._extract(trainer, pl_module, train_set, workers))
                feats = views[0] if len(views) == 1 else torch.stack(views, dim=1)
                return feats, torch.tensor([y for _, y in train_samples])

            def val_features() -> tuple[Tensor, Tensor]:
                feats = self._extract(trainer, pl_module, dm.eval_dataset("val"), workers)
                return feats, torch.tensor([y for _, y in val_samples])

            train = self._features(cache_key(weights, train_prep, files_digest(train_samples)), "train", train_features)
            val = self._features(cache_key(weights, prep, files_digest(val_samples)), "val", val_features)
        finally:
            pl_module.backbone.train(was_training)
        log.info(
            "FeatureCache: train %s %s, val %s %s (%.1f s extracting); epochs now train the head only.",
            tuple(train[0].shape), self.last_status["train"], tuple(val[0].shape), self.last_status["val"],
            self.extract_seconds,
        )
        bs = self.batch_size or hp.get("batch_size", 32)
        ebs = self.eval_batch_size or hp.get("eval_batch_size") or bs
        # Lightning asks the data module for its loaders (fit loop and validation loop) after
        # on_fit_start: instance attributes shadow the methods for this fit only.
        self._patched = dm
        dm.train_dataloader = lambda: feature_loader(*train, bs, train=True, trainer=trainer)
        dm.val_dataloader = lambda: feature_loader(*val, ebs, train=False, trainer=trainer)
        if self.head_threads and pl_module.device.type == "cpu":
            self._threads = torch.get_num_threads()
            torch.set_num_threads(self.head_threads)

    def _restore(self) -> None:
        if self._threads is not None:
            torch.set_num_threads(self._threads)
            self._threads = None
        if self._patched is not None:
            for name in ("train_dataloader", "val_dataloader"):
                self._patched.__dict__.pop(name, None)
            self._patched = None

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restore()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._restore()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._restore()
