"""What quantization-aware fine-tuning buys over plain post-training int8: continue a trained
checkpoint for a few epochs at a fraction of its learning rate, with and without
:class:`tlx.quantization.QuantizationAwareTraining`, then export each with ``--quantize int8``.

    python scripts/qat_gain.py RUN_DIR --epochs 1 --lr_factor 0.1 --threads 1

``RUN_DIR`` holds ``checkpoints/best.ckpt`` (its data must still be on disk). The run without QAT
is the control: it separates QAT's effect from that of the extra training. Prints fp32 and int8
accuracy of the checkpoint, the control and the QAT run (each from its ``export/best.json``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from lightning.pytorch import Trainer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tlx.export import _datamodule_from_checkpoint  # noqa: E402
from tlx.finetuning import FullFinetune  # noqa: E402
from tlx.models import ImageClassifier  # noqa: E402
from tlx.quantization import QuantizationAwareTraining  # noqa: E402


def continue_training(ckpt: Path, out: Path, epochs: int, lr_factor: float, qat: bool) -> Path:
    target = out / "checkpoints" / "best.ckpt"
    if target.is_file():
        return target
    model = ImageClassifier.load_from_checkpoint(ckpt, map_location="cpu", weights=None, weights_path=None)
    model.lr_factor = lr_factor  # every group's LR (and the schedule's) scaled: a gentle continuation
    datamodule = _datamodule_from_checkpoint(str(ckpt))
    trainer = Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, default_root_dir=str(out), num_sanity_val_steps=0,
                      # every layer trains, BatchNorm statistics stay as trained (as the default
                      # recipe keeps them at batch 32: updating them drifts fp32 accuracy)
                      callbacks=[FullFinetune(backbone_lr_scale=1.0, freeze_bn_stats=True),
                                 *([QuantizationAwareTraining(last_epochs=epochs)] if qat else [])])
    trainer.fit(model, datamodule=datamodule)
    save_weights(model.state_dict(), ckpt, target)  # the last weights, not a pick by validation accuracy
    return target


def save_weights(state_dict: dict, source: Path, target: Path) -> None:
    """``source``'s checkpoint (hyperparameters, data settings) with new weights: a plain file,
    which ``tlx export`` loads (a bare Trainer's checkpoint pickles the optimizer factories)."""
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    keep = ("state_dict", "hyper_parameters", "datamodule_hyper_parameters", "pytorch-lightning_version",
            "hparams_name", "datamodule_hparams_name")
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**{k: v for k, v in checkpoint.items() if k in keep}, "state_dict": state_dict}, target)


def export(ckpt: Path, threads: int, method: str) -> dict:
    out = ckpt.parent.parent / f"export_{method}"
    if not (out / "best.json").is_file():
        subprocess.run([sys.executable, "-m", "tlx", "export", f"--ckpt_path={ckpt}", "--format=onnx",
                        "--quantize=int8", f"--calibration_method={method}", f"--threads={threads}",
                        f"--output_dir={out}"], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return json.loads((out / "best.json").read_text())["precisions"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr_factor", type=float, default=0.1)
    parser.add_argument("--methods", nargs="+", default=["minmax", "entropy"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = args.run / "checkpoints" / "best.ckpt"
    rows = {"checkpoint": ckpt}
    for name, qat in (("continued", False), ("continued + QAT", True)):
        out = args.run / f"qat_gain_{'qat' if qat else 'control'}_e{args.epochs}_bnfrozen"
        rows[name] = continue_training(ckpt, out, args.epochs, args.lr_factor, qat)
    print(f"{args.run.name}: {args.epochs} more epoch(s) at {args.lr_factor} x the LR")
    print("| model | calibration | fp32 acc | int8 acc | diff (points) | top-1 agreement |\n|---|---|---:|---:|---:|---:|")
    for name, path in rows.items():
        for method in args.methods:
            p = export(path, args.threads, method)
            print(f"| {name} | {method} | {p['fp32']['accuracy']:.4f} | {p['int8']['accuracy']:.4f} | "
                  f"{100 * (p['int8']['accuracy'] - p['fp32']['accuracy']):+.2f} | {p['int8']['top1_agreement']:.2%} |",
                  flush=True)


if __name__ == "__main__":
    main()
