"""The GPU rows: tlx's training throughput on one GPU against the model alone and timm's published figure.

Rows (each in its own process, through scripts/benchmark.py's row runner):

* ``ceiling_{bf16,fp16}_b{N}``: training steps of EfficientNet-Lite0 + linear head on a batch already on
  the GPU (channels_last, autocast), no data pipeline and no framework: what the GPU can give.
* ``infer_bf16_b256``: inference of the same model, for timm's inference tables.
* ``tlx_finetune``: ``python -m tlx fit`` with configs/hymenoptera_fast_finetune.yaml +
  configs/trainer/gpu.yaml (bf16, channels_last, decoded-image cache) on an image folder of generated
  JPEGs (``--images`` of them, 2 classes), batch ``--batch-size``, ``--workers`` loader processes.
* ``tlx_finetune_ddp1``: the same under the DDP strategy with one process: DDP's own overhead
  (a machine with one GPU cannot show multi-GPU scaling, and this script does not pretend to).
* ``tlx_frozen``: configs/hymenoptera_fast.yaml on the GPU: the feature extraction time.

timm's published figure for the same architecture (results/benchmark-train-amp-nhwc-pt112-cu113-rtx3090.csv):
tf_efficientnet_lite0 trains at 2134.89 img/s (AMP fp16, channels_last, batch 512, 224 px, RTX 3090).

    python scripts/gpu_benchmark.py --out gpu.json            # on the GPU machine, a few minutes
    python scripts/gpu_benchmark.py --tiny                     # a dry run on a CPU (tiny sizes)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))
import benchmark  # noqa: E402  (its row runner, epoch timer and memory sampler)

TIMM_PUBLISHED_TRAIN = {"model": "tf_efficientnet_lite0", "img_s": 2134.89, "batch": 512, "gpu": "RTX 3090",
                        "precision": "AMP fp16, NHWC", "source": "timm results/benchmark-train-amp-nhwc-pt112-cu113-rtx3090.csv"}


def make_image_folder(root: Path, n: int, size: int = 256) -> None:
    """n random-texture JPEGs in two class folders (decoding cost like real photos of that size)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("val", max(8, n // 8))):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            base = rng.integers(0, 255, (size // 8, size // 8, 3), dtype=np.uint8)
            img = Image.fromarray(base).resize((size, size), Image.BILINEAR)
            img.save(root / split / ("a" if i % 2 else "b") / f"{i}.jpg", quality=90)


def row_model(mode: str, precision: str, batch_size: int, args) -> dict:
    import torch

    sys.path.insert(0, str(benchmark.REPO))
    from tlx.backbones import create_backbone
    from tlx.heads import LinearHead

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backbone = create_backbone("efficientnet_lite0")
    model = torch.nn.Sequential(backbone, LinearHead(backbone.num_features, 1000)).to(device)
    model = model.to(memory_format=torch.channels_last).train(mode == "train")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    x = torch.randn(batch_size, 3, args.size, args.size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch_size,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16" and device.type == "cuda")

    def step():
        if mode == "train":
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=dtype):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype):
                model(x)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(args.warmup_steps):  # cuDNN autotuning and allocator warm-up
        step()
    sync()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return {"train_img_s" if mode == "train" else "infer_img_s": batch_size / statistics.median(times),
            "batch_size": batch_size, "precision": precision, "steps": args.steps,
            "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"}


def row_fit(config: str, extra: list[str], args) -> dict:
    args.data = args.image_root
    gpu = [] if args.tiny else [f"--config={benchmark.REPO / 'configs' / 'trainer' / 'gpu.yaml'}"]
    result = benchmark.row_tlx(config, args.epochs, args, [
        *gpu, f"--data.init_args.batch_size={args.batch_size}", f"--data.init_args.eval_batch_size={args.batch_size}",
        f"--data.init_args.num_workers={args.workers}", *extra])
    return result


ROWS = {
    "ceiling_bf16_b256": lambda a: row_model("train", "bf16", a.batch_size, a),
    "ceiling_fp16_b512": lambda a: row_model("train", "fp16", 2 * a.batch_size, a),
    "infer_bf16_b256": lambda a: row_model("infer", "bf16", a.batch_size, a),
    "tlx_finetune": lambda a: row_fit("hymenoptera_fast_finetune.yaml", [], a),
    "tlx_finetune_ddp1": lambda a: row_fit("hymenoptera_fast_finetune.yaml", ["--trainer.strategy=ddp"], a),
    "tlx_frozen": lambda a: row_fit("hymenoptera_fast.yaml", [], a),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=8192, help="generated training images")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=12)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--tiny", action="store_true", help="dry run on a CPU with tiny sizes")
    p.add_argument("--only", nargs="+", choices=list(ROWS))
    p.add_argument("--out", type=Path, default=Path("gpu_benchmark.json"))
    p.add_argument("--image-root", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--row", help=argparse.SUPPRESS)
    p.add_argument("--result-file", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.tiny:
        args.images, args.batch_size, args.workers, args.epochs, args.size, args.steps, args.warmup_steps = 32, 8, 0, 1, 64, 2, 1

    if args.row:  # child process
        sampler = benchmark.MemorySampler()
        result = ROWS[args.row](args)
        result.update(sampler.stop())
        Path(args.result_file).write_text(json.dumps(result))
        return

    tmp = Path(tempfile.mkdtemp(prefix="tlx-gpu-bench-"))
    args.image_root = tmp / "images"
    start = time.time()
    make_image_folder(args.image_root, args.images)
    print(f"[gpu_benchmark] {args.images} images generated in {time.time() - start:.1f} s", flush=True)
    passthrough = [f"--images={args.images}", f"--batch-size={args.batch_size}", f"--workers={args.workers}",
                   f"--epochs={args.epochs}", f"--size={args.size}", f"--steps={args.steps}",
                   f"--warmup-steps={args.warmup_steps}", f"--image-root={args.image_root}", *(["--tiny"] if args.tiny else [])]
    ns = argparse.Namespace(passthrough=passthrough)
    rows = {}
    for name in args.only or list(ROWS):
        print(f"[gpu_benchmark] {name} ...", flush=True)
        rows[name] = benchmark.run_row(name, ns, script=Path(__file__).resolve())
        print(f"[gpu_benchmark] {name}: {json.dumps(_summary(rows[name]))}", flush=True)
        args.out.write_text(json.dumps({"partial": True, "rows": rows}, indent=1))
    summary = {k: _summary(v) for k, v in rows.items()}
    ratios = {}
    fit, ceil = summary.get("tlx_finetune", {}), summary.get("ceiling_bf16_b256", {})
    if fit.get("train_img_s") and ceil.get("train_img_s"):
        ratios["tlx_finetune_vs_ceiling_bf16_b256"] = fit["train_img_s"] / ceil["train_img_s"]
    for name in ("ceiling_fp16_b512", "tlx_finetune"):
        if summary.get(name, {}).get("train_img_s"):
            ratios[f"{name}_vs_timm_published_rtx3090"] = summary[name]["train_img_s"] / TIMM_PUBLISHED_TRAIN["img_s"]
    ddp = summary.get("tlx_finetune_ddp1", {})
    if fit.get("train_img_s") and ddp.get("train_img_s"):
        ratios["ddp1_vs_single"] = ddp["train_img_s"] / fit["train_img_s"]
    print(f"\n{'row':22} {'train img/s':>11} {'infer img/s':>11} {'s/epoch':>8} {'wall s':>7} {'extract s':>9}")
    for name, s in summary.items():
        def f(key, fmt):
            return "-" if s.get(key) is None else format(s[key], fmt)
        print(f"{name:22} {f('train_img_s', '11.0f')} {f('infer_img_s', '11.0f')} {f('epoch_s', '8.2f')} "
              f"{f('wall_s', '7.1f')} {f('feature_extraction_s', '9.2f')}")
    for k, v in ratios.items():
        print(f"{k:42} {v:6.2f}x")
    import torch

    report = {"machine": {"cpus": os.cpu_count(), "torch": torch.__version__,
                          "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
              "timm_published": TIMM_PUBLISHED_TRAIN, "args": {k: str(v) for k, v in vars(args).items()},
              "summary": summary, "ratios": ratios, "rows": rows}
    args.out.write_text(json.dumps(report, indent=1))
    print(f"\nwritten: {args.out}")


def _summary(r: dict) -> dict:
    if "error" in r:
        return r
    if "epochs" in r:
        s = benchmark.summarise({"x": r})["x"]
        return {k: s.get(k) for k in ("train_img_s", "epoch_s", "first_epoch_s", "wall_s", "feature_extraction_s", "best_val_acc")}
    return {k: v for k, v in r.items() if k in ("train_img_s", "infer_img_s", "batch_size", "precision", "wall_s", "gpu")}


if __name__ == "__main__":
    main()
