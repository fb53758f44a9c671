"""Do tlx's transferability scores predict which backbone transfers best? Scores vs real training.

For 6 target tasks built from ../shared/data on their full images (hymenoptera's given split;
Office-31 amazon and webcam, each split 60/40 per class, seeded; webcam 5-shot, every other webcam
image validating; two seeded 10-class subsets of amazon's split) and 4 offline backbones
(EfficientNet-Lite0/1/2, torchvision MobileNetV2), this script

1. scores every backbone on every task's training images with ``tlx.transferability`` (the
   same network wrapper, extraction and metrics as ``python -m tlx rank``), timing it;
2. measures the ground truth on the task's validation images, two ways:
   * linear probe: a multinomial logistic regression on the pooled features (full batch,
     L-BFGS, weight decay 1e-3), the classic "frozen features" accuracy;
   * short fine-tuning, top stage only (compute here is 2 shared cores): the last 1x1
     convolution to 1280 channels (+ its BatchNorm affine parameters, running statistics
     frozen) and a new linear head are trained on the cached input of that stage, AdamW
     (lr 1e-3 head, 1e-4 stage), ``--ft_steps`` 320 steps of batch ``--ft_batch`` 16, random
     horizontal flips of the cached maps; averaged over the ``--ft_seeds`` 0 1 2 (the seed draws
     the head's start, the batches and the flips). The same recipe for every backbone and task.
     160 steps, not 40: at 40 the accuracy was still climbing. ``--ft_curve`` records it along
     the way; Lite0, seed 0 (``--backbones efficientnet_lite0 --ft_seeds 0 --ft_curve 40 80
     160 320 640``), at 40 / 160 / 320 / 640 steps: amazon 72.1 / 81.9 / 84.9 / 85.6, webcam
     90.9 / 98.1 / 99.1 / 99.4, the other four tasks flat from 160 on (within 1 point). 320 would
     gain 1-3 points on amazon and webcam but cost twice the CPU this report was measured on;
3. prints each metric's weighted Kendall tau (scipy.stats.weightedtau, as the
   Transfer-Learning-Library reports it) and Pearson r against both ground truths, per task and
   averaged, how noisy each task's ground truth is (the seeds' spread, the Wilson interval of n
   validation images) against how far apart the backbones are, and the wall time of scoring
   against the fine-tunings it replaces.

Every (image set, backbone) extraction is cached under ``--cache_dir`` (with the seconds it took)
and every task's results in ``--out`` (JSON), so a stopped run resumes where it was.
``--max_per_class`` caps every split for a quick run.

    PYTHONPATH=. TORCH_HOME=../shared/weights nice -n 5 python scripts/transferability_report.py
    python scripts/transferability_report.py --print scripts/transferability_report.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # before numpy/torch load BLAS:
    os.environ.setdefault(_var, "1")  # one thread each is the fastest on a shared 2-core machine

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from scipy.stats import pearsonr, weightedtau  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tlx.backbones import Backbone  # noqa: E402
from tlx.data.datasets import LabelledImages  # noqa: E402
from tlx.data.folders import Sample, files_digest, scan_class_folders, stratified_split  # noqa: E402
from tlx.data.transforms import eval_transform  # noqa: E402
from tlx.features import extract_features  # noqa: E402
from tlx.metrics import wilson_half_width  # noqa: E402
from tlx.transferability import get_metric  # noqa: E402
from tlx.transferability.extract import ScoringNetwork  # noqa: E402
from tlx.transferability.ranking import build_backbones, per_class_subset  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
BACKBONES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "torchvision:mobilenet_v2@IMAGENET1K_V1"]
METRICS = ["logme", "leep", "nce", "hscore", "knn"]


# ---- tasks ---------------------------------------------------------------------------------------
Task = tuple[str, list[int], list[int], "np.ndarray | None"]  # image set, train/val indices into it, label map


def tasks(args) -> tuple[dict[str, list[Sample]], dict[str, Task]]:
    """The three image sets (each extracted once per backbone) and the 6 tasks as indices into them.

    hymenoptera: its given train/val split; amazon, webcam: a seeded stratified split
    (``--val_fraction`` held out per class); webcam 5-shot: 5 seeded images per class, every other
    webcam image validates; two seeded 10-class subsets of amazon's split. ``--max_per_class``
    caps each split per class (seeded) for a quick run; 0, the default, keeps every image.
    """
    hym = DATA / "hymenoptera"
    hym_train, hym_val = (scan_class_folders(hym / s, s).samples for s in ("train", "val"))
    sets = {"hymenoptera": hym_train + hym_val,
            **{d: scan_class_folders(DATA / "office31" / d, d).samples for d in ("webcam", "amazon")}}
    position = {name: {s: i for i, s in enumerate(samples)} for name, samples in sets.items()}

    def task(set_name: str, train: list[Sample], val: list[Sample], remap=None) -> Task:
        cap = args.max_per_class or None
        return (set_name, [position[set_name][s] for s in per_class_subset(train, cap)],
                [position[set_name][s] for s in per_class_subset(val, cap)], remap)

    out = {"hymenoptera": task("hymenoptera", hym_train, hym_val)}
    splits = {d: stratified_split(sets[d], args.val_fraction, 0) for d in ("amazon", "webcam")}
    for domain in ("amazon", "webcam"):
        out[domain] = task(domain, *splits[domain])
    shot = per_class_subset(sets["webcam"], 5, 0)
    out["webcam-5shot"] = task("webcam", shot, sorted(set(sets["webcam"]) - set(shot)))
    train, val = splits["amazon"]
    classes = sorted({y for _, y in train})
    for seed in (1, 2):
        chosen = sorted(random.Random(seed).sample(classes, 10))
        remap = np.full(len(classes), -1)
        remap[chosen] = np.arange(10)
        out[f"amazon-10cls-s{seed}"] = task("amazon", [s for s in train if s[1] in chosen],
                                            [s for s in val if s[1] in chosen], remap)
    return sets, out


# ---- one pass per (image set, backbone): features, source softmax, and the top stage's input --------
def top_stage(backbone: Backbone) -> tuple[nn.Module, nn.Module]:
    """(the module whose input is cached, the trainable top stage: 1x1 conv, BN, act, pool)."""
    m = backbone.model
    if hasattr(m, "conv_head"):  # timm EfficientNet(-Lite): conv_head -> bn2 (BN + ReLU6) -> pool
        return m.conv_head, nn.Sequential(m.conv_head, m.bn2, m.global_pool)
    if hasattr(m, "features"):  # torchvision MobileNetV2: features[-1] is Conv-BN-ReLU6 to 1280
        return m.features[-1], nn.Sequential(m.features[-1], nn.AdaptiveAvgPool2d(1), nn.Flatten())
    raise SystemExit(f"No top stage known for {backbone.name}.")


class WithStageInput(nn.Module):
    """ScoringNetwork's output followed by the flattened input of the top stage (one pass for all)."""

    def __init__(self, scoring: ScoringNetwork, cut: nn.Module):
        super().__init__()
        self.scoring = scoring
        self.maps: torch.Tensor | None = None
        self.hook = cut.register_forward_pre_hook(lambda _m, inputs: setattr(self, "maps", inputs[0]))

    def forward(self, x):
        out = self.scoring(x)
        self.shape = tuple(self.maps.shape[1:])
        return torch.cat([out, self.maps.flatten(1).float()], dim=1)


def extract(backbone: Backbone, samples: list[Sample], cache_dir: Path):
    """(pooled features, source softmax or None, top-stage input maps, labels, extraction seconds).

    The seconds are those of the pass that computed the cache file (kept beside it in
    ``seconds.json``), so a resumed run still reports what extraction costs.
    """
    scoring = ScoringNetwork(backbone)
    cut, _ = top_stage(backbone)
    net = WithStageInput(scoring, cut).eval()
    cfg = backbone.preprocessing
    with torch.inference_mode():  # the maps' shape, for splitting the cached rows
        net(torch.zeros(1, 3, cfg.input_size, cfg.input_size))
    shape = net.shape
    dataset = LabelledImages(samples, eval_transform(cfg), cfg.resize_size)
    key = {"files": files_digest(samples), "preprocessing": cfg.to_dict(), "report": 2}
    stats: dict = {}
    out, labels = extract_features(net, dataset, batch_size=32, precision="32-true", cache_dir=cache_dir,
                                   cache_key=key, stats=stats, channels_last=True)
    net.hook.remove()  # the backbone is copied for fine-tuning later: without this hook
    timings_file = cache_dir / "seconds.json"
    timings = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    if stats["status"] == "computed":
        timings[stats["key"]] = stats["seconds"]
        timings_file.write_text(json.dumps(timings, indent=1))
    n_maps = int(np.prod(shape))
    features, probs = scoring.split(out[:, :-n_maps])
    maps = out[:, -n_maps:].reshape(-1, *shape)
    return features, probs, maps, labels, timings.get(stats["key"], stats["seconds"])


# ---- ground truth ------------------------------------------------------------------------------
def linear_probe(train_x, train_y, val_x, val_y, classes: int) -> float:
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    xs, vs = (train_x - mean) / std, (val_x - mean) / std
    torch.manual_seed(0)  # the start only: the objective is convex, but a run is reproducible to the digit
    lin = nn.Linear(xs.shape[1], classes)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1, max_iter=200, history_size=10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(xs), train_y) + 1e-3 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float((lin(vs).argmax(1) == val_y).float().mean())


def finetune_top(backbone: Backbone, train_maps, train_y, val_maps, val_y, classes: int, eval_at: list[int],
                 batch: int, seed: int) -> list[float]:
    """Validation accuracy after each number of steps in ``eval_at`` of one seeded run (constant
    learning rates, so the accuracy at 40 steps of a 320-step run is that of a 40-step run)."""
    import copy

    torch.manual_seed(seed)
    _, stage = top_stage(copy.deepcopy(backbone))
    head = nn.Linear(backbone.num_features, classes)
    stage.eval()  # BN running statistics stay the pretrained ones (batches of 32 are too noisy)
    opt = torch.optim.AdamW([{"params": stage.parameters(), "lr": 1e-4}, {"params": head.parameters(), "lr": 1e-3}],
                            weight_decay=1e-4)
    n, accs = len(train_y), []
    for step in range(1, max(eval_at) + 1):
        idx = torch.randint(n, (min(batch, n),))
        x = train_maps[idx].float()
        flip = torch.rand(len(idx)) < 0.5
        x[flip] = x[flip].flip(-1)
        loss = F.cross_entropy(head(stage(x).flatten(1)), train_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step in eval_at:
            with torch.no_grad():
                preds = torch.cat([head(stage(val_maps[i:i + 64].float()).flatten(1)).argmax(1)
                                   for i in range(0, len(val_y), 64)])
            accs.append(float((preds == val_y).float().mean()))
    return accs


# ---- report ------------------------------------------------------------------------------------
def correlations(results: dict, metric: str, truth: str) -> tuple[float, float]:
    scores = [results[b]["scores"][metric] for b in results]
    accs = [results[b][truth] for b in results]
    if any(s is None for s in scores) or np.std(scores) == 0 or np.std(accs) == 0:
        return float("nan"), float("nan")
    return float(weightedtau(scores, accs).statistic), float(pearsonr(scores, accs).statistic)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", nargs="+", default=BACKBONES)
    p.add_argument("--val_fraction", type=float, default=0.4, help="held out per class of amazon and webcam")
    p.add_argument("--max_per_class", type=int, default=0, help="cap per class and split, seeded (0: all images)")
    p.add_argument("--ft_steps", type=int, default=160)
    p.add_argument("--ft_batch", type=int, default=16)
    p.add_argument("--ft_curve", type=int, nargs="*", default=[],
                   help="also record the fine-tuned accuracy after these numbers of steps (is it still climbing?)")
    p.add_argument("--ft_seeds", type=int, nargs="+", default=[0, 1, 2], help="the fine-tuning's seeds, averaged")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared machine)")
    p.add_argument("--sets", nargs="+", default=["hymenoptera", "webcam", "amazon"],
                   help="image sets to run (their tasks), e.g. one per process")
    p.add_argument("--extract_only", action="store_true", help="fill the feature cache, train nothing")
    p.add_argument("--cache_dir", default="runs/transferability/features")
    p.add_argument("--out", default="runs/transferability/report.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out_path, cache_dir = Path(args.out), Path(args.cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    report = json.loads(out_path.read_text()) if out_path.is_file() else {}
    sets, task_list = tasks(args)
    eval_at = sorted({args.ft_steps, *args.ft_curve})
    recipe = {"steps": args.ft_steps, "batch": args.ft_batch, "seeds": args.ft_seeds, "curve": eval_at}
    backbones = build_backbones(args.backbones)
    # Image set by image set, every backbone in turn: a stopped run leaves whole tasks to correlate.
    for set_name in args.sets:
        samples = sets[set_name]
        for spec, backbone in backbones.items():
            todo = [t for t, v in task_list.items() if v[0] == set_name
                    and report.get(t, {}).get(spec, {}).get("recipe") != recipe]
            if not todo:
                continue
            # every task of the set, not only those to do, so that a resumed run hits the same cache file
            used = sorted({i for v in task_list.values() if v[0] == set_name for i in v[1] + v[2]})
            row = {i: r for r, i in enumerate(used)}  # set index -> row of the extraction
            features, probs, maps, labels, seconds = extract(backbone, [samples[i] for i in used], cache_dir)
            print(f"{set_name:12s} {spec:40s} extracted {len(used)} images in {seconds:.0f} s", flush=True)
            if args.extract_only:
                continue
            for task in todo:
                _, ti, vi, remap = task_list[task]
                ti, vi = torch.tensor([row[i] for i in ti]), torch.tensor([row[i] for i in vi])
                ytr, yva = labels[ti], labels[vi]
                if remap is not None:
                    ytr, yva = torch.as_tensor(remap)[ytr], torch.as_tensor(remap)[yva]
                classes = int(ytr.max()) + 1
                start = time.perf_counter()
                scores = {}
                for m in METRICS:
                    metric = get_metric(m)
                    source = probs[ti] if metric.needs_source_classifier and probs is not None else features[ti]
                    scores[m] = None if probs is None and metric.needs_source_classifier else metric.score(source, ytr)
                score_s = time.perf_counter() - start
                probe = linear_probe(features[ti], ytr, features[vi], yva, classes)
                start = time.perf_counter()
                runs = [finetune_top(backbone, maps[ti], ytr, maps[vi], yva, classes, eval_at, args.ft_batch, seed)
                        for seed in args.ft_seeds]
                # one fine-tuning of --ft_steps (a longer --ft_curve run is scaled down to it)
                ft_s = (time.perf_counter() - start) / len(args.ft_seeds) * args.ft_steps / max(eval_at)
                fts = [r[eval_at.index(args.ft_steps)] for r in runs]
                curve = {str(k): float(np.mean([r[j] for r in runs])) for j, k in enumerate(eval_at)}
                report.setdefault(task, {})[spec] = {
                    "scores": scores, "probe_acc": probe, "finetune_acc": float(np.mean(fts)), "finetune_accs": fts,
                    "recipe": recipe, "finetune_curve": curve, "train_images": len(ti), "val_images": len(vi),
                    # Extraction time of this task's share of the pass (a task on a subset takes a share).
                    "rank_seconds": seconds * len(ti) / len(used) + score_s,
                    "extract_seconds": seconds * (len(ti) + len(vi)) / len(used), "finetune_seconds": ft_s,
                }
                print(f"{task:20s} {spec:40s} logme {scores['logme']:.3f} probe {probe:.3f} ft "
                      f"{' '.join(f'{a:.3f}' for a in fts)} ({ft_s:.0f} s each)", flush=True)
                out_path.parent.mkdir(parents=True, exist_ok=True)
                out_path.write_text(json.dumps(report, indent=1))
    if not args.extract_only:
        print_report(report)


def print_report(report: dict) -> None:
    complete = {t: r for t, r in report.items() if len(r) >= 2}
    if not complete:
        print("\nno task has two backbones yet: nothing to correlate")
        return
    for truth in ("finetune_acc", "probe_acc"):
        print(f"\nweighted Kendall tau / Pearson r of each metric vs {truth} ({len(next(iter(complete.values())))} backbones)")
        print(f"{'task':20s} " + " ".join(f"{m:>15s}" for m in METRICS))
        sums = {m: [] for m in METRICS}
        for task, results in complete.items():
            cells = []
            for m in METRICS:
                tau, r = correlations(results, m, truth)
                sums[m].append((tau, r))
                cells.append(f"{tau:+.2f} / {r:+.2f}".rjust(15))
            print(f"{task:20s} " + " ".join(cells))
        print(f"{'mean':20s} " + " ".join(
            f"{np.nanmean([t for t, _ in sums[m]]):+.2f} / {np.nanmean([r for _, r in sums[m]]):+.2f}".rjust(15)
            for m in METRICS))
    print("\naccuracy per task (fine-tuned top stage, mean over seeds / linear probe):")
    for task, results in complete.items():
        print(f"  {task:20s} " + "  ".join(f"{b.split(':')[-1]} {v['finetune_acc']:.3f}/{v['probe_acc']:.3f}"
                                            for b, v in results.items()))
    print_noise(complete)
    print_curve(complete)
    rank_s = sum(v["rank_seconds"] for r in complete.values() for v in r.values())
    ft_s = sum(v["finetune_seconds"] + v["extract_seconds"] for r in complete.values() for v in r.values())
    print(f"\nwall time: scoring (extraction of the training images + metrics) {rank_s:.0f} s; the top-stage "
          f"fine-tunings it replaces {ft_s:.0f} s (their feature extraction included; full fine-tuning costs far more)")


def print_noise(complete: dict) -> None:
    """Is the ground truth sharp enough to rank by? The backbones' spread against two noise scales."""
    print("\nnoise of the fine-tuned ground truth, in accuracy points: backbones' range (max - min of the "
          "seed means) vs\nthe seeds' std (mean over backbones) and the 95% Wilson half-width of one "
          "accuracy on n validation images")
    print(f"  {'task':20s} {'n val':>6s} {'backbones':>10s} {'seed std':>9s} {'Wilson':>7s}")
    for task, results in complete.items():
        accs = [v["finetune_acc"] for v in results.values()]
        n = next(iter(results.values()))["val_images"]
        seed_std = np.mean([np.std(v.get("finetune_accs", [v["finetune_acc"]])) for v in results.values()])
        print(f"  {task:20s} {n:6d} {100 * (max(accs) - min(accs)):10.1f} {100 * seed_std:9.1f} "
              f"{100 * wilson_half_width(float(np.mean(accs)), n):7.1f}")


def print_curve(complete: dict) -> None:
    """The fine-tuned accuracy (mean over seeds) after each recorded number of steps."""
    curves = {t: {b: v["finetune_curve"] for b, v in r.items() if len(v.get("finetune_curve", {})) > 1}
              for t, r in complete.items()}
    if not any(curves.values()):
        return
    print("\nfine-tuned accuracy (mean over seeds) after n steps:")
    for task, by_backbone in curves.items():
        for b, curve in by_backbone.items():
            print(f"  {task:20s} {b.split(':')[-1]:30s} " + "  ".join(f"{k}: {a:.3f}" for k, a in curve.items()))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--print":
        print_report(json.loads(Path(sys.argv[2] if len(sys.argv) > 2 else "runs/transferability/report.json").read_text()))
    else:
        main()
