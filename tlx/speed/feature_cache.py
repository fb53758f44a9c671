"""Cached features for a frozen backbone: run it once, then train the head on tensors.

When the backbone stays frozen (and in eval mode) for the whole run, every epoch would feed
the same images through the same function: :class:`FeatureCache` computes the pooled features
once at the start of ``fit`` with :func:`tlx.features.extract_features` (the evaluation view of
every train and val image, and optionally ``augmented_views`` random training views per image).
For the rest of the fit the data module serves ``(features, label)`` batches
(:meth:`~tlx.data.ImageFolderDataModule.serve_features`) and the model takes features instead of
images (:meth:`~tlx.models.ImageClassifier.take_features`), so epochs never run the backbone,
while validation metrics are logged under the same names and checkpoints still hold the whole
model (test / predict from them run on images as usual). Both are undone when fit ends.

With ``cut`` (a module of the backbone, :func:`tlx.backbones.cut_points`), only the bottom up to
the cut is frozen and cached: its activations (``augmented_views`` random views per training
image, as for pooled features) are computed once, and the top stages train with the head on
them through :class:`tlx.backbones.cut.BackboneTop`, which shares the backbone's parameters, so
checkpoints hold the whole model. Most of a CNN's compute sits in its early high-resolution
stages: training the last stages then costs a fraction of full fine-tuning.

Before anything is extracted, the size of the cache (images x views x one item's shape, in
float32) is logged, and refused in one line when it exceeds ``max_cache_gb``.

The cache is keyed by a hash of the backbone's weights, the preprocessing, the extraction
precision and the file list (path, size, modification time): change any of them and the
features are recomputed. Splits of the same files (a domain-adaptation target and its validation)
share their evaluation view's features, each with its own labels. Keys live in memory (this
callback instance) and, with ``cache_dir``, on disk across runs. Under DDP each rank extracts a
share of the images and all receive the whole (:mod:`tlx.data.shared_build`); rank 0 alone
writes ``cache_dir``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor
from torch.utils.data import default_collate

from tlx.backbones.cut import bottom_names, split_backbone
from tlx.data.folders import files_digest
from tlx.errors import TLXError
from tlx.features import PRECISIONS, extract_features, extraction_precision, feature_loader, features_cache_key
from tlx.modes import evaluating

log = logging.getLogger("tlx")


def train_splits(dm: Any) -> tuple[str, ...]:
    """The splits a data module trains on: ``("train",)``, or a domain-adaptation module's two."""
    return tuple(getattr(dm, "train_splits", ("train",)))


def train_dataset(dm: Any, split: str) -> Any:
    """The augmented dataset of a training split (a one-split module's ``train_dataset()`` takes none)."""
    return dm.train_dataset() if split == "train" else dm.train_dataset(split)


def split_labels(items: list[tuple[Any, Any]]) -> Tensor:
    """The labels of ``(path, label)`` items, as a loader over their dataset batches them."""
    if not items:
        return torch.zeros(0, dtype=torch.long)
    return torch.as_tensor(default_collate([label for _, label in items]))


class FeatureCache(Callback):
    """Train the head of a frozen backbone on features computed once, or with ``cut`` the top
    stages and the head on a frozen bottom's activations (see the module docs).

    Needs a frozen backbone (add :class:`tlx.finetuning.FreezeBackbone`, ``train_bn: false``),
    unless ``cut`` is given: then a fine-tuning strategy (layer decay, gradual unfreezing, LoRA,
    L2-SP...), listed before or after this callback, works on the part above the cut
    (:meth:`frozen_bottom`, :mod:`tlx.finetuning.trainable`), and an :class:`~tlx.data.ImageFolderDataModule` (anything with ``eval_dataset(split)``,
    ``train_dataset()`` and ``serve_features``/``serve_images``). A data module with several
    training splits (``train_splits``: a domain-adaptation module's ``source`` and ``target``, with
    ``train_dataset(split)``) gets one cached loader per split, each with its augmented views.

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
            Not applied with ``cut`` (the top stages are convolutions that do gain from threads).
        cut: cache the backbone's output up to this module only (``blocks.4``, ``layer3``,
            ``features.13``; a bad name lists the valid ones) and train the rest of it with the
            head. The bottom is frozen by this callback; the backbone need not be. ``None``: the
            whole backbone, which must then be frozen.
        max_cache_gb: refuse (before extracting) a cache larger than this; ``None``: no limit.
        extract_precision: what the extraction computes in. ``None``: the trainer's precision
            (fp32 unless it trains in bf16; the cache then equals the live bottom bit for bit).
            ``auto``: bf16 where the hardware has it natively (an AVX512-BF16 CPU extracts about 2x
            faster), else fp32; the cached activations then differ from the live fp32 bottom by
            bf16 rounding, and the checkpoint still runs fp32 on images. Or ``bf16``/``32``.
    """

    def __init__(
        self,
        augmented_views: int = 0,
        cache_dir: str | None = None,
        batch_size: int | None = None,
        eval_batch_size: int | None = None,
        extract_batch_size: int = 64,
        head_threads: int | None = 1,
        cut: str | None = None,
        max_cache_gb: float | None = None,
        extract_precision: str | None = None,
    ):
        if augmented_views < 0:
            raise TLXError(f"FeatureCache augmented_views must be >= 0, got {augmented_views}.")
        if extract_precision not in PRECISIONS:
            raise TLXError(f"FeatureCache extract_precision={extract_precision!r}: use one of "
                           f"{', '.join(map(str, PRECISIONS))} (None: the trainer's precision).")
        self.cut = cut
        self.max_cache_gb = max_cache_gb
        self.extract_precision = extract_precision
        self.split: tuple[torch.nn.Module, torch.nn.Module] | None = None  # (bottom, top) with cut
        self.cache_bytes = 0
        self.augmented_views = augmented_views
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.extract_batch_size = extract_batch_size
        self.head_threads = head_threads
        self._threads: int | None = None
        self._memory: dict[tuple[str, ...], tuple[Tensor, Tensor]] = {}  # (split, part keys) -> features, labels
        self._parts: dict[str, Tensor] = {}  # an eval view's key -> its features, shared by splits of the same files
        self._serving: tuple[Any, Any] | None = None  # (data module, model) switched to features
        self.last_status: dict[str, str] = {}  # split -> "memory" | "disk" | "computed"
        self.extract_seconds = 0.0
        self.extracted_here = 0

    # ---- the cut ---------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Here, before the optimizer is built: the bottom's parameters never enter it by default.
        if self.cut is not None and stage == "fit":
            backbone = getattr(pl_module, "backbone", None)
            if backbone is None:
                raise TLXError("FeatureCache needs a model with a `backbone` (tlx.models.ImageClassifier).")
            self.split = split_backbone(backbone, self.cut)
            self.split[0].requires_grad_(False)

    def frozen_bottom(self, pl_module: LightningModule) -> list[str]:
        """The backbone's modules this cache freezes for the run (the bottom of the cut), which the
        fine-tuning strategies leave out (:func:`tlx.finetuning.trainable.frozen_bottom`)."""
        return bottom_names(pl_module.backbone, self.cut) if self.cut is not None else []

    def _network(self, pl_module: LightningModule) -> torch.nn.Module:
        """What the cache runs: the bottom of the cut, or the whole backbone."""
        return self.split[0] if self.split is not None else pl_module.backbone

    # ---- checks ------------------------------------------------------------------------------
    def _check(self, trainer: Trainer, pl_module: LightningModule) -> Any:
        backbone = getattr(pl_module, "backbone", None)
        if backbone is None:
            raise TLXError("FeatureCache needs a model with a `backbone` (tlx.models.ImageClassifier).")
        if self.split is not None:
            # A strategy's setup may have made the bottom trainable: it never runs in training.
            self.split[0].requires_grad_(False)
        elif any(p.requires_grad for p in backbone.parameters()):
            raise TLXError(
                "FeatureCache needs a backbone that stays frozen for the whole run: add the callback "
                "tlx.finetuning.FreezeBackbone (train_bn: false), or drop FeatureCache to fine-tune."
            )
        dm = trainer.datamodule
        needs = ("samples", "items", "eval_dataset", "train_dataset", "serve_features", "serve_images")
        missing = [f"{a}()" for a in needs if not hasattr(dm, a)]
        if dm is None or missing:
            raise TLXError(f"FeatureCache needs an ImageFolderDataModule; this data module has no {', '.join(missing)}.")
        if not hasattr(pl_module, "take_features"):
            raise TLXError("FeatureCache needs a model that can take features (tlx.models.ImageClassifier).")
        return dm

    # ---- extraction --------------------------------------------------------------------------
    def _precision(self, trainer: Trainer, pl_module: LightningModule) -> str:
        """``bf16``, ``16`` or ``32``: resolved here once, so that the keys and the extraction agree."""
        return extraction_precision(self.extract_precision or str(trainer.precision), pl_module.device)

    def _features(self, trainer: Trainer, pl_module: LightningModule, dm: Any, split: str) -> tuple[Tensor, Tensor]:
        """The split's features: from this instance's memory, else extract_features (disk or computed)."""
        hp = getattr(dm, "hparams", {})
        common = {"batch_size": self.extract_batch_size, "num_workers": int(hp.get("num_workers", 0)),
                  "precision": self._precision(trainer, pl_module), "cache_dir": self.cache_dir}
        backbone = self._network(pl_module)
        # What decides the images' pixels, known without building a dataset (with cache_images that
        # decodes every image), so that features on disk need no image at all. The files without
        # their labels: a domain-adaptation target's eval view is then extracted once for the
        # target and the val split (the same files), and the labels are the split's own (below).
        items = dm.items(split)
        data = {"preprocessing": dm.preprocessing.to_dict(), "fast_decode": hp.get("fast_decode"),
                "files": files_digest([(path, None) for path, _ in items]), "view": "eval"}
        if self.split is not None:  # the bottom's weights alone do not say where it ends
            data.update(cut=self.cut, backbone=getattr(pl_module.backbone, "name", None))
        parts = [(lambda: dm.eval_dataset(split), 1, data)]
        if split in train_splits(dm) and self.augmented_views:
            # random views depend on the augmentation, and on cache_images (crops of the shrunk image)
            augment = {k: hp.get(k) for k in ("crop_scale", "hflip", "auto_augment", "cache_images")}
            parts.append((lambda: train_dataset(dm, split), self.augmented_views,
                          dict(data, view="train", augment=augment)))
        keys = [features_cache_key(backbone, key, v, common["precision"]) for _, v, key in parts]
        # Per split: the labels are the split's own items' (a target's carry indices, and its files
        # are also the val split's, whose labels must never be read from the target's).
        memory_key = (split, *keys)
        if memory_key in self._memory:
            self.last_status[split] = "memory"
            return self._memory[memory_key]
        features, statuses = [], []
        for (dataset, views, key), part_key in zip(parts, keys):
            if part_key in self._parts:  # another split's, same files and view
                features.append(self._parts[part_key])
                statuses.append("memory")
                continue
            stats: dict[str, Any] = {}
            f, _ = extract_features(backbone, dataset, views=views, cache_key=key, stats=stats, **common)
            features.append(f if views > 1 else f[:, None])
            if key["view"] == "eval":
                self._parts[part_key] = features[-1]
            statuses.append(stats["status"])
            self.extract_seconds += stats["seconds"]
            self.extracted_here += stats["extracted"]
        feats = features[0][:, 0] if len(features) == 1 else torch.cat(features, dim=1)
        self.last_status[split] = next((s for s in ("computed", "disk") if s in statuses), "memory")
        self._memory[memory_key] = (feats, split_labels(items))
        return self._memory[memory_key]

    def _item_shape(self, pl_module: LightningModule, size: int) -> tuple[int, ...]:
        """The shape of one cached item: the pooled width, or the bottom's output on one probe image."""
        if self.split is None:
            return (int(pl_module.backbone.num_features),)
        bottom = self.split[0]
        param = next(bottom.parameters(), None)
        probe = torch.zeros(1, 3, size, size, device=param.device if param is not None else "cpu")
        with torch.no_grad(), evaluating(bottom):
            return tuple(bottom(probe).shape[1:])

    def _size_check(self, pl_module: LightningModule, dm: Any) -> None:
        """Log the cache's size before building it; refuse one over ``max_cache_gb``."""
        shape = self._item_shape(pl_module, dm.preprocessing.input_size)
        n_train, n_val = sum(len(dm.samples(s)) for s in train_splits(dm)), len(dm.samples("val"))
        items = n_train * (1 + self.augmented_views) + n_val
        self.cache_bytes = items * int(torch.Size(shape).numel()) * 4
        gb = self.cache_bytes / 1e9
        what = f"cut at {self.cut!r}" if self.cut else "pooled features"
        log.info("FeatureCache (%s): %d train images x %d views + %d val images, %s float32 each: %.1f MB.",
                 what, n_train, 1 + self.augmented_views, n_val, "x".join(map(str, shape)), self.cache_bytes / 1e6)
        if self.max_cache_gb is not None and gb > self.max_cache_gb:
            raise TLXError(
                f"FeatureCache ({what}) would take {gb:.3g} GB, over max_cache_gb={self.max_cache_gb}: "
                "cut later (smaller activations), lower augmented_views or preprocessing.input_size, "
                "or raise max_cache_gb."
            )

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        dm = self._check(trainer, pl_module)
        hp = getattr(dm, "hparams", {})
        self._size_check(pl_module, dm)
        self.extract_seconds = 0.0
        self.extracted_here = 0  # images this process ran through the backbone (its DDP share)
        splits = train_splits(dm)
        trains = {s: self._features(trainer, pl_module, dm, s) for s in splits}
        val = self._features(trainer, pl_module, dm, "val")
        trained = "the top stages and the head" if self.split is not None else "the head only"
        log.info(
            "FeatureCache: %s, val %s %s (%.1f s extracting); epochs now train %s.",
            ", ".join(f"{s} {tuple(f.shape)} {self.last_status[s]}" for s, (f, _) in trains.items()),
            tuple(val[0].shape), self.last_status["val"], self.extract_seconds, trained,
        )
        bs = self.batch_size or hp.get("batch_size", 32)
        ebs = self.eval_batch_size or hp.get("eval_batch_size") or bs
        # Lightning asks the data module for its loaders after on_fit_start.
        self._serving = (dm, pl_module)
        views = bool(self.augmented_views)
        loaders = {s: feature_loader(*t, bs, train=True, trainer=trainer, views=views) for s, t in trains.items()}
        dm.serve_features(loaders["train"] if splits == ("train",) else loaders,
                          feature_loader(*val, ebs, train=False, trainer=trainer, views=False))
        pl_module.take_features(True, top=self.split[1] if self.split is not None else None)
        if self.head_threads and self.split is None and pl_module.device.type == "cpu":
            self._threads = torch.get_num_threads()
            torch.set_num_threads(self.head_threads)

    def _restore(self) -> None:
        if self._threads is not None:
            torch.set_num_threads(self._threads)
            self._threads = None
        if self._serving is not None:
            dm, pl_module = self._serving
            dm.serve_images()
            pl_module.take_features(False)
            self._serving = None

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restore()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._restore()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._restore()
