"""Every fine-tuning strategy on hymenoptera and on a low-data case, in one table.

    nice -n 10 python scripts/finetuning_report.py            # small default budget (CPU)
    python scripts/finetuning_report.py --epochs 10 --size 224  # a fuller comparison

The strategies are the fragments in configs/finetuning/strategies/ (a new one is picked up by
adding its fragment), each built as its fragment says, except for one shared budget: wherever a
fragment sets them, ``unfreeze_at_epoch`` (half the epochs), ``warmup_steps`` and
``backbone_lr_scale`` take the report's values (``--unfreeze-at``, ``--warmup-steps``,
``--backbone-lr-scale``), and every run uses the report's model, data and optimizer.

Low-data case: ``--shots`` labelled images per class of Office-31 webcam (31 classes),
validated on all the other webcam images. The backbone is the packaged EfficientNet-Lite0
(ImageNet weights, offline); ``--size`` shrinks its input to save CPU. Prints one markdown row
per run as it finishes: strategy, trainable parameters (at the end of the run), best
validation accuracy over the epochs, wall time of ``fit``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from lightning.pytorch import Callback, Trainer, seed_everything

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tlx.backbones import create_backbone  # noqa: E402
from tlx.data import ImageFolderDataModule  # noqa: E402
from tlx.data.fewshot import FewShotImageFolder  # noqa: E402
from tlx.finetuning import L2SP  # noqa: E402
from tlx.models import ImageClassifier  # noqa: E402

from scripts.fragments import STRATEGIES, fragments, instantiate, read  # noqa: E402

SHARED = (REPO / ".." / "shared").resolve()


def budget(args) -> dict[str, Any]:
    """Init arguments the report sets wherever a fragment sets them: a 2-epoch run still
    unfreezes, and warms up, inside its budget."""
    unfreeze_at = args.unfreeze_at if args.unfreeze_at is not None else max(1, args.epochs // 2)
    return {"unfreeze_at_epoch": unfreeze_at, "warmup_steps": args.warmup_steps,
            "backbone_lr_scale": args.backbone_lr_scale}


def strategies(args) -> dict[str, Callable[[], list[Callback]]]:
    """name -> a fresh list of the fragment's callbacks, with the report's budget."""
    overrides = budget(args)

    def build(path: Path) -> list[Callback]:
        specs = read(path, "trainer", "callbacks+")
        for spec in specs:
            init_args = spec.get("init_args") or {}
            init_args.update({k: v for k, v in overrides.items() if k in init_args})
        return instantiate(specs, list[Callback])

    return {name: partial(build, path) for name, path in fragments(STRATEGIES).items()}


class BestAcc(Callback):
    def __init__(self):
        self.best = 0.0

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking and "val/acc" in trainer.callback_metrics:
            self.best = max(self.best, trainer.callback_metrics["val/acc"].item())


def datasets(args) -> dict[str, callable]:
    common = dict(batch_size=args.batch_size, eval_batch_size=64, num_workers=args.workers)
    return {
        "hymenoptera": lambda: ImageFolderDataModule(str(SHARED / "data" / "hymenoptera"), **common),
        f"webcam {args.shots}-shot": lambda: FewShotImageFolder(str(SHARED / "data" / "office31" / "webcam"), shots=args.shots, **common),
    }


def run_one(make_data, callbacks, args, data_config) -> tuple[int, float, float]:
    seed_everything(42, verbose=False)
    model = ImageClassifier(
        backbone="efficientnet_lite0",
        preprocessing=data_config,
        optimizer=partial(torch.optim.AdamW, lr=args.lr, weight_decay=0.0 if any(isinstance(c, L2SP) for c in callbacks) else 0.01),
        lr_scheduler=partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=args.epochs),
    )
    best = BestAcc()
    trainer = Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      callbacks=[*callbacks, best])
    start = time.perf_counter()
    trainer.fit(model, make_data())
    wall = time.perf_counter() - start
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, best.best, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--size", type=int, default=160, help="input size (Lite0's own is 224)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3, help="head LR (AdamW); strategies scale the rest")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--unfreeze-at", type=int, default=None, help="unfreeze_at_epoch (default: epochs // 2)")
    parser.add_argument("--warmup-steps", type=int, default=3, help="warmup_steps, where a strategy sets it")
    parser.add_argument("--backbone-lr-scale", type=float, default=0.1,
                        help="backbone_lr_scale, where a strategy sets it")
    parser.add_argument("--only", nargs="*", default=None, help="substrings of strategy names to run")
    parser.add_argument("--datasets", nargs="*", default=None, help="substrings of dataset names to run")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    base = create_backbone("efficientnet_lite0").preprocessing.to_dict()
    data_config = dict(base, input_size=args.size, resize_size=round(args.size / 0.875))
    print(f"EfficientNet-Lite0 (ImageNet), {args.epochs} epochs, {args.size} px, batch {args.batch_size}, "
          f"AdamW lr {args.lr:g} + cosine, torch threads {torch.get_num_threads()}; where a strategy sets them: "
          + ", ".join(f"{k} {v:g}" for k, v in budget(args).items()) + "\n")
    print("| data | strategy | trainable params | best val acc | wall time (s) |")
    print("|---|---|---:|---:|---:|", flush=True)
    for data_name, make_data in datasets(args).items():
        if args.datasets and not any(s in data_name for s in args.datasets):
            continue
        for name, make_callbacks in strategies(args).items():
            if args.only and not any(s in name for s in args.only):
                continue
            trainable, acc, wall = run_one(make_data, make_callbacks(), args, data_config)
            print(f"| {data_name} | {name} | {trainable:,} | {acc:.3f} | {wall:.0f} |", flush=True)


if __name__ == "__main__":
    main()
