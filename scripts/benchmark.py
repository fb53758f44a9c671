"""tlx against the plain-PyTorch tutorial loop, side by side, on the same data and model.

Rows (each in its own process, so that start-up and peak memory are its own):

* ``tutorial_{frozen,finetune}``: scripts/tutorial_baseline.py, the PyTorch tutorial's loop.
* ``tlx_recipe_{frozen,finetune}``: ``python -m tlx fit`` with the same recipe
  (configs/tutorial_{frozen,finetune}.yaml: batch 4, 4 workers, SGD 1e-3 m0.9, StepLR 7, fp32).
* ``tlx_fast_{frozen,finetune}``: configs/hymenoptera_fast.yaml (frozen backbone, features cached,
  bf16 + channels_last) and configs/hymenoptera_fast_finetune.yaml (bf16 + channels_last, batch
  32, decoded-image cache).
* ``tlx_top_stages_finetune``: the same fine-tuning recipe with configs/speed/top_stages.yaml
  stacked on it: the bottom of Lite0 up to ``blocks.4`` frozen and cached (eval view + 4 random
  views per image), blocks.5-6, conv_head and the head trained on the cache. Its epoch (after the
  first; the extraction runs at fit start, before it, and is reported apart) against
  ``tlx_fast_finetune``'s: target >= 3x, at a val accuracy within 0.5 point.
* ``ceiling_*``: the model alone: training steps on a batch already in memory, at the precision
  and batch size of a tlx row; no data pipeline, no framework. What the hardware can give.

Printed and written as JSON: img/s (training), s/epoch (train + validation), val accuracy,
peak RSS of the main process, peak PSS of the process and its workers together, and the ratios the targets are about.

    python scripts/benchmark.py                      # a few minutes on 2 CPU cores
    python scripts/benchmark.py --epochs-tutorial 3 --epochs-finetune 3 --out bench.json
    python scripts/benchmark.py --only top_stages --epochs-finetune 10   # partial fine-tuning row
"""

from __future__ import annotations

import time

PROCESS_START = time.time()  # before the heavy imports: start-up counts

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent
DEFAULT_DATA = (REPO / ".." / "shared" / "data" / "hymenoptera").resolve()


def _descendants(pid: int) -> list[int]:
    try:
        children = []
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children += [int(c) for c in f.read().split()]
    except OSError:
        return []
    return children + [d for c in children for d in _descendants(c)]


def _pss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Pss:")) / 1024
    except (OSError, StopIteration):
        return 0.0


class MemorySampler:
    """Peak memory of this process and its DataLoader workers together: the sum of their PSS
    (proportional set size, so pages that forked workers share with the parent count once),
    sampled twice a second. ``ru_maxrss`` alone would miss the workers, and summing RSS would
    count shared pages once per worker."""

    def __init__(self, interval: float = 0.5):
        import threading

        self.peak, self.interval, self._stop = 0.0, interval, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, sum(_pss_mb(p) for p in [me, *_descendants(me)]))

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
            "peak_total_pss_mb": self.peak or None,  # None where /proc is missing
        }


# ---- rows, each run in a child process ---------------------------------------------------------
def row_tutorial(mode: str, args) -> dict:
    sys.path.insert(0, str(SCRIPTS))
    import tutorial_baseline

    history = tutorial_baseline.run(mode, str(args.data), args.epochs_tutorial, num_workers=args.tutorial_workers)
    epochs = [
        {"epoch_s": h["epoch_s"], "train_s": h["train_s"], "train_img_s": h["train_images"] / h["train_s"],
         "val_acc": h["val_acc"], "since_start_s": None}
        for h in history
    ]
    return {"epochs": epochs}


def _epoch_timer():
    from lightning.pytorch import Callback

    class EpochTimer(Callback):
        """Train-phase throughput and epoch time (train + validation) of every epoch."""

        def __init__(self):
            self.epochs: list[dict] = []

        def on_train_epoch_start(self, trainer, pl_module):
            self.start, self.images, self.train_end = time.perf_counter(), 0, None

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.images += len(batch[1])
            self.train_end = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            end = time.perf_counter()
            train_s = self.train_end - self.start
            acc = trainer.callback_metrics.get("val/acc")
            self.epochs.append({
                "epoch_s": end - self.start, "train_s": train_s, "train_img_s": self.images / train_s,
                "val_acc": float(acc) if acc is not None else None, "since_start_s": time.time() - PROCESS_START,
            })

    return EpochTimer()


def row_tlx(config: str, epochs: int | None, args, extra: list[str]) -> dict:
    sys.path.insert(0, str(REPO))
    from tlx.cli import TLXCLI, _configure_logging

    _configure_logging()
    timer = _epoch_timer()
    with tempfile.TemporaryDirectory() as out:
        cli_args = [
            "fit", f"--config={REPO / 'configs' / config}", f"--data.init_args.root={args.data}",
            f"--trainer.default_root_dir={out}", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", *extra,
        ]
        if epochs:
            cli_args.append(f"--trainer.max_epochs={epochs}")
        cli = TLXCLI(args=cli_args, trainer_defaults={"callbacks": [timer]})
        result = {"epochs": timer.epochs, "precision": str(cli.trainer.precision)}
        for cb in cli.trainer.callbacks:
            if hasattr(cb, "extract_seconds"):
                result["feature_extraction_s"] = cb.extract_seconds
    return result


def row_ceiling(precision: str, batch_size: int, args) -> dict:
    """Training steps of backbone + linear head on one in-memory batch (no loader, no Lightning)."""
    import torch

    sys.path.insert(0, str(REPO))
    from tlx.backbones import create_backbone
    from tlx.heads import LinearHead

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backbone = create_backbone("efficientnet_lite0")
    model = torch.nn.Sequential(backbone, LinearHead(backbone.num_features, 2)).train().to(device)
    bf16 = precision.startswith("bf16")
    if bf16:
        model = model.to(memory_format=torch.channels_last)
    x = torch.randn(batch_size, 3, 224, 224, device=device)
    x = x.contiguous(memory_format=torch.channels_last) if bf16 else x
    y = torch.randint(0, 2, (batch_size,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    step()  # warm-up: oneDNN picks and caches its kernels
    steps = max(2, args.ceiling_images // batch_size)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    # the median step: robust against the machine's other tenants
    return {"train_img_s": batch_size / statistics.median(times), "steps": steps, "precision": precision}


ROWS = {
    "tutorial_frozen": lambda a: row_tutorial("frozen", a),
    "tlx_recipe_frozen": lambda a: row_tlx("tutorial_frozen.yaml", a.epochs_tutorial, a,
                                           [f"--data.init_args.num_workers={a.tutorial_workers}"]),
    "tlx_fast_frozen": lambda a: row_tlx("hymenoptera_fast.yaml", a.epochs_fast_frozen, a, []),
    "tutorial_finetune": lambda a: row_tutorial("finetune", a),
    "tlx_recipe_finetune": lambda a: row_tlx("tutorial_finetune.yaml", a.epochs_tutorial, a,
                                             [f"--data.init_args.num_workers={a.tutorial_workers}"]),
    "tlx_fast_finetune": lambda a: row_tlx("hymenoptera_fast_finetune.yaml", a.epochs_finetune, a, []),
    "tlx_top_stages_finetune": lambda a: row_tlx("hymenoptera_fast_finetune.yaml", a.epochs_finetune, a,
                                                 [f"--config={REPO / 'configs' / 'speed' / 'top_stages.yaml'}"]),
    "ceiling_fp32_b4": lambda a: row_ceiling("32-true", 4, a),
    "ceiling_bf16_b32": lambda a: row_ceiling("bf16-mixed", 32, a),
}
GROUPS = {
    "frozen": ["tutorial_frozen", "tlx_recipe_frozen", "tlx_fast_frozen"],
    "finetune": ["tutorial_finetune", "tlx_recipe_finetune", "tlx_fast_finetune", "ceiling_fp32_b4", "ceiling_bf16_b32"],
    "top_stages": ["tlx_fast_finetune", "tlx_top_stages_finetune"],
}


# ---- the parent: run rows, summarise -----------------------------------------------------------
def run_row(name: str, args, script: Path | None = None) -> dict:
    """Row ``name`` in a child process of ``script`` (this file, or a script reusing its runner)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result_file = f.name
    cmd = [sys.executable, str(script or Path(__file__).resolve()), "--row", name, "--result-file", result_file, *args.passthrough]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.time() - start
    if proc.returncode != 0:  # report it and go on with the other rows
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-4000:])
        print(f"[benchmark] {name} FAILED (exit {proc.returncode})", flush=True)
        return {"error": f"exit {proc.returncode}", "wall_s": wall}
    result = json.loads(Path(result_file).read_text())
    os.unlink(result_file)
    result["wall_s"] = wall
    return result


def summarise(rows: dict) -> dict:
    out = {}
    for name, r in rows.items():
        if "error" in r:
            continue
        s = {k: r[k] for k in ("wall_s", "peak_rss_mb", "peak_total_pss_mb", "precision", "feature_extraction_s") if k in r}
        if "epochs" in r:
            ep = r["epochs"]
            later = ep[1:] or ep
            s["first_epoch_s"] = ep[0]["epoch_s"]
            s["epoch_s"] = statistics.median(e["epoch_s"] for e in later)  # steady state
            s["train_img_s"] = statistics.median(e["train_img_s"] for e in later)
            accs = [e["val_acc"] for e in ep if e["val_acc"] is not None]
            s["final_val_acc"] = accs[-1] if accs else None
            s["best_val_acc"] = max(accs) if accs else None
            hits = [e["since_start_s"] for e in ep if e["val_acc"] is not None and e["val_acc"] >= 0.93 and e["since_start_s"]]
            s["s_to_93pct_from_process_start"] = hits[0] if hits else None
            s["epochs"] = len(ep)
        else:
            s["train_img_s"] = r["train_img_s"]
        out[name] = s
    return out


def ratios(s: dict) -> dict:
    def ratio(a, b, key):
        if a in s and b in s and s[a].get(key) and s[b].get(key):
            return s[a][key] / s[b][key]
        return None

    r = {
        # frozen: how much faster an epoch after the first is (target >= 20)
        "frozen_epoch_speedup_fast_vs_tutorial": ratio("tutorial_frozen", "tlx_fast_frozen", "epoch_s"),
        "frozen_epoch_speedup_recipe_vs_tutorial": ratio("tutorial_frozen", "tlx_recipe_frozen", "epoch_s"),
        # fine-tuning throughput (targets: >= 0.9 of the ceiling, >= 2 x tutorial)
        "finetune_fast_vs_ceiling_bf16_b32": ratio("tlx_fast_finetune", "ceiling_bf16_b32", "train_img_s"),
        "finetune_fast_vs_tutorial": ratio("tlx_fast_finetune", "tutorial_finetune", "train_img_s"),
        "finetune_recipe_vs_ceiling_fp32_b4": ratio("tlx_recipe_finetune", "ceiling_fp32_b4", "train_img_s"),
        "finetune_recipe_vs_tutorial": ratio("tlx_recipe_finetune", "tutorial_finetune", "train_img_s"),
        "finetune_tutorial_vs_ceiling_fp32_b4": ratio("tutorial_finetune", "ceiling_fp32_b4", "train_img_s"),
        # top stages from cached activations vs the whole network, per epoch (target >= 3)
        "top_stages_epoch_speedup_vs_fast_finetune": ratio("tlx_fast_finetune", "tlx_top_stages_finetune", "epoch_s"),
    }
    return {k: v for k, v in r.items() if v is not None}


def print_table(s: dict, r: dict) -> None:
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    print(f"\n{'row':22} {'img/s':>7} {'s/epoch':>8} {'1st ep s':>8} {'val acc':>7} {'wall s':>7} {'RSS MB':>7} {'PSS MB':>7}")
    for name, v in s.items():
        print(f"{name:22} {f(v.get('train_img_s'), '7.1f')} {f(v.get('epoch_s'), '8.2f')} {f(v.get('first_epoch_s'), '8.2f')} "
              f"{f(v.get('best_val_acc'), '7.3f')} {f(v.get('wall_s'), '7.1f')} {f(v.get('peak_rss_mb'), '7.0f')} "
              f"{f(v.get('peak_total_pss_mb'), '7.0f')}")
    print()
    for k, v in r.items():
        print(f"{k:42} {v:6.2f}x")
    top, full = s.get("tlx_top_stages_finetune", {}), s.get("tlx_fast_finetune", {})
    if top.get("best_val_acc") is not None and full.get("best_val_acc") is not None:
        print(f"{'top stages - full fine-tuning, best val acc':42} {100 * (top['best_val_acc'] - full['best_val_acc']):+6.1f} points"
              f"  (target >= -0.5; extraction {f(top.get('feature_extraction_s'), '.1f')} s, before the 1st epoch)")
    fast = s.get("tlx_fast_frozen", {})
    if fast:
        print(f"{'frozen fast: s to >=93% val acc (from start)':42} {f(fast.get('s_to_93pct_from_process_start'), '6.1f')}"
              f"  (whole process {f(fast.get('wall_s'), '.1f')} s, best {f(fast.get('best_val_acc'), '.3f')})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--only", choices=["frozen", "finetune", "top_stages", *ROWS], nargs="+", help="run these groups/rows only")
    p.add_argument("--epochs-tutorial", type=int, default=2, help="epochs of the tutorial and tlx-recipe rows")
    p.add_argument("--epochs-fast-frozen", type=int, default=None, help="default: the config's (15)")
    p.add_argument("--epochs-finetune", type=int, default=2, help="epochs of tlx_fast_finetune")
    p.add_argument("--tutorial-workers", type=int, default=4)
    p.add_argument("--ceiling-images", type=int, default=160, help="images per ceiling measurement")
    p.add_argument("--out", type=Path, default=Path("benchmark.json"))
    p.add_argument("--row", help=argparse.SUPPRESS)
    p.add_argument("--result-file", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.row:  # child process: one row
        sampler = MemorySampler()
        result = ROWS[args.row](args)
        result.update(sampler.stop())
        Path(args.result_file).write_text(json.dumps(result))
        return

    args.passthrough = [
        f"--data={args.data}", f"--epochs-tutorial={args.epochs_tutorial}", f"--epochs-finetune={args.epochs_finetune}",
        f"--tutorial-workers={args.tutorial_workers}", f"--ceiling-images={args.ceiling_images}",
        *([f"--epochs-fast-frozen={args.epochs_fast_frozen}"] if args.epochs_fast_frozen else []),
    ]
    names = []
    for item in args.only or ["frozen", "finetune"]:
        names += GROUPS.get(item, [item])
    rows = {}
    for name in names:
        print(f"[benchmark] {name} ...", flush=True)
        rows[name] = run_row(name, args)
        print(f"[benchmark] {name}: {json.dumps(summarise({name: rows[name]}).get(name, rows[name]))}", flush=True)
        args.out.write_text(json.dumps({"partial": True, "rows": rows}, indent=1))  # survives an interrupted run
    s = summarise(rows)
    r = ratios(s)
    print_table(s, r)
    import torch

    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "load_avg_1m_at_end": os.getloadavg()[0]},
        "args": {k: str(v) for k, v in vars(args).items() if k not in ("row", "result_file", "passthrough")},
        "summary": s, "ratios": r, "rows": rows,
    }
    args.out.write_text(json.dumps(report, indent=1))
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
