"""Accuracy and time of predict with each test-time augmentation, on a labelled folder.

    python -m scripts.tta_eval --ckpt_path lightning_logs/version_0/checkpoints/best.ckpt \
        --images ../shared/data/hymenoptera/val

Images under ``<images>/<class>/`` are predicted with ``tta`` none, flip, crops, flip_crops; the
true class is the parent folder's name. Prints accuracy and seconds per mode, and the ratio of
each mode's time to plain prediction.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

from tlx.cli import TLXCLI


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt_path", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--modes", default="none,flip,crops,flip_crops")
    ap.add_argument("--num_workers", type=int, default=2)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            out = Path(tmp) / f"{mode}.csv"
            cli_args = ["predict", f"--ckpt_path={args.ckpt_path}", f"--data.init_args.predict_dir={args.images}",
                        f"--data.init_args.num_workers={args.num_workers}", f"--prediction_writer.output={out}",
                        "--trainer.logger=false", "--trainer.enable_progress_bar=false",
                        f"--trainer.default_root_dir={tmp}"]
            if mode != "none":
                cli_args.append(f"--data.init_args.tta={mode}")
            start = time.perf_counter()
            TLXCLI(args=cli_args)
            seconds = time.perf_counter() - start
            with open(out, newline="") as f:
                preds = list(csv.DictReader(f))
            correct = sum(Path(r["file"]).parent.name == r["predicted_class"] for r in preds)
            rows.append((mode, correct, len(preds), seconds))
    base = rows[0][3]
    print(f"\n{'tta':<11} {'accuracy':>9} {'images':>7} {'seconds':>8} {'time ratio':>10}")
    for mode, correct, n, seconds in rows:
        print(f"{mode:<11} {correct / n:>9.4f} {n:>7} {seconds:>8.1f} {seconds / base:>10.2f}")


if __name__ == "__main__":
    main()
