"""Write ``predict`` results as a CSV: file, predicted class, probability (multi-label: file, the
labels at or above their thresholds, and every label's probability)."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

log = logging.getLogger("tlx")


class PredictionWriter(BasePredictionWriter):
    """Collects every rank's predictions and writes one CSV (on rank 0).

    Args:
        output: CSV path; default ``<log dir>/predictions.csv``.
        top_k: also write the k most likely classes and their probabilities (single-label models).
        label_separator: joins a multi-label model's predicted labels in the ``labels`` column.
    """

    def __init__(self, output: str | None = None, top_k: int = 1, label_separator: str = ";"):
        super().__init__(write_interval="epoch")
        self.output = output
        self.top_k = top_k
        self.label_separator = label_separator

    def write_on_epoch_end(
        self, trainer: Trainer, pl_module: LightningModule, predictions: list[Any], batch_indices: Any
    ) -> None:
        batches = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        index = torch.cat([b["index"] for b in batches])
        probs = torch.cat([b["probs"] for b in batches]).float()
        index, probs = trainer.strategy.all_gather(index), trainer.strategy.all_gather(probs)
        multilabel = "chosen" in batches[0]  # a multi-label model's decisions (ImageClassifier.predict_step)
        if multilabel:
            chosen = trainer.strategy.all_gather(torch.cat([b["chosen"] for b in batches]).to(torch.uint8))
        if not trainer.is_global_zero:
            return
        index, probs = index.reshape(-1).cpu(), probs.reshape(-1, probs.shape[-1]).cpu()
        paths = trainer.datamodule.predict_paths
        names = pl_module.class_names
        k = min(self.top_k, probs.shape[1])
        top_p, top_i = probs.topk(k, dim=1)
        if multilabel:
            header = ["file", "labels", *names]
            chosen = chosen.reshape(probs.shape).cpu()
        else:
            header = ["file", "predicted_class", "probability"]
            for j in range(1, k):
                header += [f"class_{j + 1}", f"probability_{j + 1}"]
        path = Path(self.output or os.path.join(trainer.log_dir or ".", "predictions.csv"))
        path.parent.mkdir(parents=True, exist_ok=True)
        seen = set()
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            for i in index.argsort().tolist():  # file order, whatever the ranks' order
                n = int(index[i])
                if n in seen:  # DistributedSampler pads with repeats
                    continue
                seen.add(n)
                row = [paths[n]]
                if multilabel:  # the labels at or above their thresholds, most probable first; every probability
                    order = [j for j in probs[i].argsort(descending=True).tolist() if chosen[i, j]]
                    row += [self.label_separator.join(names[j] for j in order), *(f"{float(v):.6f}" for v in probs[i])]
                else:
                    for j in range(k):
                        row += [names[int(top_i[i, j])], f"{float(top_p[i, j]):.6f}"]
                writer.writerow(row)
        log.info("Wrote %d predictions to %s", len(seen), path)
        print(f"Predictions: {path}")
