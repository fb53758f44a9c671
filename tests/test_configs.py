"""configs/ composes: every fragment (a fine-tuning strategy, a domain-adaptation task or
objective) resolves stacked on its base experiment, and every strategy fragment fits a tiny model
through the CLI (tiny model and data swapped in)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.helpers import (
    DA_BASE,
    DA_TASKS,
    OBJECTIVES,
    STRATEGIES,
    STRATEGY_BASE,
    TINY_MODEL,
    ids,
    printed_config,
    run_cli,
)
from tlx.finetuning import FinetuneStrategy


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def assert_contains(resolved, written, where: str) -> None:
    """Every value ``written`` in a config file is in the ``resolved`` config."""
    if isinstance(written, dict):
        for key, value in written.items():
            if key != "callbacks+":  # appended: checked by the callers
                assert key in resolved, f"{where}.{key} is missing"
                assert_contains(resolved[key], value, f"{where}.{key}")
    elif isinstance(written, list) and any(isinstance(w, dict) for w in written):
        assert len(resolved) == len(written), f"{where}: {len(resolved)} entries, written {len(written)}"
        for i, (r, w) in enumerate(zip(resolved, written)):
            assert_contains(r, w, f"{where}[{i}]")
    elif isinstance(written, str) and isinstance(resolved, dict):  # `head: tlx.heads.LinearHead`
        assert resolved.get("class_path") == written, f"{where}: {resolved!r}, written {written!r}"
    else:
        assert resolved == written, f"{where}: {resolved!r}, written {written!r}"


def classes(node, path: str = "") -> dict[str, dict]:
    """dotted path -> class_path/init_args dict, for every object in a config."""
    found = {}
    if isinstance(node, dict):
        if "class_path" in node:
            found[path] = node
        for key, value in node.items():
            found.update(classes(value, f"{path}.{key}" if path else key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found.update(classes(value, f"{path}[{i}]"))
    return found


def assert_nothing_carried_over(resolved: dict, base: dict, fragment: dict, name: str) -> None:
    """A fragment that swaps an object's class (AdamW -> SGD) keeps the base's init args the new
    class also takes (jsonargparse's rule): each of those must be written in the fragment."""
    base_objects, fragment_objects = classes(base), classes(fragment)
    for path, spec in classes(resolved).items():
        own = fragment_objects.get(path)
        before = base_objects.get(path)
        if own is None or before is None or own["class_path"] == before["class_path"]:
            continue
        carried = set(before.get("init_args") or {}) & set(spec["init_args"]) - set(own.get("init_args") or {})
        assert not carried, f"{name}: {path} keeps {sorted(carried)} of the base's {before['class_path']}; write them out"


@pytest.mark.parametrize("fragment", STRATEGIES, ids=ids(STRATEGIES))
def test_strategy_fragment_resolves_on_its_base(fragment, capsys):
    base, own = load(STRATEGY_BASE), load(fragment)
    resolved = printed_config(capsys, STRATEGY_BASE, fragment)
    # The fragment's callbacks are appended to the base's, which stay.
    assert [c["class_path"] for c in resolved["trainer"]["callbacks"]] == [
        c["class_path"] for c in base["trainer"]["callbacks"] + own["trainer"]["callbacks+"]]
    assert_contains(resolved, own, fragment.stem)
    # Where the fragment says nothing, the base's recipe holds.
    untouched = {k: v for k, v in base.items() if k not in own}
    assert_contains(resolved, untouched, "base")
    assert resolved["trainer"]["max_epochs"] == base["trainer"]["max_epochs"]
    assert_nothing_carried_over(resolved, base, own, fragment.stem)


@pytest.mark.parametrize("fragment", OBJECTIVES, ids=ids(OBJECTIVES))
def test_objective_fragment_resolves_on_its_base_and_task(fragment, capsys):
    task = DA_TASKS[0]  # the tasks only set the two roots: checked below
    base, own = load(DA_BASE), load(fragment)
    resolved = printed_config(capsys, DA_BASE, task, fragment)
    assert_contains(resolved, own, fragment.stem)
    assert_contains(resolved, load(task), task.stem)
    assert_contains(resolved, {k: v for k, v in base.items() if k != "data"}, "base")
    assert resolved["model"]["init_args"]["objective"]["class_path"].startswith("tlx.domain_adaptation.")
    assert_nothing_carried_over(resolved, base, own, fragment.stem)


def test_the_tasks_swap_source_and_target(capsys):
    a2w, w2a = (printed_config(capsys, DA_BASE, task)["data"]["init_args"] for task in DA_TASKS)
    assert (a2w["source_root"], a2w["target_root"]) == (w2a["target_root"], w2a["source_root"])
    assert a2w["source_root"].endswith("office31/amazon") and a2w["target_root"].endswith("office31/webcam")
    assert {k: v for k, v in a2w.items() if not k.endswith("_root")} == {k: v for k, v in w2a.items() if not k.endswith("_root")}


@pytest.mark.parametrize("name", ["frozen_features", "last_block"])
def test_the_domain_adaptation_cache_fragments_stack_on_the_base_a_task_and_an_objective(name, capsys):
    """frozen_features.yaml / last_block.yaml append their callbacks to office31.yaml's and change
    nothing else of the experiment."""
    fragment, objective = DA_BASE.parent / f"{name}.yaml", DA_BASE.parent / "objectives" / "information_maximization.yaml"
    base, own = load(DA_BASE), load(fragment)
    resolved = printed_config(capsys, DA_BASE, DA_TASKS[0], objective, fragment)
    assert [c["class_path"] for c in resolved["trainer"]["callbacks"]] == [
        c["class_path"] for c in base["trainer"]["callbacks"] + own["trainer"]["callbacks+"]]
    assert_contains(resolved, {k: v for k, v in base.items() if k not in ("data", "trainer")}, "base")
    assert resolved["model"]["init_args"]["objective"]["class_path"].endswith("InformationMaximization")


@pytest.mark.parametrize("fragment", STRATEGIES, ids=ids(STRATEGIES))
def test_strategy_fragment_fits(fragment: Path, tiny_folder, tmp_path):
    cli = run_cli([
        "fit", f"--config={STRATEGY_BASE}", f"--config={fragment}",
        f"--model.init_args.backbone={TINY_MODEL['backbone']}",
        "--model.init_args.weights=null",
        f"--model.init_args.preprocessing={json.dumps(TINY_MODEL['preprocessing'])}",
        f"--data.init_args.root={tiny_folder}",
        "--data.init_args.batch_size=4",
        "--data.init_args.num_workers=0",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.max_epochs=1",
        "--trainer.enable_progress_bar=false",
    ])
    strategies = [cb for cb in cli.trainer.callbacks if isinstance(cb, FinetuneStrategy)]
    assert len(strategies) == 1
    assert "params/trainable" in cli.trainer.callback_metrics
    assert "lr-" + type(cli.trainer.optimizers[0]).__name__ + "/head" in cli.trainer.callback_metrics


def fragment_classes(fragments: list[Path]) -> set[str]:
    return {spec["class_path"] for f in fragments for spec in classes(load(f)).values()}


def test_every_strategy_has_its_fragment():
    """A strategy is one file and one fragment: each exported by tlx.finetuning has one."""
    import tlx.finetuning as package

    exported = [getattr(package, name) for name in package.__all__]
    strategies = {c for c in exported if isinstance(c, type) and issubclass(c, FinetuneStrategy) and c is not FinetuneStrategy}
    assert strategies
    named = fragment_classes(STRATEGIES)
    missing = [c.__name__ for c in strategies if not {f"tlx.finetuning.{c.__name__}", f"{c.__module__}.{c.__name__}"} & named]
    assert not missing, f"no fragment in configs/finetuning/strategies/ for {missing}"


def test_every_objective_has_its_fragment():
    """A DA method is one file and one fragment: each objective tlx.domain_adaptation exports has one."""
    import tlx.domain_adaptation as package
    from tlx.domain_adaptation.objectives import Objective

    exported = [getattr(package, name) for name in dir(package)]
    objectives = {c for c in exported if isinstance(c, type) and issubclass(c, Objective) and c is not Objective}
    assert objectives
    named = fragment_classes(OBJECTIVES)
    missing = [c.__name__ for c in objectives if not {f"tlx.domain_adaptation.{c.__name__}", f"{c.__module__}.{c.__name__}"} & named]
    assert not missing, f"no fragment in configs/domain_adaptation/objectives/ for {missing}"
