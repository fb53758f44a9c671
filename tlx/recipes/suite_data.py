"""The recipe suite's datasets: eight real sets, each laid out as ``root/{train,val}/<class>/``.

A recipe is judged on all of them (``scripts/recipe_suite.py``), so that no default is fitted to one
set. Sets without a split get tlx's own seeded, stratified one (``val_split`` 0.2, seed 42) or its
few-shot draw (:func:`tlx.data.fewshot.k_per_class`); the split is written once as a folder of
symbolic links, so the tutorial baseline (torchvision ``ImageFolder``), the linear probe and the
recipe all read the very same files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tlx.data.fewshot import k_per_class
from tlx.data.folders import Sample, scan_class_folders, stratified_split

SPLIT_SEED = 42


@dataclass(frozen=True)
class SuiteDataset:
    name: str
    source: str  # below the shared data folder
    split: str  # "given" (train/val folders), "holdout" (stratified 80/20) or "5shot"

    def splits(self, data_root: Path) -> tuple[FolderSplit, FolderSplit]:
        root = data_root / self.source
        if self.split == "given":
            train, val = scan_class_folders(root / "train", "train"), scan_class_folders(root / "val", "val")
            return (train.classes, train.samples), (val.classes, val.samples)
        scan = scan_class_folders(root)
        if self.split == "holdout":
            train, val = stratified_split(scan.samples, 0.2, SPLIT_SEED)
        else:
            train, val = k_per_class(scan.samples, int(self.split.removesuffix("shot")), SPLIT_SEED)
        return (scan.classes, train), (scan.classes, val)


FolderSplit = tuple[list[str], list[Sample]]

DATASETS = [
    SuiteDataset("hymenoptera", "hymenoptera", "given"),
    SuiteDataset("office31_amazon", "office31/amazon", "holdout"),
    SuiteDataset("office31_webcam", "office31/webcam", "holdout"),
    SuiteDataset("office31_webcam_5shot", "office31/webcam", "5shot"),
    SuiteDataset("plantvillage_potato", "plantvillage_potato", "holdout"),
    SuiteDataset("sign_language_digits", "sign_language_digits", "holdout"),
    SuiteDataset("rsscn7", "rsscn7", "holdout"),
    SuiteDataset("chest_xray", "chest_xray", "given"),
]


def link_name(path: str, class_dir: str) -> str:
    """A flat, unique name inside the class folder (sub-folders joined with ``__``)."""
    rel = os.path.relpath(path, class_dir)
    return rel.replace(os.sep, "__")


def materialize(dataset: SuiteDataset, data_root: Path, out: Path) -> Path:
    """``out/<name>/{train,val}/<class>/`` as symbolic links to the originals; returns that root."""
    root = out / dataset.name
    for split, (classes, samples) in zip(("train", "val"), dataset.splits(data_root)):
        for path, label in samples:
            class_dir = Path(path).parent
            while class_dir.name != classes[label]:
                class_dir = class_dir.parent
            link = root / split / classes[label] / link_name(path, str(class_dir))
            if not link.is_symlink():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(os.path.abspath(path))
    return root
