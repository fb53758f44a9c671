"""Kill ``fit`` with SIGKILL at random moments, resume with ``--ckpt_path last``, compare with an uninterrupted run.

    python scripts/kill_resume_trials.py [--trials 10] [--seed 0] [--workers 0]

On a generated two-class dataset with a tiny random-init model (dropout, cosine schedule and the
default random crops/flips, so that every source of randomness is exercised), ``last.ckpt`` is
written after every step. Odd trials kill at a random moment of training; even trials kill while
a checkpoint file is being written (seen as a partial temp file in the checkpoint folder). Each
killed run is resumed with the same command plus ``--ckpt_path last``; its final weights and its
final validation metrics are compared with those of the uninterrupted run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tlx.checkpointing import PARTIAL_PREFIX  # noqa: E402
from tlx.resume import find_last_checkpoint  # noqa: E402

TINY = {"input_size": 32, "resize_size": 36, "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3}
EPOCHS = 3


def make_data(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for cls, colour in (("cat", (200, 40, 40)), ("dog", (40, 40, 200))):
        for split, n in (("train", 8), ("val", 4)):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = np.clip(np.array(colour) + rng.normal(0, 40, (40, 40, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(root / split / cls / f"{i}.png")
    return root


def fit_args(data: Path, out: Path, workers: int) -> list[str]:
    return [
        "fit", "--model.class_path=tlx.models.ImageClassifier", "--model.init_args.backbone=timm:test_efficientnet",
        "--model.init_args.weights=null", f"--model.init_args.preprocessing={json.dumps(TINY)}",
        "--model.init_args.head=tlx.heads.LinearHead", "--model.init_args.head.dropout=0.3",
        "--model.init_args.lr_scheduler=torch.optim.lr_scheduler.CosineAnnealingLR",
        f"--model.init_args.lr_scheduler.T_max={EPOCHS}",
        "--data.class_path=tlx.data.ImageFolderDataModule", f"--data.init_args.root={data}",
        "--data.init_args.batch_size=4", f"--data.init_args.num_workers={workers}",
        f"--trainer.default_root_dir={out}", f"--trainer.max_epochs={EPOCHS}", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", "--last_checkpoint.every_n_train_steps=1",
    ]


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tlx", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def ckpt_dir(out: Path) -> Path:
    return out / "lightning_logs" / "version_0" / "checkpoints"


def final_state(out: Path, data: Path, workers: int) -> dict:
    """Weights digest, step and validation metrics of the finished run's last.ckpt."""
    from tlx.cli import TLXCLI

    last = find_last_checkpoint(out)  # a run killed before its first checkpoint restarts in version_1
    ckpt = torch.load(last, weights_only=True)
    digest = hashlib.sha256()
    for k in sorted(ckpt["state_dict"]):
        digest.update(k.encode() + ckpt["state_dict"][k].cpu().numpy().tobytes())
    args = ["validate" if a == "fit" else a for a in fit_args(data, out / "eval", workers)
            if not a.startswith("--last_checkpoint")]
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when given args and a command line
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            cli = TLXCLI(args=[*args, f"--ckpt_path={last}", "--trainer.logger=false"])
    finally:
        sys.argv = argv
    metrics = cli.trainer.callback_metrics
    return {"step": ckpt["global_step"], "sha": digest.hexdigest()[:12],
            "val_acc": float(metrics["val/acc"]), "val_loss": float(metrics["val/loss"])}


def wait_for_partial(folder: Path, proc: subprocess.Popen, nth: int) -> bool:
    """Return once the ``nth`` checkpoint write is in flight (a partial temp file exists)."""
    seen, inside = 0, False
    while proc.poll() is None:
        now = folder.is_dir() and any(e.name.startswith(PARTIAL_PREFIX) for e in os.scandir(folder))
        if now and not inside:
            seen += 1
            if seen >= nth:
                return True
        inside = now
        time.sleep(0.0002)
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of the runs")
    opts = parser.parse_args()
    rng = random.Random(opts.seed)
    os.environ["PYTHONWARNINGS"] = "ignore"
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    work = Path(tempfile.mkdtemp(prefix="tlx-kill-"))
    data = make_data(work / "data")

    t0 = time.monotonic()
    base_out = work / "uninterrupted"
    proc = start(fit_args(data, base_out, opts.workers))
    while not (ckpt_dir(base_out) / "last.ckpt").exists() and proc.poll() is None:
        time.sleep(0.01)
    # The training window: from the first last.ckpt to its final rewrite (not process teardown),
    # so that random kills land during training.
    first_seen, last_write = time.time(), 0.0
    while proc.poll() is None:
        try:
            last_write = max(last_write, os.stat(ckpt_dir(base_out) / "last.ckpt").st_mtime)
        except FileNotFoundError:  # between the temp file's rename and the next write
            pass
        time.sleep(0.01)
    _, err = proc.communicate()
    assert proc.returncode == 0, err[-2000:]
    train_time = max(last_write - first_seen, 0.1)
    reference = final_state(base_out, data, opts.workers)
    print(f"uninterrupted: {reference['step']} steps, val/acc {reference['val_acc']:.4f}, "
          f"val/loss {reference['val_loss']:.8f}, weights {reference['sha']} (training ~{train_time:.1f}s)")
    total_writes = reference["step"] + EPOCHS  # one per step, one per validation (approximately)

    header = f"{'trial':>5}  {'kill':<22} {'partial left':>12} {'resumed from':>12} {'resumed':>7} " \
             f"{'val/acc':>8} {'val/loss':>11} {'weights':>12} {'identical':>9}"
    print(header)
    print("-" * len(header))
    resumed_ok = identical = 0
    for trial in range(1, opts.trials + 1):
        out = work / f"trial{trial}"
        args = fit_args(data, out, opts.workers)
        proc = start(args)
        if trial % 2:  # a random moment of training
            while not (ckpt_dir(out) / "last.ckpt").exists() and proc.poll() is None:
                time.sleep(0.005)  # training has started
            delay = rng.uniform(0, train_time)
            time.sleep(delay)
            kill = f"random, t+{delay:.2f}s"
        else:  # while a checkpoint is being written
            nth = rng.randint(1, total_writes - 1)
            caught = wait_for_partial(ckpt_dir(out), proc, nth)
            kill = f"during write #{nth}" if caught else "write not caught"
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        partial = any(out.glob(f"lightning_logs/version_*/checkpoints/{PARTIAL_PREFIX}*"))
        last = find_last_checkpoint(out)
        from_step = torch.load(last, weights_only=True)["global_step"] if last else "start"

        proc = start([*args, "--ckpt_path=last"])
        _, err = proc.communicate()
        ok = proc.returncode == 0
        result = final_state(out, data, opts.workers) if ok else None
        same = ok and result["sha"] == reference["sha"] and result["val_acc"] == reference["val_acc"] \
            and result["val_loss"] == reference["val_loss"]
        resumed_ok += ok
        identical += same
        if result:
            print(f"{trial:>5}  {kill:<22} {str(partial):>12} {str(from_step):>12} {'yes':>7} "
                  f"{result['val_acc']:>8.4f} {result['val_loss']:>11.8f} {result['sha']:>12} {str(same):>9}")
        else:
            print(f"{trial:>5}  {kill:<22} {str(partial):>12} {str(from_step):>12} {'NO':>7}  {err[-300:]!r}")
    print("-" * len(header))
    print(f"trials {opts.trials}   resumed {resumed_ok}/{opts.trials}   identical final metrics and weights "
          f"{identical}/{opts.trials}   ({time.monotonic() - t0:.0f}s, data and runs in {work})")


if __name__ == "__main__":
    main()
