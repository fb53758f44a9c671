"""Calibration on real data: ECE before/after temperature scaling, and the weight averages beside it.

    nice -n 5 python scripts/calibration_report.py --threads 1          # hymenoptera_fast, 6 runs, ~8 min on 2 CPU cores
    python scripts/calibration_report.py --config configs/hymenoptera_fast_finetune.yaml --variants plain

Each row is one ``python -m tlx fit`` (its own process) of ``--config`` with
configs/callbacks/temperature.yaml stacked on it, plus configs/callbacks/ema.yaml or swa.yaml for the
``ema``/``swa`` rows (the ``_loss`` rows pick best.ckpt by val/loss instead of val/acc). From the
run's best.ckpt: its val accuracy (fp32, recomputed here), the temperature T and the
validation NLL/ECE before/after that the callback fitted and measured (in-sample: T was fitted on
those images). The data set has no test split, so a held-out figure is made here: the best
checkpoint's val logits (fp32, images) are split in two halves (seeded), T is fitted on one half and
the ECE measured on the other, both ways, and averaged ("2-fold ECE").
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import tlx  # noqa: E402
from tlx.calibration import expected_calibration_error, fit_temperature  # noqa: E402
from tlx.data.datasets import image_files  # noqa: E402

# row -> (fragments stacked, extra CLI arguments). best.ckpt is picked by val/acc and keeps the first
# of equal scores, so an average that only ties it never gets there: the "_loss" rows pick by val/loss.
BY_LOSS = ["--checkpoint.monitor=val/loss", "--checkpoint.mode=min"]
VARIANTS = {
    "plain": ([], []),
    "ema": (["configs/callbacks/ema.yaml"], []),
    "swa": (["configs/callbacks/swa.yaml"], []),
    "plain_loss": ([], BY_LOSS),
    "ema_loss": (["configs/callbacks/ema.yaml"], BY_LOSS),
    "swa_loss": (["configs/callbacks/swa.yaml"], BY_LOSS),
}


def fit(config: str, variant: tuple[list[str], list[str]], out: Path, threads: int) -> float:
    args = [sys.executable, "-m", "tlx", "fit", "--config", config, "--config", "configs/callbacks/temperature.yaml"]
    for fragment in variant[0]:
        args += ["--config", fragment]
    args += [*variant[1], f"--trainer.default_root_dir={out}", "--trainer.enable_progress_bar=false",
             "--data.init_args.num_workers=0"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    start = time.time()
    subprocess.run(args, cwd=REPO, env=env, check=True)
    return time.time() - start


@torch.inference_mode()
def val_logits(ckpt: Path, root: Path) -> tuple[torch.Tensor, torch.Tensor, float]:
    from tlx.data.images import load_rgb
    from tlx.data.transforms import eval_transform

    model = tlx.load(ckpt)
    transform = eval_transform(model.preprocessing)
    files = image_files(root / "val")
    labels = torch.tensor([model.class_names.index(Path(f).parent.name) for f in files])
    logits = torch.cat([model(torch.stack([transform(load_rgb(f)) for f in files[i:i + 32]]))
                        for i in range(0, len(files), 32)])
    return logits, labels, float(model.temperature)


def two_fold_ece(logits: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> tuple[float, float]:
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    halves = order[: len(order) // 2], order[len(order) // 2:]
    before, after = [], []
    for fit_on, score_on in (halves, halves[::-1]):
        t = fit_temperature(logits[fit_on], labels[fit_on])
        before.append(expected_calibration_error(logits[score_on], labels[score_on]))
        after.append(expected_calibration_error(logits[score_on], labels[score_on], t))
    return sum(before) / 2, sum(after) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/hymenoptera_fast.yaml")
    parser.add_argument("--data", default=str((REPO / ".." / "shared" / "data" / "hymenoptera").resolve()))
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--out", default="/tmp/tlx_calibration_report")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.variants.split(","):
        out = Path(args.out) / name
        seconds = fit(args.config, VARIANTS[name], out, args.threads)
        ckpt = max(out.rglob("best.ckpt"), key=lambda p: p.stat().st_mtime)
        saved = torch.load(ckpt, map_location="cpu", weights_only=True)
        cal = saved["calibration"]
        logits, labels, t = val_logits(ckpt, Path(args.data))
        acc = float((logits.argmax(-1) == labels).float().mean())
        before, after = two_fold_ece(logits, labels)
        rows.append((name, acc, cal["temperature"], cal["nll_before"], cal["nll_after"], cal["ece_before"],
                     cal["ece_after"], before, after, seconds))
        assert abs(t - cal["temperature"]) < 1e-6  # tlx.load gives the checkpoint's T
    print(f"\n{args.config} + configs/callbacks/temperature.yaml, val = {args.data}/val ({len(labels)} images)")
    print("| run | best.ckpt val acc | T | val NLL before -> after | val ECE before -> after (in-sample) "
          "| 2-fold ECE before -> after (held out) | fit s |")
    print("|---|---|---|---|---|---|---|")
    for name, acc, t, nb, na, eb, ea, hb, ha, s in rows:
        print(f"| {name} | {acc:.4f} | {t:.3f} | {nb:.4f} -> {na:.4f} | {eb:.4f} -> {ea:.4f} | {hb:.4f} -> {ha:.4f} | {s:.0f} |")


if __name__ == "__main__":
    main()
