"""Evidence for knowledge fusion (model soups, ensembles, WiSE-FT) and distillation, on 2 CPU cores.

    nice -n 5 python scripts/fusion_report.py             # both parts (about 15-25 min on a loaded machine)
    python scripts/fusion_report.py --part fusion --runs 6 --steps 500

Cheap ingredients (CPU budget): EfficientNet-Lite0 with ImageNet weights at ``--size`` px; the
network below its last stage is frozen and run once per image (its activations cached), and each
run fine-tunes the last stage (``blocks[6]``), the final 1x1 conv + BN and the linear head on those
cached activations (no augmentation: every epoch sees the same pixels; ``--aug_views K`` adds runs
on K random crops+flips of every training image, cached the same way). All runs start from the
same pretrained weights and the same linear-probe head (LP-FT), so their weights can be averaged.
BatchNorm follows the default recipe's policy on small data (``--bn_stats frozen``: eval mode,
pretrained running statistics, affine parameters trained), so every run and the probe share their
statistics, and tlx's rule (``tlx.fusion.recalibration_plan``) keeps them after averaging;
``--bn_batches N`` forces re-estimation. The other choice is printed beside it for comparison.

Part ``fusion`` (Office-31 amazon, seeded stratified split 60/20/20 into train / val / test):
``--runs`` fine-tuned runs (seeds x learning rates [x augmentation]) -> best single (chosen on val), uniform soup,
greedy soup (on val), logit ensemble, all on the test split and on webcam (distribution shift);
then the WiSE-FT alpha curve between the linear probe and one fine-tuned run.

Part ``distillation`` (Office-31 webcam, ``--shots`` per class for training, the rest for testing):
an EfficientNet-Lite2 teacher (last stage + head fine-tuned the same way, at ``--teacher_size``)
distils into the Lite0 student with each loss, against the student with cross-entropy alone,
same steps. ``--views`` random crops+flips of every training image are made once; the teacher
sees each view at its own size and normalisation (the same crop), and its outputs are cached.

Everything the script computes is cached under ``--cache_dir`` (activations) and written to
``--out`` (JSON with every number). Numbers are accuracies (%) on the named split.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms import v2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tlx.backbones import create_backbone  # noqa: E402
from tlx.data.folders import scan_class_folders  # noqa: E402
from tlx.data.images import load_rgb  # noqa: E402
from tlx.preprocessing import Preprocessing  # noqa: E402
from tlx.distillation import KD, RKD, SP, Attention, Hint, Outputs  # noqa: E402
from tlx.finetuning.bn_policy import apply_bn_policy  # noqa: E402
from tlx.fusion import (greedy_soup, interpolate_weights, recalibrate_batchnorm, recalibration_plan,  # noqa: E402
                        uniform_soup)
from tlx.fusion.bn_recalibration import DEFAULT_BATCHES  # noqa: E402

OFFICE = REPO / ".." / "shared" / "data" / "office31"


# ---- the frozen lower network and the trainable top -------------------------------------------
def lite(name: str, size: int) -> tuple[nn.Module, Preprocessing]:
    backbone = create_backbone(name)
    cfg = backbone.preprocessing
    cfg = Preprocessing(size, int(round(size / 0.875)), cfg.interpolation, cfg.mean, cfg.std)
    return backbone.model.eval(), cfg


def lower(net: nn.Module, x: Tensor) -> Tensor:
    return net.blocks[:-1](net.bn1(net.conv_stem(x)))


class Top(nn.Module):
    """Last stage + conv_head + bn2 + pooling + linear head: what each run trains."""

    def __init__(self, net: nn.Module, num_classes: int):
        super().__init__()
        import copy

        self.stage = copy.deepcopy(net.blocks[-1])
        self.conv_head, self.bn2 = copy.deepcopy(net.conv_head), copy.deepcopy(net.bn2)
        self.head = nn.Linear(net.num_features, num_classes)

    def outputs(self, a: Tensor) -> Outputs:
        fmap = self.stage(a)
        emb = self.bn2(self.conv_head(fmap)).mean(dim=(2, 3))
        return Outputs(self.head(emb), emb, fmap)

    def forward(self, a: Tensor) -> Tensor:
        return self.outputs(a).logits


@torch.no_grad()
def activations(net: nn.Module, images: list, cfg: Preprocessing, batch: int = 32) -> Tensor:
    tf = v2.Compose([v2.ToImage(), v2.Resize((cfg.input_size, cfg.input_size), antialias=True),
                     v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(cfg.mean), list(cfg.std))])
    out, t0 = [], time.time()
    for i in range(0, len(images), batch):
        out.append(lower(net, torch.stack([tf(im) for im in images[i:i + batch]])).half())
        if (i // batch) % 10 == 9:
            print(f"  {i + batch}/{len(images)} images ({time.time() - t0:.0f} s)", flush=True)
    return torch.cat(out)


def eval_images(paths: list[str], cfg: Preprocessing) -> list:
    """Resize + centre crop (tlx's evaluation preprocessing, without the tensor steps)."""
    crop = v2.Compose([v2.Resize(cfg.resize_size, antialias=True), v2.CenterCrop(cfg.input_size)])
    return [crop(load_rgb(p, cfg.resize_size)) for p in paths]


def cached(path: Path, make):
    if path.is_file():
        return torch.load(path, weights_only=True)
    value = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(value, path)
    return value


# ---- training and evaluation on cached activations ---------------------------------------------
@torch.no_grad()
def accuracy(model: nn.Module, a: Tensor, y: Tensor) -> float:
    model.eval()
    pred = torch.cat([model(a[i:i + 256].float()).argmax(1) for i in range(0, len(a), 256)])
    return 100.0 * float((pred == y).float().mean())


@torch.no_grad()
def logits_of(model: nn.Module, a: Tensor) -> Tensor:
    model.eval()
    return torch.cat([model(a[i:i + 256].float()) for i in range(0, len(a), 256)])


def linear_probe(emb: Tensor, y: Tensor, num_classes: int, steps: int = 300) -> nn.Linear:
    torch.manual_seed(0)
    head = nn.Linear(emb.shape[1], num_classes)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(head(emb), y).backward()
        opt.step()
    return head


def train_top(top: Top, a: Tensor, y: Tensor, steps: int, lr: float, seed: int, batch: int = 32,
              teacher: Outputs | None = None, losses: list | None = None, freeze_bn_stats: bool = False) -> Top:
    """AdamW + cosine, ``steps`` batches drawn from a seeded permutation; optional distillation.
    ``freeze_bn_stats``: BatchNorm in eval mode (pretrained running statistics, affine parameters
    still trained), the default recipe's policy on small data (tlx.recipes.lpft)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW([p for p in top.parameters()] + [p for m in (losses or []) for p in m.parameters()],
                            lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    order = torch.randperm(len(a), generator=g)
    pos = 0
    top.train()
    apply_bn_policy(top, freeze_bn_stats)
    for _ in range(steps):
        if pos + batch > len(order):
            order, pos = torch.randperm(len(a), generator=g), 0
        idx = order[pos:pos + batch]
        pos += batch
        out = top.outputs(a[idx].float())
        loss = F.cross_entropy(out.logits, y[idx])
        if losses:
            t = Outputs(teacher.logits[idx], teacher.embedding[idx], teacher.feature_map[idx].float())
            loss = loss + sum(term(out, t) for term in losses)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return top.eval()


def stratified(labels: list[int], fractions: tuple[float, ...], seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in fractions]
    for c in sorted(set(labels)):
        idx = rng.permutation([i for i, l in enumerate(labels) if l == c])
        bounds = np.cumsum([0] + [int(round(f * len(idx))) for f in fractions[:-1]] + [len(idx)])
        bounds[-1] = len(idx)
        for k in range(len(fractions)):
            parts[k] += idx[bounds[k]:bounds[k + 1]].tolist()
    return [sorted(p) for p in parts]


def row(*cells) -> str:
    return "| " + " | ".join(f"{c:.1f}" if isinstance(c, float) else str(c) for c in cells) + " |"


# ---- part 1: soups, ensemble, WiSE-FT -----------------------------------------------------------
def run_grid(k: int, lrs: list[float], augment: bool) -> dict:
    """Run ``k``'s hyperparameters: learning rates cycle fastest, then augmentation off / on
    (when there are augmented views), the seed is ``k`` (Wortsman et al. vary all three)."""
    return {"seed": k, "lr": lrs[k % len(lrs)], "augment": augment and (k // len(lrs)) % 2 == 1}


def fusion_part(args, results: dict) -> None:
    net, cfg = lite("efficientnet_lite0", args.size)
    amazon, webcam = scan_class_folders(OFFICE / "amazon"), scan_class_folders(OFFICE / "webcam")
    ya = torch.tensor([l for _, l in amazon.samples])
    yw = torch.tensor([l for _, l in webcam.samples])
    t0 = time.time()
    aa = cached(args.cache_dir / f"amazon_lite0_{args.size}.pt",
                lambda: activations(net, eval_images([p for p, _ in amazon.samples], cfg), cfg))
    aw = cached(args.cache_dir / f"webcam_lite0_{args.size}.pt",
                lambda: activations(net, eval_images([p for p, _ in webcam.samples], cfg), cfg))
    print(f"activations: amazon {tuple(aa.shape)}, webcam {tuple(aw.shape)} ({time.time() - t0:.0f} s)", flush=True)
    tr, va, te = (torch.tensor(i) for i in stratified(ya.tolist(), (0.6, 0.2, 0.2), seed=0))
    n = len(amazon.classes)
    if args.aug_views:  # random crops + flips of every training image, made once (split seed 0)
        t0 = time.time()
        a_aug = cached(args.cache_dir / f"amazon_train0_{args.aug_views}v_lite0_{args.size}.pt",
                       lambda: activations(net, views_of([amazon.samples[i][0] for i in tr.tolist()],
                                                         args.aug_views, seed=0), cfg))
        y_aug = ya[tr].repeat_interleave(args.aug_views)
        print(f"augmented views: {tuple(a_aug.shape)} ({time.time() - t0:.0f} s)", flush=True)

    base = Top(net, n)  # BatchNorm layers copied in eval mode: the probe sees the pretrained statistics
    with torch.no_grad():
        emb = base.outputs(aa[tr].float()).embedding
    base.head = linear_probe(emb, ya[tr], n)
    lp_state = {k: v.clone() for k, v in base.state_dict().items()}

    def evaluate_all(model: nn.Module) -> dict:
        return {"val": accuracy(model, aa[va], ya[va]), "test": accuracy(model, aa[te], ya[te]),
                "webcam": accuracy(model, aw, yw)}

    def fused(state: dict, bn_batches: int) -> Top:
        """The averaged weights, BatchNorm re-estimated on ``bn_batches`` training batches (0: kept)."""
        m = _loaded(net, n, state)
        if bn_batches:
            g = torch.Generator().manual_seed(0)
            perm = torch.randperm(len(tr), generator=g)
            loader = [(aa[tr][perm[i:i + 32]].float(), None) for i in range(0, len(tr), 32)]
            recalibrate_batchnorm(m, loader, bn_batches)
        return m.eval()

    runs = []
    lrs = [float(v) for v in args.lrs.split(",")]
    for k in range(args.runs):
        hp = run_grid(k, lrs, bool(args.aug_views))
        t0 = time.time()
        top = Top(net, n)
        top.load_state_dict(lp_state)
        a_train, y_train = (a_aug, y_aug) if hp["augment"] else (aa[tr], ya[tr])
        train_top(top, a_train, y_train, args.steps, hp["lr"], hp["seed"], freeze_bn_stats=args.bn_stats == "frozen")
        acc = evaluate_all(top)
        runs.append({**hp, **acc, "seconds": round(time.time() - t0, 1),
                     "state": {k2: v.clone() for k2, v in top.state_dict().items()}})
        print(f"run {k}: lr {hp['lr']:g} seed {hp['seed']} augment {'on' if hp['augment'] else 'off'}: "
              f"val {acc['val']:.1f} test {acc['test']:.1f} webcam {acc['webcam']:.1f} ({time.time() - t0:.0f} s)",
              flush=True)

    states = [r["state"] for r in runs]
    plan = recalibration_plan(Top(net, n), states + [lp_state], args.bn_batches)
    # The alternative to the rule's choice, for comparison only (never used to choose).
    other = 0 if plan.batches else DEFAULT_BATCHES
    other_name = ("BN statistics kept as averaged (for comparison)" if plan.batches
                  else f"BN re-estimated ({DEFAULT_BATCHES} batches, for comparison)")
    print(f"BatchNorm: {plan.reason}", flush=True)
    best = max(range(len(runs)), key=lambda i: runs[i]["val"])
    uniform = evaluate_all(fused(uniform_soup(states), plan.batches))
    uniform_other = evaluate_all(fused(uniform_soup(states), other))
    soup, members, steps = greedy_soup(states, [r["val"] for r in runs],
                                       lambda s: evaluate_all(fused(s, plan.batches))["val"])
    greedy = evaluate_all(fused(soup, plan.batches if len(members) > 1 else 0))
    tops = [_loaded(net, n, s) for s in states]
    ens = {}
    for split, (a, y) in {"val": (aa[va], ya[va]), "test": (aa[te], ya[te]), "webcam": (aw, yw)}.items():
        mean_logits = torch.stack([logits_of(t, a) for t in tops]).mean(0)
        ens[split] = 100.0 * float((mean_logits.argmax(1) == y).float().mean())
    lp_acc = evaluate_all(_loaded(net, n, lp_state))
    how = "the rule" if args.bn_batches is None else f"--bn_batches {args.bn_batches}"
    rule = f"BN re-estimated ({how})" if plan.batches else f"BN statistics kept ({how})"
    table = {
        "linear probe": {**lp_acc, "cost": 1},
        **{f"run {k} (lr {r['lr']:g}, seed {r['seed']}, aug {'on' if r['augment'] else 'off'})":
           {**{s: r[s] for s in ("val", "test", "webcam")}, "cost": 1} for k, r in enumerate(runs)},
        f"best single (run {best}, on val)": {**{k: runs[best][k] for k in ("val", "test", "webcam")}, "cost": 1},
        f"uniform soup ({len(runs)}), {rule}": {**uniform, "cost": 1},
        f"uniform soup ({len(runs)}), {other_name}": {**uniform_other, "cost": 1},
        f"greedy soup ({len(members)} of {len(runs)}: runs {', '.join(map(str, members))})": {**greedy, "cost": 1},
        f"logit ensemble ({len(runs)})": {**ens, "cost": len(runs)},
    }
    print("\n| Office-31 amazon, Lite0 last stage fine-tuned | val | test | webcam (shift) | inference cost |")
    print("|---|---|---|---|---|")
    for name, r in table.items():
        print(row(name, r["val"], r["test"], r["webcam"], f"{r['cost']}x"))
    results["fusion"] = {"runs": [{k: v for k, v in r.items() if k != "state"} for r in runs], "table": table,
                         "greedy_members": members, "greedy_steps": steps, "best_single": best,
                         "bn_recalibration": plan.to_dict()}

    # WiSE-FT between the linear probe and the best fine-tuned run (on val)
    curve = []
    for alpha in [i / 10 for i in range(11)]:
        state = interpolate_weights(lp_state, states[best], alpha)
        inner = 0 < alpha < 1  # the ends are trained models, as they are
        point = {"alpha": alpha, **evaluate_all(fused(state, plan.batches if inner else 0))}
        point["other_bn"] = evaluate_all(fused(state, other if inner else 0))
        curve.append(point)
    print(f"\n| WiSE-FT alpha (0: linear probe, 1: run {best}), {rule} | val | amazon test | webcam (shift) "
          f"| webcam, {other_name} |")
    print("|---|---|---|---|---|")
    for p in curve:
        print(row(f"{p['alpha']:.1f}", p["val"], p["test"], p["webcam"], p["other_bn"]["webcam"]))
    chosen = max(reversed(curve), key=lambda p: p["val"])
    best_shift = max(curve, key=lambda p: p["webcam"])
    ends = max(curve[0]["webcam"], curve[-1]["webcam"])
    print(f"alpha chosen on val: {chosen['alpha']:.1f} (test {chosen['test']:.1f}, webcam {chosen['webcam']:.1f}); "
          f"best on webcam: {best_shift['alpha']:.1f} ({best_shift['webcam']:.1f}; best end {ends:.1f})", flush=True)
    results["wise_ft"] = {"curve": curve, "chosen_alpha": chosen["alpha"], "ingredient": best,
                          "bn_recalibration": plan.to_dict(), "other_bn": other_name}


def _loaded(net: nn.Module, n: int, state: dict) -> Top:
    m = Top(net, n)
    m.load_state_dict(state)
    return m.eval()


# ---- part 2: distillation ----------------------------------------------------------------------
def views_of(paths: list[str], n_views: int, seed: int) -> list:
    """``n_views`` random resized crops (+ flips) of every image, as PIL crops (resized per net later)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for p in paths:
        img = load_rgb(p)
        for _ in range(n_views):
            i, j, h, w = _crop_params(img.size, g)
            crop = img.crop((j, i, j + w, i + h))
            if torch.rand(1, generator=g) < 0.5:
                crop = crop.transpose(0)  # FLIP_LEFT_RIGHT
            out.append(crop)
    return out


def _crop_params(size: tuple[int, int], g: torch.Generator) -> tuple[int, int, int, int]:
    width, height = size
    area = width * height
    for _ in range(10):
        target = area * float(torch.empty(1).uniform_(0.35, 1.0, generator=g))
        ratio = float(torch.exp(torch.empty(1).uniform_(np.log(3 / 4), np.log(4 / 3), generator=g)))
        w, h = int(round((target * ratio) ** 0.5)), int(round((target / ratio) ** 0.5))
        if 0 < w <= width and 0 < h <= height:
            i = int(torch.randint(0, height - h + 1, (1,), generator=g))
            j = int(torch.randint(0, width - w + 1, (1,), generator=g))
            return i, j, h, w
    s = min(width, height)
    return (height - s) // 2, (width - s) // 2, s, s


def distillation_part(args, results: dict) -> None:
    from tlx.data.fewshot import k_per_class

    webcam = scan_class_folders(OFFICE / "webcam")
    train, rest = k_per_class(webcam.samples, args.shots, seed=0)
    n = len(webcam.classes)
    y_views = torch.tensor([l for _, l in train for _ in range(args.views)])
    y_test = torch.tensor([l for _, l in rest])
    student_net, s_cfg = lite("efficientnet_lite0", args.size)
    teacher_net, t_cfg = lite("efficientnet_lite2", args.teacher_size)
    t0 = time.time()
    views = None

    def make_views():
        nonlocal views
        if views is None:
            views = views_of([p for p, _ in train], args.views, seed=0)
        return views

    tag = f"{args.shots}shot_{args.views}v"
    s_views = cached(args.cache_dir / f"webcam_{tag}_lite0_{args.size}.pt", lambda: activations(student_net, make_views(), s_cfg))
    t_views = cached(args.cache_dir / f"webcam_{tag}_lite2_{args.teacher_size}.pt",
                     lambda: activations(teacher_net, make_views(), t_cfg))
    s_test = cached(args.cache_dir / f"webcam_rest{args.shots}_lite0_{args.size}.pt",
                    lambda: activations(student_net, eval_images([p for p, _ in rest], s_cfg), s_cfg))
    t_test = cached(args.cache_dir / f"webcam_rest{args.shots}_lite2_{args.teacher_size}.pt",
                    lambda: activations(teacher_net, eval_images([p for p, _ in rest], t_cfg), t_cfg))
    print(f"activations: student {tuple(s_views.shape)}, teacher {tuple(t_views.shape)} ({time.time() - t0:.0f} s)",
          flush=True)

    def lp_top(net, a, y):
        top = Top(net, n)
        with torch.no_grad():
            emb = top.outputs(a.float()).embedding
        top.head = linear_probe(emb, y, n)
        return top

    t0 = time.time()
    teacher = train_top(lp_top(teacher_net, t_views, y_views), t_views, y_views, args.steps, args.lr, seed=0)
    with torch.no_grad():
        t_out = teacher.outputs(t_views.float())
    t_out = Outputs(t_out.logits, t_out.embedding, t_out.feature_map.half())  # cached once per view
    table = {"teacher: Lite2 (fine-tuned the same way)": accuracy(teacher, t_test, y_test)}
    print(f"teacher: {table['teacher: Lite2 (fine-tuned the same way)']:.1f} ({time.time() - t0:.0f} s)", flush=True)
    student_lp = lp_top(student_net, s_views, y_views)
    lp_state = {k: v.clone() for k, v in student_lp.state_dict().items()}
    with torch.no_grad():
        probe = student_lp.outputs(s_views[:2].float())
    configs = {"Lite0 alone (cross-entropy)": [], "+ kd": [KD()], "+ hint": [Hint()], "+ attention": [Attention()],
               "+ rkd": [RKD()], "+ sp": [SP()], "+ kd + rkd": [KD(), RKD()]}
    for name, losses in configs.items():
        accs = []
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            for loss in losses:  # fresh learned layers (the hint projection) for every run
                loss.build(getattr(probe, loss.needs).shape[1], getattr(t_out, loss.needs).shape[1])
            top = Top(student_net, n)
            top.load_state_dict(lp_state)
            t1 = time.time()
            train_top(top, s_views, y_views, args.steps, args.lr, seed, teacher=t_out, losses=losses)
            accs.append(accuracy(top, s_test, y_test))
        table[name] = float(np.mean(accs))
        print(f"{name}: {table[name]:.1f} (seeds {', '.join(f'{a:.1f}' for a in accs)}; {time.time() - t1:.0f} s/run)",
              flush=True)
    print(f"\n| webcam {args.shots}-shot, tested on the other {len(rest)} images | accuracy |\n|---|---|")
    for name, acc in table.items():
        print(row(name, acc))
    results["distillation"] = {"table": table, "train_views": len(y_views), "test_images": len(rest)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["fusion", "distillation", "all"], default="all")
    p.add_argument("--size", type=int, default=128, help="Lite0 input size")
    p.add_argument("--teacher_size", type=int, default=192, help="Lite2 input size")
    p.add_argument("--runs", type=int, default=4)
    p.add_argument("--lrs", default="1e-3,3e-3", help="learning rates, cycled over the runs")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-3, help="distillation part")
    p.add_argument("--bn_batches", type=int, default=None,
                   help="BN re-estimation batches after averaging; default: by tlx's rule (only if statistics differ)")
    p.add_argument("--bn_stats", choices=["frozen", "trained"], default="frozen",
                   help="fusion runs: BatchNorm running statistics frozen (the default recipe's policy) or trained")
    p.add_argument("--aug_views", type=int, default=0,
                   help="fusion: random crops+flips per amazon training image; >0 adds augmentation on/off to the runs")
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--seeds", type=int, default=2, help="distillation: seeds per configuration")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache_dir", type=Path, default=REPO / "runs" / "fusion_cache")
    p.add_argument("--out", type=Path, default=Path("fusion_report.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}}
    if args.part in ("fusion", "all"):
        fusion_part(args, results)
    if args.part in ("distillation", "all"):
        distillation_part(args, results)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
