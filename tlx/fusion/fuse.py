"""``python -m tlx fuse``: checkpoints in, ``fused.ckpt`` and ``fusion.json`` out.

Every decision (greedy order, alpha) is taken on the validation split; when the data has a test
split of its own, every ingredient and the result are also measured there, so that the report
shows accuracy on images the selection did not see.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor, nn

from tlx.checkpointing import atomic_torch_save
from tlx.fusion.bn_recalibration import (RecalibrationPlan, has_batchnorm, recalibrate_batchnorm,
                                         recalibration_plan)
from tlx.fusion.ensemble import EnsembleClassifier
from tlx.fusion.greedy_soup import greedy_soup
from tlx.fusion.ingredients import FusionError, checkpoint_like, load_ingredients
from tlx.fusion.uniform_soup import uniform_soup
from tlx.fusion.wise_ft import DEFAULT_ALPHAS, check_alphas, wise_ft
from tlx.models import ImageClassifier
from tlx.models.from_checkpoint import model_from_checkpoint

log = logging.getLogger("tlx")

Method = Literal["uniform_soup", "greedy_soup", "ensemble", "wise_ft"]
METHODS = ("uniform_soup", "greedy_soup", "ensemble", "wise_ft")


@torch.no_grad()
def accuracy(model: nn.Module, loader: Iterable, device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy (%) of ``model`` in eval mode over ``(images, labels)`` batches."""
    model.eval()
    correct = total = 0
    for x, y in loader:
        pred = model(x.to(device)).argmax(dim=1).cpu()
        correct += int((pred == y).sum())
        total += len(y)
    return 100.0 * correct / max(total, 1)


class _Evaluator:
    """Loads weights into one network, re-estimates BatchNorm when asked, measures accuracy."""

    def __init__(self, model: nn.Module, datamodule: LightningDataModule, bn_batches: int, device: torch.device):
        self.model, self.datamodule, self.bn_batches, self.device = model.to(device), datamodule, bn_batches, device
        self.test_split = _has_own_test_split(datamodule)

    def set_weights(self, state: dict[str, Tensor], recalibrate: bool) -> bool:
        self.model.load_state_dict(state)
        if not recalibrate:
            return False
        return recalibrate_batchnorm(self.model, self.datamodule.train_dataloader(), self.bn_batches, self.device)

    def val(self, model: nn.Module | None = None) -> float:
        return accuracy(model or self.model, self.datamodule.val_dataloader(), self.device)

    def test(self, model: nn.Module | None = None) -> float | None:
        return accuracy(model or self.model, self.datamodule.test_dataloader(), self.device) if self.test_split else None


def _has_own_test_split(datamodule: LightningDataModule) -> bool:
    samples = getattr(datamodule, "samples", None)
    if samples is None:
        return False
    try:
        return samples("test") is not samples("val")
    except Exception:  # no test split at all
        return False


def _prepare_data(datamodule: LightningDataModule | None, model: ImageClassifier) -> LightningDataModule:
    if datamodule is None:
        raise FusionError("fuse evaluates on the validation split: give data.init_args.root (or a --config with data).")
    if getattr(datamodule, "preprocessing", None) is None:  # what setup would read from an attached model
        datamodule.preprocessing = model.preprocessing
    datamodule.setup("fit")
    if _has_own_test_split(datamodule):
        datamodule.setup("test")
    names = getattr(datamodule, "class_names", None)
    if names is not None and list(names) != list(model.class_names):
        raise FusionError(f"The checkpoints' classes {model.class_names} differ from the data's {list(names)}: "
                          "fuse on the data the checkpoints were trained on.")
    return datamodule


def fuse(ckpt_paths: list[str], method: str, datamodule: LightningDataModule | None,
         alphas: list[float] | None = None, bn_recalibration_batches: int | None = None, output_dir: str = "fused",
         device: torch.device | str = "cpu", model: nn.Module | None = None) -> dict[str, Any]:
    """Fuse ``ckpt_paths`` with ``method``; write ``fused.ckpt`` and ``fusion.json`` to
    ``output_dir`` and return the report. ``model``: the network to load the weights into (by
    default built from the first checkpoint). ``bn_recalibration_batches``: ``None`` re-estimates
    BatchNorm statistics after averaging only when the ingredients' statistics differ
    (:func:`tlx.fusion.bn_recalibration.recalibration_plan`); a number forces that many batches
    (0: never). See the README's "Knowledge fusion" section."""
    if method not in METHODS:
        raise FusionError(f"--method {method!r} is unknown; choose one of {', '.join(METHODS)}.")
    if bn_recalibration_batches is not None and bn_recalibration_batches < 0:
        raise FusionError(f"--bn_recalibration_batches must be >= 0, got {bn_recalibration_batches}.")
    if method == "wise_ft":
        alphas = check_alphas(alphas if alphas is not None else DEFAULT_ALPHAS)
        if len(ckpt_paths) != 2:
            raise FusionError("--method wise_ft takes two --ckpt_paths: the linear probe (alpha 0), then the "
                              f"model fine-tuned from it (alpha 1); got {len(ckpt_paths)}.")
    elif alphas is not None:
        raise FusionError(f"--alphas applies to --method wise_ft only, not {method}.")
    ingredients = load_ingredients(ckpt_paths, minimum=2, method=method)
    device = torch.device(device)
    model = model if model is not None else model_from_checkpoint(ingredients[0].checkpoint, load_weights=False)
    datamodule = _prepare_data(datamodule, model)
    states = [ing.state_dict for ing in ingredients]
    if method == "ensemble":  # no weights averaged: each member keeps its own statistics
        plan = RecalibrationPlan(0, "an ensemble averages no weights: each member keeps its own statistics",
                                 bn_recalibration_batches, False)
    else:
        plan = recalibration_plan(model, states, bn_recalibration_batches)
        log.info("fuse %s, BatchNorm: %s.", method, plan.reason)
    ev = _Evaluator(model, datamodule, plan.batches, device)

    report: dict[str, Any] = {"method": method, "bn_recalibration": plan.to_dict(),
                              "batchnorm": has_batchnorm(model), "ingredients": []}
    for ing in ingredients:  # each as trained: its own BatchNorm statistics
        ev.set_weights(ing.state_dict, recalibrate=False)
        report["ingredients"].append({"path": ing.path, "val_acc": ev.val(), "test_acc": ev.test()})
    val_accs = [r["val_acc"] for r in report["ingredients"]]

    def soup_acc(state: dict[str, Tensor]) -> float:
        ev.set_weights(state, recalibrate=True)
        return ev.val()

    hparams = dict(ingredients[0].hparams)
    cost, averaged = 1.0, True
    if method == "uniform_soup":
        fused = uniform_soup(states)
        report["members"] = list(range(len(states)))
    elif method == "greedy_soup":
        fused, members, steps = greedy_soup(states, val_accs, soup_acc)
        report.update(members=members, greedy_order=steps)
        averaged = len(members) > 1
    elif method == "wise_ft":
        def alpha_acc(state: dict[str, Tensor], alpha: float) -> float:
            ev.set_weights(state, recalibrate=0.0 < alpha < 1.0)  # the ends are trained models as they are
            return ev.val()

        fused, alpha, curve = wise_ft(states[0], states[1], alphas, alpha_acc)
        report.update(alpha=alpha, alpha_curve=curve)
        averaged = 0.0 < alpha < 1.0
    else:
        ensemble = EnsembleClassifier.from_members([ing.hparams for ing in ingredients], states).to(device)
        fused, hparams = ensemble.state_dict(), {**dict(ensemble.hparams), "_class_path": _class_path(ensemble)}
        if "_instantiator" in ingredients[0].hparams:
            hparams["_instantiator"] = ingredients[0].hparams["_instantiator"]
        cost = float(len(states))
        report["members"] = list(range(len(states)))
        report["recalibrated"] = False  # each member keeps its own statistics
        report["result"] = {"val_acc": ev.val(ensemble), "test_acc": ev.test(ensemble)}
    if method != "ensemble":
        # The written weights are those evaluated: averaged, then BatchNorm re-estimated if planned.
        report["recalibrated"] = ev.set_weights(fused, recalibrate=averaged)
        fused = {k: v.detach().cpu().clone() for k, v in ev.model.state_dict().items()}
        report["result"] = {"val_acc": ev.val(), "test_acc": ev.test()}
    best = max(range(len(states)), key=lambda i: val_accs[i])
    report["best_single"] = {"ingredient": best, **{k: report["ingredients"][best][k] for k in ("val_acc", "test_acc")}}
    report["inference_cost_vs_one_model"] = cost

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(checkpoint_like(ingredients[0].checkpoint, fused, hparams), out / "fused.ckpt")
    report["fused_ckpt"] = str(out / "fused.ckpt")
    (out / "fusion.json").write_text(json.dumps(report, indent=2))
    log.info("fuse %s: val acc %.2f (best single %.2f) -> %s", method, report["result"]["val_acc"],
             report["best_single"]["val_acc"], out / "fused.ckpt")
    return report


def _class_path(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"
