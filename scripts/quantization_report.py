"""fp32 vs int8 (onnxruntime static QDQ) on hymenoptera and Office-31 amazon, EfficientNet-Lite0 and
MobileNetV2: accuracy, batch-1 latency, batch-32 throughput, file size, in one table.

    TORCH_HOME=../shared/weights nice -n 10 python scripts/quantization_report.py --threads 1

Each checkpoint comes from the default recipe through the CLI (``python -m tlx fit --data.root DIR``
with the backbone named: LP-FT, tlx/recipes/default.yaml), the weights' own preprocessing (224 px).
Office-31 amazon has no split: a seeded, stratified 80/20 one (split_seed 42). Then ``python -m tlx export --quantize int8`` on it, which
calibrates on 300 seeded class-balanced training images and measures every precision on the whole
validation split; its ``best.json`` holds the figures below. Timings are medians, with
``--threads`` onnxruntime threads; on a shared machine read them as such.

``--qat`` trains each checkpoint again with quantization-aware fine-tuning in the same run
(``--config configs/quantization/qat.yaml``: the last 2 epochs under simulated int8), into
``<data>_<backbone>_qat/``, and adds its row under the plain one (``--only_qat``: that row alone).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = (REPO / ".." / "shared").resolve()

DATASETS = {"hymenoptera": SHARED / "data" / "hymenoptera", "amazon": SHARED / "data" / "office31" / "amazon"}
BACKBONES = {"lite0": ("efficientnet_lite0", "DEFAULT"), "mobilenet_v2": ("torchvision:mobilenet_v2", "IMAGENET1K_V1")}
TARGETS = "targets: int8 accuracy within 1.0 point of fp32; size <= 0.3x; batch-1 latency <= 0.6x fp32 ONNX"


def tlx(args: list[str], env: dict[str, str], log: Path) -> None:
    with open(log, "a") as f:
        done = subprocess.run([sys.executable, "-m", "tlx", *args], cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"python -m tlx {args[0]} failed (exit {done.returncode}); see {log}")


def run(data: str, backbone: str, args, env: dict[str, str], qat: bool = False) -> dict:
    out = Path(args.out) / f"{data}_{backbone}{'_qat' if qat else ''}"
    ckpt = out / "lightning_logs" / "version_0" / "checkpoints" / "best.ckpt"
    name, weights = BACKBONES[backbone]
    common = [f"--data.init_args.root={DATASETS[data]}", "--data.init_args.num_workers=1",
              "--trainer.enable_progress_bar=false"]
    start = time.time()
    if not ckpt.is_file():
        out.mkdir(parents=True, exist_ok=True)
        # the default recipe (LP-FT, tlx/recipes/default.yaml), as a user's `python -m tlx fit --data.root DIR`
        qat_config = ["--config", str(REPO / "configs" / "quantization" / "qat.yaml")] if qat else []
        tlx(["fit", *qat_config, "--seed_everything=42", f"--model.init_args.backbone={name}", f"--model.init_args.weights={weights}",
             f"--trainer.default_root_dir={out}", "--data.init_args.val_split=0.2", "--data.init_args.split_seed=42",
             *common], env, out / "log.txt")
    fit_s = time.time() - start
    tlx(["export", f"--ckpt_path={ckpt}", "--format=onnx", "--quantize=int8", f"--threads={args.threads}",
         f"--calibration_images={args.calibration_images}", *common], env, out / "log.txt")
    meta = json.loads((ckpt.parent.parent / "export" / "best.json").read_text())
    return {"data": data, "backbone": backbone + (" + QAT" if qat else ""), "fit_s": fit_s, **meta}


def row(r: dict) -> str:
    fp32, int8 = r["precisions"]["fp32"], r["precisions"]["int8"]
    ev = r["quantization"]["evaluation"]
    return (f"| {r['data']} | {r['backbone']} | {ev['images']} | {fp32['accuracy']:.4f} | {int8['accuracy']:.4f} | "
            f"{100 * (int8['accuracy'] - fp32['accuracy']):+.2f} | {int8['top1_agreement']:.2%} | "
            f"{int8['max_abs_diff']:.3f} | {fp32['latency_batch1_ms']:.1f} / {int8['latency_batch1_ms']:.1f} "
            f"({int8['latency_vs_fp32']:.2f}x) | {fp32['throughput_batch32_per_s']:.0f} / "
            f"{int8['throughput_batch32_per_s']:.0f} | {fp32['size_bytes'] / 1e6:.1f} / {int8['size_bytes'] / 1e6:.1f} "
            f"({int8['size_vs_fp32']:.2f}x) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument("--calibration_images", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads")
    parser.add_argument("--qat", action="store_true", help="also a row per checkpoint trained with QAT in the run")
    parser.add_argument("--only_qat", action="store_true", help="the QAT rows only")
    parser.add_argument("--out", default=str(REPO / "runs" / "quantization_report"),
                        help="runs go here; an existing checkpoint is exported again, not retrained")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(REPO),
           "TORCH_HOME": os.environ.get("TORCH_HOME", str(SHARED / "weights"))}
    print(f"{TARGETS}. Timings: onnxruntime, {args.threads} thread(s), medians; fp32 / int8.\n")
    print("| data | backbone | val images | fp32 acc | int8 acc | diff (points) | top-1 agreement | max abs dp "
          "| batch-1 ms | batch-32 img/s | size MB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|---|---|")
    variants = [True] if args.only_qat else [False, True] if args.qat else [False]
    results = []
    for data in args.data:
        for backbone in args.backbones:
            for qat in variants:
                results.append(run(data, backbone, args, env, qat))
                print(row(results[-1]), flush=True)
    (Path(args.out) / "report.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
