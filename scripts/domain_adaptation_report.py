"""Target accuracy of each domain-adaptation method on Office-31, same backbone and budget.

Two budgets:

* ``--mode features`` (default, CPU-friendly): the packaged EfficientNet-Lite0 stays frozen; its
  pooled features of every image (centre crop, ``--image-size``) are computed once and cached,
  then ``DomainAdaptationClassifier`` trains bottleneck, head and the objective's own modules on
  them for ``--steps`` steps (source and target batch each step), through Lightning.
* ``--mode finetune``: the real pipeline, ``python -m tlx fit`` with
  configs/domain_adaptation/{office31,<task>,objectives/<method>}.yaml and ``--trainer.max_steps``;
  the whole network trains.

The methods are the fragments in configs/domain_adaptation/objectives/ (a new objective is picked
up by adding its fragment), each objective built as its fragment says.

Either way every method gets the same seeds, steps, batch size and optimiser; the printed number
is top-1 accuracy on all target images (their labels are never used for training).

    nice -n 10 python scripts/domain_adaptation_report.py --tasks a2w --seeds 0 1 2
    python scripts/domain_adaptation_report.py --mode finetune --tasks a2w w2a --steps 2000  # GPU
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule, Trainer, seed_everything
from lightning.pytorch.utilities import CombinedLoader
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tlx.backbones import create_backbone  # noqa: E402
from tlx.backbones.base import Backbone  # noqa: E402
from tlx.data.datasets import LabelledImages  # noqa: E402
from tlx.data.folders import scan_class_folders  # noqa: E402
from tlx.data.transforms import eval_transform  # noqa: E402
from tlx.domain_adaptation.objectives import Objective  # noqa: E402
from tlx.domain_adaptation.model import DomainAdaptationClassifier  # noqa: E402
from tlx.preprocessing import Preprocessing  # noqa: E402

from scripts.fragments import OBJECTIVES, fragments, instantiate, read  # noqa: E402

OFFICE31 = (REPO / ".." / "shared" / "data" / "office31").resolve()
TASKS = {"a2w": ("amazon", "webcam"), "w2a": ("webcam", "amazon")}
METHODS = fragments(OBJECTIVES)  # name -> its fragment


# ---- features mode ---------------------------------------------------------------------------
def cached_features(domain: str, size: int, cache: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    path = cache / f"office31_{domain}_lite0_{size}.pt"
    if path.is_file():
        d = torch.load(path, weights_only=True)
        return d["features"], d["labels"], d["classes"]
    backbone = create_backbone("efficientnet_lite0", weights="DEFAULT").eval()
    base = backbone.preprocessing
    cfg = Preprocessing(size, int(size / 0.875), base.interpolation, base.mean, base.std)
    scan = scan_class_folders(OFFICE31 / domain, domain)
    data = LabelledImages(scan.samples, eval_transform(cfg), cfg.resize_size)
    feats, labels = [], []
    t0 = time.time()
    with torch.inference_mode():
        for x, y in DataLoader(data, batch_size=64, num_workers=1):
            feats.append(backbone(x))
            labels.append(y)
    print(f"  features of {domain} ({len(data)} images, {size} px): {time.time() - t0:.0f} s", flush=True)
    out = {"features": torch.cat(feats), "labels": torch.cat(labels), "classes": scan.classes}
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)
    return out["features"], out["labels"], out["classes"]


class FeatureDomains(LightningDataModule):
    """Cached features in the shapes DomainAdaptationDataModule gives: source (x, y), target
    (x, index) for training; target (x, y) for validation."""

    def __init__(self, source, target, batch_size: int):
        super().__init__()
        self.source, self.target, self.batch_size = source, target, batch_size

    def train_dataloader(self):
        (xs, ys), (xt, _) = self.source, self.target
        loaders = {
            "source": DataLoader(TensorDataset(xs, ys), self.batch_size, shuffle=True, drop_last=True),
            "target": DataLoader(TensorDataset(xt, torch.arange(len(xt))), self.batch_size, shuffle=True,
                                 drop_last=True),
        }
        return CombinedLoader(loaders, mode="max_size_cycle")

    def val_dataloader(self):
        return DataLoader(TensorDataset(*self.target), 256)


def run_features(task: str, method: str, seed: int, args) -> float:
    src, tgt = TASKS[task]
    xs, ys, classes = cached_features(src, args.image_size, args.cache)
    xt, yt, _ = cached_features(tgt, args.image_size, args.cache)
    seed_everything(seed, verbose=False)
    model = DomainAdaptationClassifier(
        backbone="efficientnet_lite0", class_names=classes,
        objective=instantiate(read(METHODS[method], "model", "init_args", "objective"), Objective),
        optimizer=lambda p: torch.optim.SGD(p, lr=args.lr, momentum=0.9, weight_decay=5e-4, nesterov=True),
        lr_scheduler=None,
    )
    # The frozen backbone ran once, above: here it is the identity over its cached output.
    model.backbone = Backbone(nn.Identity(), xs.shape[1], model.preprocessing, "efficientnet_lite0 (cached)")
    trainer = Trainer(
        max_steps=args.steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )
    data = FeatureDomains((xs, ys), (xt, yt), args.batch_size)
    trainer.fit(model, data)  # no validation while training: the target is scored once, at the end
    evaluator = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    return evaluator.validate(model, data, verbose=False)[0]["val/acc"]


# ---- finetune mode ---------------------------------------------------------------------------
def run_finetune(task: str, method: str, seed: int, args) -> float:
    from tlx.cli import TLXCLI

    # the base experiment, the task, the objective: three fragments stacked
    configs = [OBJECTIVES.parent / "office31.yaml", OBJECTIVES.parent / f"{task}.yaml", METHODS[method]]
    cli = TLXCLI(args=[
        *(a for config in configs for a in ("--config", str(config))),
        f"--seed_everything={seed}", f"--trainer.max_steps={args.steps}",
        f"--trainer.default_root_dir={args.runs}/{task}_{method}_{seed}", "--trainer.enable_progress_bar=false",
        *(["--trainer.precision=bf16-mixed"] if args.bf16 else []),
    ], run=False)
    cli.trainer.fit(cli.model, cli.datamodule)
    return cli.trainer.validate(cli.model, cli.datamodule, verbose=False)[0]["val/acc"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["features", "finetune"], default="features")
    p.add_argument("--tasks", nargs="+", choices=list(TASKS), default=["a2w"])
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--steps", type=int, default=1000, help="optimisation steps per run")
    p.add_argument("--batch-size", type=int, default=32, help="per domain (features mode)")
    p.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (features mode)")
    p.add_argument("--image-size", type=int, default=160, help="centre crop for the cached features")
    p.add_argument("--cache", type=Path, default=Path("/tmp/tlx_office31_features"))
    p.add_argument("--runs", type=Path, default=Path("runs/domain_adaptation"), help="finetune mode logs")
    p.add_argument("--bf16", action="store_true", help="finetune mode: bf16-mixed precision")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (0: torch's default); 1 is fastest for these small steps on a shared CPU")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    run = run_features if args.mode == "features" else run_finetune
    if args.mode == "features":
        budget = (f"frozen efficientnet_lite0 features ({args.image_size} px), {args.steps} steps, "
                  f"batch {args.batch_size}+{args.batch_size}, SGD lr {args.lr}")
    else:
        budget = f"full fine-tuning with configs/domain_adaptation/ (office31 + task + objective), {args.steps} steps"
    print(f"Office-31 target accuracy (%), {budget}, seeds {args.seeds}", flush=True)
    results: dict[tuple[str, str], list[float]] = {}
    for task in args.tasks:
        for method in args.methods:
            t0 = time.time()
            accs = [100.0 * run(task, method, s, args) for s in args.seeds]
            results[task, method] = accs
            print(f"  {task} {method:<19} {statistics.mean(accs):5.1f}  {[round(a, 1) for a in accs]}  "
                  f"({time.time() - t0:.0f} s)", flush=True)
    print()
    header = "| method | " + " | ".join(f"{TASKS[t][0][0].upper()}->{TASKS[t][1][0].upper()}" for t in args.tasks)
    print(header + (" | gain over source-only (" + args.tasks[0] + ") |" if "source_only" in args.methods else " |"))
    print("|---" * (len(args.tasks) + 1 + ("source_only" in args.methods)) + "|")
    base = statistics.mean(results[args.tasks[0], "source_only"]) if "source_only" in args.methods else None
    for method in args.methods:
        cells = []
        for t in args.tasks:
            accs = results[t, method]
            sd = f" ± {statistics.stdev(accs):.1f}" if len(accs) > 1 else ""
            cells.append(f"{statistics.mean(accs):.1f}{sd}")
        gain = f" | {statistics.mean(results[args.tasks[0], method]) - base:+.1f}" if base is not None else ""
        print(f"| {method} | " + " | ".join(cells) + gain + " |")


if __name__ == "__main__":
    main()
