"""Target accuracy of each domain-adaptation method, same backbone and budget, on every task
between the domains of a data root (Office-31's amazon, webcam, dslr: whichever are there).

A domain is a sub-folder of ``--data-root`` holding class folders; a task is an ordered pair of
domains (``a2w``: labelled amazon, unlabelled webcam), every pair by default.

Two budgets:

* ``--mode features`` (default, CPU-friendly): the backbone stays frozen; its pooled features of
  every image (centre crop, ``--image-size``) are computed once and cached on disk, keyed by the
  weights, the files and the preprocessing; then ``DomainAdaptationClassifier`` trains dropout,
  bottleneck, head and the objective's own modules on them for ``--steps`` steps (a source and a
  target batch each step), through Lightning, with office31.yaml's label smoothing of the source
  cross-entropy (none; ``--label-smoothing`` overrides it). A logistic-regression probe on the same source
  features (L2 as scikit-learn's default, C=1) is printed beside the methods as a reference
  floor: source-only should not be below it. ``--views K`` also caches K random training views
  (office31.yaml's crop scale, flip) of every image of both domains, and each draw trains on one
  of an image's centre + K views (``tlx.features.feature_loader``, as ``FeatureCache`` does);
  validation stays on the centre crop.
* ``--mode top_stages``: the real pipeline on the partial cache, ``python -m tlx fit`` with
  configs/domain_adaptation/{office31,objectives/<method>}.yaml + configs/speed/top_stages.yaml
  with ``--cut`` (default ``blocks.5``) + ``--top-strategy``
  (configs/domain_adaptation/top_stages_strategy.yaml: the top at 0.1x the head's learning rate,
  its BatchNorm statistics kept as pretrained); the default cut and strategy are
  configs/domain_adaptation/last_block.yaml, the CLI's fragment for the same recipe. The
  backbone's bottom up to the cut is frozen and its activations cached once (4 random views per
  source and target image, ``--cache``/top_stages, shared by every method and seed of a task), and
  the rest of the backbone (above ``blocks.5``: Lite0's last block and conv_head), bottleneck, head
  and objective train for ``--epochs`` epochs (cosine over them). ``--cut blocks.4`` trains the
  last two stages (blocks.5 too: more compute per step).
* ``--mode finetune``: the real pipeline, ``python -m tlx fit`` with
  configs/domain_adaptation/{office31,objectives/<method>}.yaml and ``--trainer.max_steps``;
  the whole network trains.

The methods are the fragments in configs/domain_adaptation/objectives/ (a new objective is picked
up by adding its fragment), each objective built as its fragment says.

Every method gets the same seeds, steps, batch size and optimiser. Two accuracies are printed, on
all target images: at the last step, and at the validation (every ``--val-every`` steps) with the
highest soft neighbourhood density of the target predictions (``val/snd``,
:mod:`tlx.domain_adaptation.selection`): a checkpoint chosen without target labels. The target's
labels serve only to print accuracy; nothing is chosen by them.

    nice -n 10 python scripts/domain_adaptation_report.py --tasks a2w w2a --seeds 0 1 2
    python scripts/domain_adaptation_report.py --data-root /data/office31   # all six tasks with dslr
    python scripts/domain_adaptation_report.py --mode top_stages --tasks a2w w2a --seeds 0 1 2  # CPU, last block
    python scripts/domain_adaptation_report.py --mode finetune --tasks a2w w2a --steps 2000  # GPU
"""

from __future__ import annotations

import argparse
import functools
import itertools
import logging
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch import Callback, LightningDataModule, Trainer, seed_everything
from lightning.pytorch.utilities import CombinedLoader
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tlx.backbones import create_backbone  # noqa: E402
from tlx.backbones.base import Backbone  # noqa: E402
from tlx.data.datasets import LabelledImages  # noqa: E402
from tlx.data.folders import files_digest, scan_class_folders  # noqa: E402
from tlx.data.transforms import eval_transform, train_transform  # noqa: E402
from tlx.domain_adaptation.model import DomainAdaptationClassifier  # noqa: E402
from tlx.domain_adaptation.objectives import Objective  # noqa: E402
from tlx.errors import DataError  # noqa: E402
from tlx.features import extract_features  # noqa: E402
from tlx.features.digest import content_key, weights_digest  # noqa: E402
from tlx.features.loaders import feature_loader  # noqa: E402
from tlx.options import RULES  # noqa: E402
from tlx.preprocessing import Preprocessing  # noqa: E402

from scripts.fragments import OBJECTIVES, fragments, instantiate, read  # noqa: E402

OFFICE31 = (REPO / ".." / "shared" / "data" / "office31").resolve()
METHODS = fragments(OBJECTIVES)  # name -> its fragment
BASE = OBJECTIVES.parent / "office31.yaml"
TOP_STRATEGY = OBJECTIVES.parent / "top_stages_strategy.yaml"
# top_stages mode's default cut and extraction precision: the CLI fragment's for the same recipe,
# so the two cannot drift
LAST_BLOCK_CACHE = read(OBJECTIVES.parent / "last_block.yaml", "trainer", "callbacks+")[0]["init_args"]
LAST_BLOCK_CUT = LAST_BLOCK_CACHE["cut"]
PROBE = "logistic_probe"


# ---- domains and tasks -----------------------------------------------------------------------
def find_domains(root: Path) -> list[str]:
    """The sub-folders of ``root`` that hold class folders, sorted."""
    if not root.is_dir():
        raise DataError(f"--data-root {str(root)!r} is not a folder: point it at a folder of domains.")
    domains = sorted(p.name for p in root.iterdir()
                     if p.is_dir() and not p.name.startswith(".") and any(c.is_dir() for c in p.iterdir()))
    if len(domains) < 2:
        raise DataError(f"--data-root {str(root)!r} holds {len(domains)} domain(s) ({', '.join(domains) or 'none'}): "
                        "a task needs two sub-folders of class folders (e.g. amazon/, webcam/).")
    return domains


def task_names(domains: list[str]) -> dict[str, tuple[str, str]]:
    """Every ordered pair of domains, named by first letters when they differ (``a2w``), else in full."""
    short = len({d[0] for d in domains}) == len(domains)
    name = (lambda d: d[0]) if short else (lambda d: d)
    return {f"{name(s)}2{name(t)}": (s, t) for s, t in itertools.permutations(domains, 2)}


# ---- features mode ---------------------------------------------------------------------------
def cached_features(domain: str, args) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Pooled features of every image of ``domain`` (centre crop), computed once per content key."""
    with torch.random.fork_rng(devices=[]):  # building (or loading) them seeds torch: not the caller's stream
        return _features(args.data_root / domain, args.backbone, args.weights, args.image_size, args.cache)


def training_views(domain: str, args) -> torch.Tensor:
    """``(N, 1 + views, D)``: the centre crop's features and ``--views`` random training views' (the
    data module's augmentation: office31.yaml's crop scale, flip) of every image of ``domain``."""
    # The first call of a process extracts or loads them, seeding torch: a run's random stream must not
    # depend on whether it was the first (seed 0 of the first method gave A->W 90.9 instead of 92.1).
    with torch.random.fork_rng(devices=[]):
        return _views(args.data_root / domain, args.backbone, args.weights, args.image_size, args.cache, args.views)


def frozen_backbone(spec: str, weights: str | None, size: int) -> tuple[nn.Module, Preprocessing]:
    """The backbone in eval mode and its preprocessing at ``size`` px (crop = 0.875 of the resize)."""
    torch.manual_seed(0)  # without pretrained weights: the same random network for every domain
    backbone = create_backbone(spec, weights=weights).eval()
    base = backbone.preprocessing
    return backbone, Preprocessing(size, int(size / 0.875), base.interpolation, base.mean, base.std)


@functools.cache  # once per process: every method and seed reads the same tensors
def _features(folder: Path, spec: str, weights: str | None, size: int, cache: Path):
    backbone, cfg = frozen_backbone(spec, weights, size)
    domain = folder.name
    scan = scan_class_folders(folder, domain)
    key = content_key(weights=weights_digest(backbone), files=files_digest(scan.samples), preprocessing=cfg.to_dict())
    path = cache / f"{domain}_{key}.pt"
    if path.is_file():
        d = torch.load(path, weights_only=True)
        return d["features"], d["labels"], d["classes"]
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


@functools.cache  # once per process, centre crop included: every method and seed draws from the same tensor
def _views(folder: Path, spec: str, weights: str | None, size: int, cache: Path, views: int) -> torch.Tensor:
    centre, _, _ = _features(folder, spec, weights, size, cache)
    backbone, cfg = frozen_backbone(spec, weights, size)  # seeds torch: the same random views on every run
    scale = tuple(read(BASE, "data", "init_args")["crop_scale"])
    data = LabelledImages(scan_class_folders(folder, folder.name).samples, train_transform(cfg, scale=scale),
                          cfg.resize_size)
    stats: dict = {}
    # channels-last: about 1.8x faster on a CPU, the same views up to float rounding
    feats, _ = extract_features(backbone, data, views=views, precision="32-true", cache_dir=cache,
                                num_workers=1, stats=stats, channels_last=True)
    if stats["status"] == "computed":
        print(f"  {views} training views of {folder.name} ({len(data)} images, {size} px): {stats['seconds']:.0f} s",
              flush=True)
    return torch.cat([centre[:, None], feats if views > 1 else feats[:, None]], dim=1)


class FeatureDomains(LightningDataModule):
    """Cached features in the shapes DomainAdaptationDataModule gives: source (x, y), target
    (x, index) for training; target (x, y) for validation. With ``views`` (``(N, V, D)`` training
    features of each domain), every training draw takes one of an image's V views at random."""

    def __init__(self, source, target, batch_size: int, views: tuple[torch.Tensor, torch.Tensor] | None = None):
        super().__init__()
        self.source, self.target, self.batch_size, self.views = source, target, batch_size, views

    def train_dataloader(self):
        (xs, ys), (xt, _) = self.source, self.target
        if self.views is not None:  # without views, the loaders below: --views 0 keeps its earlier figures
            vs, vt = self.views
            return CombinedLoader({"source": feature_loader(vs, ys, self.batch_size, train=True, views=True),
                                   "target": feature_loader(vt, torch.arange(len(xt)), self.batch_size, train=True,
                                                            views=True)}, mode="max_size_cycle")
        loaders = {
            "source": DataLoader(TensorDataset(xs, ys), self.batch_size, shuffle=True, drop_last=True),
            "target": DataLoader(TensorDataset(xt, torch.arange(len(xt))), self.batch_size, shuffle=True,
                                 drop_last=True),
        }
        return CombinedLoader(loaders, mode="max_size_cycle")

    def val_dataloader(self):
        return DataLoader(TensorDataset(*self.target), 256)


class Validations(Callback):
    """Step, accuracy and the label-free criteria of every validation of a fit."""

    def __init__(self):
        self.rows: list[dict[str, float]] = []

    def on_validation_end(self, trainer, pl_module):  # after the model's own epoch-end logging
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        self.rows.append({"step": trainer.global_step, "acc": float(m["val/acc"]), "snd": float(m["val/snd"])})


def outcome(rows: list[dict[str, float]]) -> dict[str, float]:
    """Accuracy at the last validation and at the one with the highest SND (the first, on ties)."""
    chosen = max(rows, key=lambda r: r["snd"])
    return {"final": rows[-1]["acc"], "selected": chosen["acc"], "selected_step": chosen["step"]}


def logistic_probe(xs: torch.Tensor, ys: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor) -> float:
    """Multinomial logistic regression on the source features, L-BFGS to convergence, L2 as
    scikit-learn's default (C=1: ``||W||^2 / (2 n)`` beside the mean cross-entropy); target accuracy."""
    torch.manual_seed(0)
    lin = nn.Linear(xs.shape[1], int(ys.max()) + 1)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1, max_iter=500, history_size=10, line_search_fn="strong_wolfe")
    l2 = 0.5 / len(xs)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(xs), ys) + l2 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float((lin(xt).argmax(1) == yt).float().mean())


def run_features(task: tuple[str, str], method: str, seed: int, args) -> dict[str, float]:
    xs, ys, classes = cached_features(task[0], args)
    xt, yt, _ = cached_features(task[1], args)
    if method == PROBE:
        acc = logistic_probe(xs, ys, xt, yt)
        return {"final": acc, "selected": acc, "selected_step": 0}
    views = (training_views(task[0], args), training_views(task[1], args)) if args.views else None
    seed_everything(seed, verbose=False)
    model = DomainAdaptationClassifier(
        backbone=args.backbone, weights=None, class_names=classes, label_smoothing=args.label_smoothing,
        objective=instantiate(read(METHODS[method], "model", "init_args", "objective"), Objective),
        optimizer=lambda p: torch.optim.SGD(p, lr=args.lr, momentum=0.9, weight_decay=5e-4, nesterov=True),
        lr_scheduler=None,
    )
    # The frozen backbone ran once, above: here it is the identity over its cached output.
    model.backbone = Backbone(nn.Identity(), xs.shape[1], model.preprocessing, f"{args.backbone} (cached)")
    validations = Validations()
    trainer = Trainer(
        max_steps=args.steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        val_check_interval=min(args.val_every, args.steps), check_val_every_n_epoch=None, callbacks=[validations],
    )
    data = FeatureDomains((xs, ys), (xt, yt), args.batch_size, views)
    trainer.fit(model, data)
    if not validations.rows or validations.rows[-1]["step"] != trainer.global_step:  # the last step's model too
        trainer.validate(model, data, verbose=False)
    return outcome(validations.rows)


# ---- finetune / top_stages modes -------------------------------------------------------------
def top_stages_fragment(cache_dir: Path, runs: Path, cut: str | None = None,
                        extract_precision: str | None = None) -> Path:
    """configs/speed/top_stages.yaml with its cache on disk, so every method and seed of a task
    reads the activations the first run computed (the cache is keyed by content); ``cut``
    replaces its cut point, ``extract_precision`` the extraction's precision (FeatureCache's)."""
    fragment = yaml.safe_load((REPO / "configs" / "speed" / "top_stages.yaml").read_text())
    for callback in fragment["trainer"]["callbacks+"]:
        callback["init_args"]["cache_dir"] = str(cache_dir.resolve())
        if cut:
            callback["init_args"]["cut"] = cut
        if extract_precision:
            callback["init_args"]["extract_precision"] = extract_precision
    runs.mkdir(parents=True, exist_ok=True)
    path = runs / "top_stages_cached.yaml"
    path.write_text(yaml.safe_dump(fragment))
    return path


def run_finetune(task: tuple[str, str], method: str, seed: int, args) -> dict[str, float]:
    from tlx.cli import TLXCLI

    # the base experiment and the objective, two fragments stacked (+ the partial cache); the task as the two roots
    configs = [BASE, METHODS[method]]
    budget = [f"--trainer.max_steps={args.steps}"]
    if args.mode == "top_stages":
        configs.append(top_stages_fragment(args.cache / "top_stages", args.runs, args.cut, args.extract_precision))
        configs += [args.top_strategy] if args.top_strategy else []
        budget = [f"--trainer.max_epochs={args.epochs}", f"--model.init_args.lr_scheduler.init_args.T_max={args.epochs}"]
    configs += args.config  # e.g. a fine-tuning strategy for the part that trains
    source, target = (args.data_root / d for d in task)
    t0 = time.time()
    cli = TLXCLI(args=[
        *(a for config in configs for a in ("--config", str(config))),
        f"--data.init_args.source_root={source}", f"--data.init_args.target_root={target}",
        f"--seed_everything={seed}", *budget,
        *([f"--model.init_args.label_smoothing={args.label_smoothing}"] if args.label_smoothing is not None else []),
        f"--trainer.default_root_dir={args.runs}/{args.mode}/{task[0]}2{task[1]}_{method}_{seed}",
        "--trainer.enable_progress_bar=false", *(["--trainer.precision=bf16-mixed"] if args.bf16 else []),
        # best.ckpt: the validation with the highest val/snd (office31.yaml itself keeps the last)
        "--checkpoint.monitor=val/snd", "--checkpoint.mode=max",
    ], run=False)
    # The fit's own validations give both figures: validating again after it (the last model, then
    # best.ckpt) took 2 x 55 s of W->A's 20-minute budget, over 2817 target images, for the same numbers.
    validations = Validations()
    cli.trainer.callbacks.append(validations)
    cli.trainer.fit(cli.model, cli.datamodule)
    if not validations.rows or validations.rows[-1]["step"] != cli.trainer.global_step:  # the last model too
        cli.trainer.validate(cli.model, cli.datamodule, verbose=False)
    wall = time.time() - t0
    return {**outcome(validations.rows), "wall_s": wall, "steps": cli.trainer.global_step}


# ---- the tables ------------------------------------------------------------------------------
def cell(values: list[float]) -> str:
    sd = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.1f}{sd}"


def seed_values(runs: list[dict[str, float]], key: str) -> str:
    """Each seed's accuracy, in the order of --seeds (the mean and spread alone hide an outlier)."""
    return "(" + ", ".join(f"{100 * r[key]:.1f}" for r in runs) + ")" if len(runs) > 1 else ""


def print_table(title: str, key: str, tasks: list[str], methods: list[str], results: dict) -> None:
    print(f"\n{title}\n")
    print("| method | " + " | ".join(tasks) + " | " + " | ".join(f"{t} gain over source-only" for t in tasks) + " |")
    print("|---" * (2 * len(tasks) + 1) + "|")
    for method in methods:
        accs = [[100.0 * r[key] for r in results[t, method]] for t in tasks]
        gains = []
        for t, a in zip(tasks, accs):
            base = results.get((t, "source_only"))
            gains.append("" if base is None or method == "source_only"
                         else f"{statistics.mean(a) - statistics.mean(100.0 * r[key] for r in base):+.1f}")
        print(f"| {method} | " + " | ".join(cell(a) for a in accs) + " | " + " | ".join(gains) + " |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["features", "top_stages", "finetune"], default="features")
    p.add_argument("--data-root", type=Path, default=OFFICE31, help="a folder of domains, each of class folders")
    p.add_argument("--tasks", nargs="+", help="e.g. a2w w2a (default: every pair of the domains present)")
    p.add_argument("--methods", nargs="+", choices=[PROBE, *METHODS], default=[PROBE, *METHODS],
                   help=f"objective fragments, and {PROBE} (features mode)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--steps", type=int, default=1000, help="optimisation steps per run")
    p.add_argument("--epochs", type=int, default=12, help="top_stages mode: epochs (cosine over them)")
    p.add_argument("--val-every", type=int, default=100, help="steps between validations (features mode)")
    p.add_argument("--batch-size", type=int, default=32, help="per domain (features mode)")
    p.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (features mode)")
    p.add_argument("--label-smoothing", type=float,
                   help="label smoothing of the source cross-entropy (SHOT trains its source model with 0.1); "
                        "default: the recipe's, model.init_args.label_smoothing of office31.yaml (0 when unset)")
    p.add_argument("--image-size", type=int, default=224, help="centre crop for the cached features")
    p.add_argument("--views", type=int, default=None,
                   help="features mode: random training views (office31.yaml's crop scale, flip) cached per image "
                        "of both domains besides the centre crop; each draw trains on one of them (default 4, as "
                        "configs/speed/top_stages.yaml caches; 0: the centre crop only)")
    p.add_argument("--backbone", default="efficientnet_lite0", help="features mode")
    p.add_argument("--weights", default="DEFAULT", help="features mode; 'none': random initialisation")
    p.add_argument("--cache", type=Path, default=Path("/tmp/tlx_da_features"))
    p.add_argument("--runs", type=Path, default=Path("runs/domain_adaptation"), help="finetune mode logs")
    p.add_argument("--bf16", action="store_true", help="finetune mode: bf16-mixed precision")
    p.add_argument("--cut", help=f"top_stages mode: the frozen, cached bottom ends here (default {LAST_BLOCK_CUT}, "
                                 "configs/domain_adaptation/last_block.yaml's; configs/speed/top_stages.yaml's is blocks.4)")
    p.add_argument("--extract-precision", choices=["auto", "bf16", "32"],
                   help="top_stages mode: what the cached bottom is computed in (FeatureCache extract_precision; "
                        f"default {LAST_BLOCK_CACHE.get('extract_precision')}, last_block.yaml's; auto: bf16 where "
                        "the CPU has it natively, else fp32; 32: the live bottom's values bit for bit)")
    p.add_argument("--top-strategy", default=str(TOP_STRATEGY),
                   help="top_stages mode: the fine-tuning strategy fragment the top stages train with (default "
                        "%(default)s); 'none': at the head's learning rate, BatchNorm statistics from the batches")
    p.add_argument("--config", type=Path, action="append", default=[],
                   help="top_stages/finetune modes: a further config fragment stacked last (repeatable)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (0: torch's default); 1 is fastest for these small steps on a shared CPU")
    args = p.parse_args(argv)
    args.weights = None if args.weights.lower() == "none" else args.weights
    all_tasks = task_names(find_domains(args.data_root))
    tasks = args.tasks or list(all_tasks)
    unknown = [t for t in tasks if t not in all_tasks]
    if unknown:
        p.error(f"--tasks {' '.join(unknown)}: the domains in {args.data_root} give {' '.join(all_tasks)}")
    methods = [m for m in args.methods if not (m == PROBE and args.mode != "features")]
    args.top_strategy = None if args.top_strategy.lower() == "none" else Path(args.top_strategy)
    for option, fragment in [("--top-strategy", args.top_strategy), *(("--config", c) for c in args.config)]:
        if fragment and not fragment.is_file():
            p.error(f"{option} {fragment}: no such file")
    if args.views is not None and (args.views < 0 or args.mode != "features"):
        p.error(f"--views {args.views}: features mode only, and >= 0 (top_stages caches its own 4 views)")
    if args.views is None:
        args.views = 4 if args.mode == "features" else 0
    if args.cut is not None and args.mode != "top_stages":
        p.error(f"--cut {args.cut}: top_stages mode only")
    args.cut = args.cut or LAST_BLOCK_CUT
    if args.extract_precision is not None and args.mode != "top_stages":
        p.error(f"--extract-precision {args.extract_precision}: top_stages mode only")
    args.extract_precision = args.extract_precision or LAST_BLOCK_CACHE.get("extract_precision")
    if args.config and args.mode == "features":
        p.error("--config: top_stages/finetune modes only (features mode runs no config)")
    holds, valid = RULES["label_smoothing"]
    if args.label_smoothing is not None and not holds(args.label_smoothing):
        p.error(f"--label-smoothing must be {valid}, got {args.label_smoothing}")
    if args.label_smoothing is None and args.mode == "features":  # the pipeline modes read office31.yaml themselves
        args.label_smoothing = read(BASE, "model", "init_args").get("label_smoothing", 0.0)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    run = run_features if args.mode == "features" else run_finetune
    if args.mode == "features":
        budget = (f"frozen {args.backbone} features ({args.image_size} px"
                  f"{f', centre + {args.views} random views' if args.views else ''}), {args.steps} steps, "
                  f"batch {args.batch_size}+{args.batch_size}, SGD lr {args.lr}, label smoothing {args.label_smoothing}")
    elif args.mode == "top_stages":
        budget = (f"top stages (above {args.cut}) + bottleneck + head trained on the partial cache "
                  f"(configs/domain_adaptation/office31 + objective + configs/speed/top_stages"
                  f"{''.join(f' + {c}' for c in [args.top_strategy, *args.config] if c)}), {args.epochs} epochs")
    else:
        budget = f"full fine-tuning with configs/domain_adaptation/ (office31 + objective), {args.steps} steps"
    print(f"Target accuracy (%), {args.data_root}, {budget}, seeds {args.seeds}", flush=True)
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for task in tasks:
        for method in methods:
            t0 = time.time()
            runs = []
            for seed in [0] if method == PROBE else args.seeds:
                t1 = time.time()
                runs.append(run(all_tasks[task], method, seed, args))
                if len(args.seeds) > 1 and method != PROBE:  # progress of a long report, seed by seed
                    print(f"    {task} {method} seed {seed}: last {100 * runs[-1]['final']:.1f}, chosen by SND "
                          f"{100 * runs[-1]['selected']:.1f} ({time.time() - t1:.0f} s)", flush=True)
            results[task, method] = runs
            print(f"  {task} {method:<24} last {cell([100 * r['final'] for r in runs]):>11} {seed_values(runs, 'final')}  "
                  f"chosen by SND {cell([100 * r['selected'] for r in runs]):>11} {seed_values(runs, 'selected')} "
                  f"(steps {[int(r['selected_step']) for r in runs]})  ({time.time() - t0:.0f} s"
                  + (f"; per run {[round(r['wall_s']) for r in runs]} s" if "wall_s" in runs[0] else "") + ")", flush=True)
    print_table("At the last step:", "final", tasks, methods, results)
    print_table("At the validation with the highest val/snd (no target label used to choose):", "selected", tasks,
                methods, results)


if __name__ == "__main__":
    main()
