"""The recipe suite: a recipe on eight real datasets, beside the tutorial's loops and tlx's linear probe.

    python scripts/recipe_suite.py                        # the default recipe, every dataset
    python scripts/recipe_suite.py --datasets rsscn7 hymenoptera --config my_recipe.yaml
    python scripts/recipe_suite.py --recompute-baselines --tutorial-epochs 2

Datasets (tlx/recipes/suite_data.py): hymenoptera (train/val), Office-31 amazon and webcam
(seeded stratified 80/20), webcam 5-shot (the rest validates), plantvillage_potato,
sign_language_digits, rsscn7 (80/20), chest_xray (train/val). Each split is written once as
symbolic links under ``--work``, so every method reads the same files.

Per dataset the table gives the recipe's best and final validation accuracy, its result (the
fine-tuned model, the fallen-back probe, or WiSE-FT between them), wall time, the number of validation images and a
Wilson 95% interval, and beside it the baselines:

* the PyTorch tutorial's loop (``scripts/tutorial_baseline.py``), frozen and fine-tuned, run for
  ``--tutorial-epochs`` (25 in the tutorial; fewer on a CPU, its wall time then scaled to 25
  epochs: ``wall x 25 / epochs``; its accuracy is that of the epochs run, an underestimate);
* tlx's linear probe (``configs/hymenoptera_fast.yaml`` with the dataset as data root).

Baselines are read from ``--baselines`` (a JSON committed beside this script, with the commands
that made them) and computed only for datasets it lacks, or all with ``--recompute-baselines``.
Targets (issue 13): best >= max(tutorial frozen, tutorial fine-tuned); best >= probe - 0.5 point;
wall <= 1/3 of the tutorial fine-tuned loop's (25 epochs); hymenoptera >= 96%.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tlx.cli import TLXCLI  # noqa: E402
from tlx.metrics import wilson_interval  # noqa: E402
from tlx.recipes import LinearProbeFinetune  # noqa: E402
from tlx.recipes.suite_data import DATASETS, materialize  # noqa: E402

DATA = REPO / ".." / "shared" / "data"
BASELINES = REPO / "scripts" / "recipe_suite_baselines.json"
TUTORIAL_EPOCHS = 25
log = logging.getLogger("tlx")


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (data-loader workers):
    unlike wall time, it hardly depends on what else the machine runs."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def fit(args: list[str]) -> tuple[TLXCLI, float, float]:
    start, cpu = time.perf_counter(), cpu_seconds()
    cli = TLXCLI(args=["fit", *args, "--trainer.enable_progress_bar=false"])
    return cli, time.perf_counter() - start, cpu_seconds() - cpu


def seed_args(seed: int | None) -> list[str]:
    return [] if seed is None else [f"--seed_everything={seed}"]


def run_recipe(root: Path, out: Path, configs: list[str], seed: int | None = None) -> dict:
    cli, wall, cpu = fit([*(a for c in configs for a in ("--config", c)), f"--data.init_args.root={root}",
                     f"--trainer.default_root_dir={out}", *seed_args(seed)])
    ckpt = cli.trainer.checkpoint_callback
    n_val = len(cli.datamodule.samples("val"))
    best = float(ckpt.best_model_score)
    row = {"best": best, "final": float(cli.trainer.callback_metrics["val/acc"]), "wall_s": wall, "cpu_s": cpu, "n_val": n_val,
           "ci95": wilson_interval(round(best * n_val), n_val), "steps": cli.trainer.global_step}
    lpft = [c for c in cli.trainer.callbacks if isinstance(c, LinearProbeFinetune)]
    if lpft:
        outcome = lpft[0].outcome
        row.update(result=outcome["result"], probe=outcome["probe_acc"], finetune_best=outcome["finetune_best_acc"])
        if "wise_ft_curve" in outcome:
            row["wise_ft_curve"] = outcome["wise_ft_curve"]
    return row


def tutorial_history(stdout: str) -> list[dict]:
    """The per-epoch records ``scripts/tutorial_baseline.py`` prints last (a JSON list)."""
    return json.loads(stdout[stdout.rindex("\n[") + 1:] if "\n[" in stdout else stdout[stdout.index("["):])


def run_tutorial(mode: str, root: Path, epochs: int) -> dict:
    command = [sys.executable, "scripts/tutorial_baseline.py", "--mode", mode, "--data", str(root), "--epochs", str(epochs)]
    start, cpu = time.perf_counter(), cpu_seconds()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    history = tutorial_history(done.stdout)
    accs = [h["val_acc"] for h in history]
    return {"epochs": epochs, "best": max(accs), "final": accs[-1], "val_acc": accs, "wall_s": wall,
            "wall_25_s": wall * TUTORIAL_EPOCHS / epochs, "cpu_s": cpu, "cpu_25_s": cpu * TUTORIAL_EPOCHS / epochs, "command": " ".join(command[1:])}


def run_probe(root: Path, out: Path, seed: int | None = None) -> dict:
    cli, wall, cpu = fit(["--config", str(REPO / "configs" / "hymenoptera_fast.yaml"), f"--data.init_args.root={root}",
                     f"--trainer.default_root_dir={out}", *seed_args(seed)])
    return {"best": float(cli.trainer.checkpoint_callback.best_model_score), "wall_s": wall, "cpu_s": cpu,
            "command": f"python -m tlx fit --config configs/hymenoptera_fast.yaml --data.init_args.root {root}"
                       + "".join(f" {a}" for a in seed_args(seed))}


def run_seeds(name: str, root: Path, work: Path, configs: list[str], seeds: list[int]) -> tuple[dict, dict]:
    """The recipe and tlx's linear probe with each seed (the seed of everything: splits stay the
    suite's); the row holds the means and each seed's figures, and the probe the mean of its seeds,
    so that both sides of "best >= probe - 0.5" are averaged over the same seeds."""
    runs, probes = [], []
    for seed in seeds:
        runs.append(run_recipe(root, work / "runs" / f"{name}_seed{seed}", configs, seed))
        probes.append(run_probe(root, work / "runs" / f"{name}_probe_seed{seed}", seed))
        log.info("%s seed %d: recipe best %s (%s), linear probe %s", name, seed, pct(runs[-1]["best"]),
                 runs[-1].get("result", "-"), pct(probes[-1]["best"]))
    mean = lambda key, rs: statistics.mean(r[key] for r in rs)  # noqa: E731
    row = {key: mean(key, runs) for key in ("best", "final", "wall_s", "cpu_s")}
    n_val = runs[0]["n_val"]
    row.update(n_val=n_val, ci95=wilson_interval(round(row["best"] * n_val), n_val), steps=runs[0]["steps"],
               best_sd=statistics.stdev(r["best"] for r in runs) if len(runs) > 1 else 0.0,
               result="/".join(r.get("result", "-") for r in runs), seeds=seeds,
               per_seed=[{"seed": s, **{k: r[k] for k in ("best", "final", "cpu_s") if k in r},
                          "result": r.get("result"), "recipe_probe": r.get("probe"), "linear_probe": p["best"]}
                         for s, r, p in zip(seeds, runs, probes)])
    probe = {"best": mean("best", probes), "seeds": seeds, "per_seed": [p["best"] for p in probes],
             "cpu_s": mean("cpu_s", probes)}
    return row, probe


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def baseline_cell(run: dict | None) -> str:
    return "-" if not run else f"{pct(run['best'])} ({run['epochs']} ep)"


def probe_of(r: dict, b: dict) -> dict | None:
    """The linear probe to compare a row with: its own seeds' mean (``--seeds``), else the baseline's."""
    return r.get("linear_probe_seeds") or b.get("linear_probe")


def targets(name: str, r: dict, b: dict) -> str:
    frozen, tuned, probe = b.get("tutorial_frozen"), b.get("tutorial_finetune"), probe_of(r, b)
    checks = []
    if frozen or tuned:
        checks.append(("tutorial", r["best"] >= max(t["best"] for t in (frozen, tuned) if t)))
    if probe:
        checks.append(("probe", r["best"] >= probe["best"] - 0.005))
    if tuned and "cpu_25_s" in tuned and "cpu_s" in r:
        checks.append(("cpu time", r["cpu_s"] <= tuned["cpu_25_s"] / 3))
    elif tuned:
        checks.append(("wall", r["wall_s"] <= tuned["wall_25_s"] / 3))
    if name == "hymenoptera":
        checks.append(("96%", r["best"] >= 0.96))
    return " ".join(f"{n} {'ok' if ok else 'MISSED'}" for n, ok in checks) or "-"


def table(rows: dict[str, dict], baselines: dict[str, dict]) -> str:
    cols = ["dataset", "n val", "recipe best (95% CI)", "final", "result", "wall s", "CPU s", "tutorial frozen",
            "tutorial fine-tuned", "tutorial ft wall s (25 ep)", "tutorial ft CPU s (25 ep)", "linear probe", "targets"]
    lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    for name, r in rows.items():
        b = baselines.get(name, {})
        tuned, probe = b.get("tutorial_finetune"), probe_of(r, b)
        seeds = f", mean of seeds {' '.join(map(str, r['seeds']))}, sd {pct(r['best_sd'])}" if "seeds" in r else ""
        cells = [name, str(r["n_val"]), f"{pct(r['best'])} ({pct(r['ci95'][0])}-{pct(r['ci95'][1])}{seeds})", pct(r["final"]),
                 r.get("result", "-"), f"{r['wall_s']:.0f}", f"{r['cpu_s']:.0f}" if "cpu_s" in r else "-",
                 baseline_cell(b.get("tutorial_frozen")), baseline_cell(tuned),
                 f"{tuned['wall_25_s']:.0f}" if tuned else "-",
                 f"{tuned['cpu_25_s']:.0f}" if tuned and "cpu_25_s" in tuned else "-",
                 pct(probe["best"]) if probe else "-", targets(name, r, b)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def add_baseline(path: Path, name: str, kind: str, root: Path, work: Path, args: argparse.Namespace) -> dict:
    """Compute one baseline of one dataset unless the file has it; written at once (read again
    first: several suites may fill the file, each its own datasets). Returns the whole file."""
    baselines = json.loads(path.read_text()) if path.is_file() else {}
    base = baselines.setdefault(name, {})
    if kind in base and not args.recompute_baselines:
        return baselines
    if kind == "linear_probe":
        run = run_probe(root, work / "runs" / f"{name}_probe")
    else:
        run = run_tutorial(kind.removeprefix("tutorial_"), root, args.tutorial_epochs)
    baselines = json.loads(path.read_text()) if path.is_file() else {}
    baselines.setdefault(name, {})[kind] = run
    path.write_text(json.dumps(baselines, indent=1) + "\n")
    log.info("%s %s: %s", name, kind, pct(run["best"]))
    return baselines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="*", default=[d.name for d in DATASETS], choices=[d.name for d in DATASETS])
    parser.add_argument("--config", action="append", default=[], help="recipe config(s); none: the default recipe")
    parser.add_argument("--work", default=str(REPO / "runs" / "recipe_suite"), help="splits and run folders")
    parser.add_argument("--baselines", default=str(BASELINES))
    parser.add_argument("--recompute-baselines", action="store_true")
    parser.add_argument("--no-baselines", action="store_true", help="do not compute missing baselines")
    parser.add_argument("--baselines-only", action="store_true", help="compute missing baselines, run no recipe")
    parser.add_argument("--probes-first", action="store_true",
                        help="every dataset's linear probe before any tutorial loop")
    parser.add_argument("--tutorial-epochs", type=int, default=TUTORIAL_EPOCHS)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="run the recipe and the linear probe once per seed and compare their means "
                             "(the probe baseline of the file is then not used)")
    parser.add_argument("--out", default=None, help="write the recipe's rows here (JSON)")
    parser.add_argument("--table", default=None, metavar="ROWS_JSON",
                        help="print the table of stored rows (an --out file) beside the baselines, run nothing")
    args = parser.parse_args()
    if args.table:
        rows = {k: v for k, v in json.loads(Path(args.table).read_text()).items() if not k.startswith("_")}
        print(table(rows, json.loads(Path(args.baselines).read_text())))
        return
    logging.basicConfig(format="[tlx] %(levelname)s: %(message)s")
    logging.getLogger("tlx").setLevel(logging.INFO)  # the recipe's probe / outcome lines
    sys.argv[1:] = []  # the runs get their arguments as a list (LightningCLI warns when both are given)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work)
    path = Path(args.baselines)
    rows, baselines = {}, {}
    datasets = [{d.name: d for d in DATASETS}[n] for n in args.datasets]  # in the order given: cheap ones first
    roots = {d.name: materialize(d, DATA, work / "data") for d in datasets}
    kinds = [] if args.no_baselines else ["linear_probe", "tutorial_frozen", "tutorial_finetune"]
    # --probes-first: every probe (seconds) before any tutorial loop (an hour), so a cut-short run has them all
    passes = [kinds[:1], kinds[1:]] if args.probes_first and kinds else [kinds]
    for i, pass_kinds in enumerate(passes):
        for dataset in datasets:
            for kind in pass_kinds:
                baselines = add_baseline(path, dataset.name, kind, roots[dataset.name], work, args)
            last = i == len(passes) - 1
            if args.baselines_only or not last:
                continue
            if not kinds:
                baselines = json.loads(path.read_text()) if path.is_file() else {}
            if args.seeds:
                rows[dataset.name], probe = run_seeds(dataset.name, roots[dataset.name], work, args.config, args.seeds)
                rows[dataset.name]["linear_probe_seeds"] = probe  # the table compares with it
            else:
                rows[dataset.name] = run_recipe(roots[dataset.name], work / "runs" / dataset.name, args.config)
            print(table({dataset.name: rows[dataset.name]}, baselines).splitlines()[-1], flush=True)
            if args.out:
                Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    if rows:
        print()
        print(table(rows, baselines))


if __name__ == "__main__":
    main()
