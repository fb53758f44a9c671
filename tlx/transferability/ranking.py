"""Rank candidate backbones for a target dataset: extract once per backbone, score, report.

Every backbone is built before anything is extracted, so a misspelt name or weights that are
not on this machine stop the run at once with one line naming that backbone. A spec may pin
its weights with ``@``: ``torchvision:mobilenet_v2@IMAGENET1K_V1`` (the torchvision cache under
``TORCH_HOME`` often holds an older file than DEFAULT).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlx.backbones import Backbone, create_backbone
from tlx.data.datasets import LabelledImages
from tlx.data.folders import Sample
from tlx.data.transforms import eval_transform
from tlx.errors import BackboneError, TLXError
from tlx.features import extract_features
from tlx.features.extract import dataset_key
from tlx.transferability.base import get_metric
from tlx.transferability.extract import ScoringNetwork

log = logging.getLogger("tlx")

DEFAULT_METRICS = ("logme", "leep", "nce", "hscore", "knn")


@dataclass
class BackboneScores:
    backbone: str
    feature_dim: int
    images: int
    seconds: float
    scores: dict[str, float | None]
    notes: list[str] = field(default_factory=list)
    extraction: str = "computed"  # or "disk" (the feature cache)

    def to_dict(self) -> dict[str, Any]:
        return {"backbone": self.backbone, "feature_dim": self.feature_dim, "images": self.images,
                "seconds": round(self.seconds, 3), "extraction": self.extraction, "scores": self.scores,
                "notes": self.notes}


def build_backbones(specs: Sequence[str], weights: str | None = "DEFAULT") -> dict[str, Backbone]:
    """Every spec built up front; the first that fails is named in a one-line error."""
    if not specs:
        raise TLXError("--backbones is empty: name at least one (python -m tlx.backbones --available lists them).")
    built = {}
    for spec in specs:
        name, _, pinned = spec.partition("@")
        try:
            built[spec] = create_backbone(name, weights=pinned or weights)
        except BackboneError as e:
            raise TLXError(f"--backbones {spec}: {e} Nothing was ranked.") from None
    return built


def per_class_subset(samples: Sequence[Sample], max_per_class: int | None, seed: int = 0) -> list[Sample]:
    """At most ``max_per_class`` samples of each class, a seeded draw (all of them with ``None``)."""
    if not max_per_class:
        return list(samples)
    by_class: dict[int, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(s[1], []).append(s)
    rng = random.Random(seed)
    kept = []
    for label in sorted(by_class):
        group = by_class[label]
        kept.extend(sorted(rng.sample(group, min(max_per_class, len(group)))))
    return kept


def score_backbone(
    network: ScoringNetwork, samples: Sequence[Sample], metrics: Sequence[str], *, fast_decode: bool = True,
    batch_size: int = 64, num_workers: int = 0, precision: str = "auto", cache_dir: str | None = None,
) -> BackboneScores:
    """Extract ``samples`` once through ``network`` (its own preprocessing) and compute ``metrics``."""
    backbone = network.backbone
    cfg = backbone.preprocessing
    dataset = LabelledImages(samples, eval_transform(cfg), cfg.resize_size if fast_decode else None)
    # The weights digest covers backbone and source classifier; which layer is read is not a weight.
    key = {**dataset_key(dataset), "layer": network.layer, "source_classes": network.source_classes}
    start = time.perf_counter()
    stats: dict[str, Any] = {}
    output, labels = extract_features(network, dataset, batch_size=batch_size, num_workers=num_workers,
                                      precision=precision, cache_dir=cache_dir, cache_key=key, stats=stats,
                                      channels_last=True)
    features, source_probs = network.split(output)
    scores: dict[str, float | None] = {}
    notes, skipped = [], []
    for name in metrics:
        metric = get_metric(name)
        if metric.needs_source_classifier and source_probs is None:
            scores[name] = None
            skipped.append(name)
            continue
        value = metric.score(source_probs if metric.needs_source_classifier else features, labels)
        scores[name] = None if not math.isfinite(value) else value
        if scores[name] is None:
            notes.append(f"{name} is not finite ({value}) on these features")
    if skipped:
        notes.append(f"{', '.join(skipped)} skipped: these weights carry no source (ImageNet) classifier")
    return BackboneScores(backbone.name, features.shape[1], len(labels), time.perf_counter() - start, scores, notes,
                          stats["status"])


def sort_key(row: BackboneScores, metric: str) -> tuple[bool, float]:
    value = row.scores.get(metric)
    return (value is None, -(value if value is not None else 0.0))


def format_table(rows: Sequence[BackboneScores], metrics: Sequence[str]) -> str:
    header = ["rank", "backbone", *metrics, "dim", "images", "seconds"]
    lines = [header]
    for i, row in enumerate(rows, 1):
        values = ["-" if row.scores[m] is None else f"{row.scores[m]:.4g}" for m in metrics]
        lines.append([str(i), row.backbone, *values, str(row.feature_dim), str(row.images), f"{row.seconds:.1f}"])
    widths = [max(len(line[c]) for line in lines) for c in range(len(header))]
    text = ["  ".join(cell.ljust(w) if c == 1 else cell.rjust(w) for c, (cell, w) in enumerate(zip(line, widths)))
            for line in lines]
    notes = [f"note: {row.backbone}: {n}" for row in rows for n in row.notes]
    return "\n".join(text + notes)


def write_ranking(rows: Sequence[BackboneScores], metrics: Sequence[str], output_dir: Path, info: dict[str, Any]) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / "ranking.json", "w") as f:
        json.dump({**info, "metrics": list(metrics), "ranking": [r.to_dict() for r in rows]}, f, indent=2)
    with open(output_dir / "ranking.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["rank", "backbone", *metrics, "feature_dim", "images", "seconds", "notes"])
        for i, r in enumerate(rows, 1):
            writer.writerow([i, r.backbone, *("" if r.scores[m] is None else r.scores[m] for m in metrics),
                             r.feature_dim, r.images, round(r.seconds, 3), "; ".join(r.notes)])


def rank_backbones(
    datamodule: Any,
    backbones: Sequence[str],
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    weights: str | None = "DEFAULT",
    layer: str | None = None,
    split: str = "train",
    max_images_per_class: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    num_workers: int = 0,
    precision: str = "auto",
    device: Any = "cpu",
    cache_dir: str | None = None,
    output_dir: str | Path = "rank",
) -> list[BackboneScores]:
    """Score every backbone on ``datamodule``'s ``split``, best first by the first metric."""
    metrics = list(metrics)
    for name in metrics:
        get_metric(name)  # unknown names fail before any work
    built = build_backbones(backbones, weights)
    networks = {spec: ScoringNetwork(b, layer) for spec, b in built.items()}  # --layer checked for all first
    samples = per_class_subset(datamodule.samples(split), max_images_per_class, seed)
    fast_decode = bool(getattr(datamodule, "hparams", {}).get("fast_decode", True))
    rows = []
    for spec, network in networks.items():
        row = score_backbone(network.to(device), samples, metrics, fast_decode=fast_decode, batch_size=batch_size,
                             num_workers=num_workers, precision=precision, cache_dir=cache_dir)
        row.backbone = spec
        log.info("rank: %s scored in %.1f s (%s features)", spec, row.seconds, row.extraction)
        rows.append(row)
        network.to("cpu")
    rows.sort(key=lambda r: sort_key(r, metrics[0]))
    info = {"data": str(getattr(datamodule, "root", "")), "split": split, "images": len(samples),
            "layer": layer, "precision": str(precision), "sorted_by": metrics[0]}
    write_ranking(rows, metrics, Path(output_dir), info)
    print(format_table(rows, metrics))
    print(f"Wrote {Path(output_dir) / 'ranking.json'} and ranking.csv")
    return rows
