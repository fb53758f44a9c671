"""LP-FT, the default recipe's strategy: a linear probe first, then fine-tuning from its head.

1. Linear probe (``on_fit_start``): the frozen backbone runs once over the training and
   validation images (evaluation view), and the head is fitted on those cached features
   (:mod:`tlx.recipes.probe`), nearly free.
2. Fine-tuning from that head: the top ``finetune_top`` of the backbone's layer groups and the
   head train with the model's optimizer and schedule (the default recipe: SGD, small LR,
   :class:`tlx.optim.WarmupCosine` stepped per optimizer step, which spans the budget), for a
   budget of optimizer steps scaled to the data (:mod:`tlx.recipes.budget`). The lower groups
   stay frozen, which keeps a CPU step cheap and the general features intact.
   Starting from a fitted head is what keeps the unfreeze from wrecking the features (Kumar et
   al. 2022, "Fine-Tuning can Distort Pretrained Features"): a random head's large gradients are
   what distorts them.
3. BatchNorm by rule: running statistics stay frozen (the pretrained ones, which the probe was
   fitted under) unless batches and data are large enough to re-estimate them well
   (``per-device batch >= 64`` and ``>= 10,000`` training images). ``reestimate_bn`` (off by
   default, not yet measured on the suite) re-estimates the fine-tuned layers' statistics on the
   training images instead (:mod:`tlx.recipes.bn_stats`), kept where the probe validates better.
4. WiSE-FT (Wortsman et al. 2022, :mod:`tlx.fusion.wise_ft`): after fine-tuning, the weights
   ``(1 - alpha) * probe + alpha * fine-tuned`` for a few ``wise_alphas`` are validated (one pass
   over the validation images each). Between the two ends the model often beats both: on
   hymenoptera, where fine-tuning's last epoch (93.5-94.1%) ends below its probe (94.8-96.1%),
   alpha 0.2-0.4 validated above both on two seeds of three.
5. Never worse than the probe: the result is the best on validation of the probe's model
   (pretrained backbone, probe head), fine-tuning's best checkpoint and the WiSE-FT weights, each
   needing one more correct validation image than the ones before it in that order to win. A
   result other than fine-tuning's own checkpoint is loaded into the model and written over the
   best checkpoint, and the run says so. Every outcome line gives the number of validation images
   and a Wilson 95% interval, so a tiny split's noise is visible.

The recipe owns the run's length: it sets the number of epochs (the step budget as whole epochs)
and validates about ``validations`` times, the last epoch included. ``trainer.max_steps`` or
``trainer.max_epochs``, when given, fix the budget instead of the formula.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor

from tlx.backbones import create_backbone
from tlx.features import extract_features
from tlx.finetuning.base import FinetuneStrategy, head_params
from tlx.finetuning.groups import FinetuningError, LayerGroup, layer_groups
from tlx.fusion.wise_ft import check_alphas, interpolate_weights
from tlx.metrics import wilson_interval
from tlx.optim import ParamGroup
from tlx.recipes.bn_stats import batchnorm_layers, load_bn_state, reestimate_bn_stats, shift
from tlx.recipes.budget import epochs_for, step_budget, steps_per_epoch
from tlx.recipes.probe import ProbeResult, count_correct, fit_probe

log = logging.getLogger("tlx")

BN_FREEZE_BELOW_BATCH = 64
BN_FREEZE_BELOW_IMAGES = 10_000


def bn_stats_frozen(batch_size: int, n_train: int) -> bool:
    """The BatchNorm rule: keep the pretrained statistics unless batches and data are large."""
    return batch_size < BN_FREEZE_BELOW_BATCH or n_train < BN_FREEZE_BELOW_IMAGES


def beats(finetune_acc: float | None, probe_acc: float, n_val: int) -> bool:
    """Whether fine-tuning got at least one more validation image right than the probe. The two
    accuracies come from different code (torchmetrics in float32, the probe's own count), so equal
    counts can differ in the last bits: a plain ``>`` let such a tie count as a win."""
    return finetune_acc is not None and finetune_acc > probe_acc + 0.5 / max(n_val, 1)


def copy_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


def result_of(probe_acc: float, finetune_best: float | None, wise_acc: float | None, n_val: int) -> str:
    """The run's result, in this order of trust: the probe; fine-tuning's best checkpoint if it got
    one more validation image right; WiSE-FT if it got one more right than that."""
    result, bar = "probe", probe_acc
    if beats(finetune_best, bar, n_val):
        result, bar = "finetuned", finetune_best
    if beats(wise_acc, bar, n_val):
        result = "wise_ft"
    return result


def accuracy_line(name: str, acc: float, n: int) -> str:
    lo, hi = wilson_interval(round(acc * n), n)
    return f"{name} {100 * acc:.1f}% (n={n}, 95% CI {100 * lo:.1f}-{100 * hi:.1f})"


class LinearProbeFinetune(FinetuneStrategy):
    """The default recipe's fine-tuning strategy (see the module docstring).

    Args:
        finetune_top: fraction of the backbone's layer groups (top first) that fine-tune.
        epochs, min_steps, max_steps: the step budget, :func:`tlx.recipes.budget.step_budget`.
        validations: about how many validations over the run (the last epoch always validates).
        freeze_bn_stats: ``None``: by the rule above; ``True``/``False`` to force it.
        reestimate_bn: ``None``: the fine-tuned layers' BatchNorm statistics are re-estimated on
            the training images and kept if the probe fitted under them validates better than
            under the pretrained ones; ``True``/``False``: always / never (the default) re-estimate.
        wise_alphas: the WiSE-FT interpolations validated after fine-tuning (empty: none).
        probe_epochs, probe_lr, probe_weight_decay, probe_batch_size: the probe's fit.
        extract_batch_size: batch size of the feature extraction.
    """

    def __init__(
        self,
        finetune_top: float = 0.34,
        epochs: float = 2.0,
        min_steps: int = 50,
        max_steps: int = 300,
        validations: int = 4,
        freeze_bn_stats: bool | None = None,
        reestimate_bn: bool | None = False,
        wise_alphas: list[float] | tuple[float, ...] = (0.2, 0.4, 0.6, 0.8),
        probe_epochs: int = 15,
        probe_lr: float = 3e-3,
        probe_weight_decay: float = 0.01,
        probe_batch_size: int = 32,
        extract_batch_size: int = 64,
    ):
        super().__init__(train_bn=False, freeze_bn_stats=bool(freeze_bn_stats))
        if not 0.0 < finetune_top <= 1.0:
            raise FinetuningError(f"LinearProbeFinetune finetune_top must be in (0, 1], got {finetune_top}.")
        self.finetune_top = finetune_top
        self.budget = {"epochs": epochs, "min_steps": min_steps, "max_steps": max_steps}
        self.validations = max(1, int(validations))
        self.bn_rule = freeze_bn_stats is None
        self.reestimate_bn = reestimate_bn
        self.wise_alphas = [a for a in check_alphas(wise_alphas) if 0.0 < a < 1.0] if wise_alphas else []
        self.probe_kwargs = {"epochs": probe_epochs, "lr": probe_lr, "weight_decay": probe_weight_decay,
                             "batch_size": probe_batch_size}
        self.extract_batch_size = extract_batch_size
        self.total_steps = 0
        self.probe_head: dict[str, Tensor] | None = None
        self.probe_acc: float | None = None
        self.n_val = 0
        self.finetune_best: float | None = None
        self.bn_choice: dict[str, Any] = {}
        self.bn_start: dict[str, Tensor] | None = None  # re-estimated BatchNorm buffers, when kept
        self.outcome: dict[str, Any] = {}
        self._backbone_start: dict[str, Tensor] | None = None

    # ---- which groups train ------------------------------------------------------------------
    def _split(self, pl_module: LightningModule) -> tuple[list[LayerGroup], list[LayerGroup]]:
        groups = layer_groups(pl_module.backbone, frozen=self.bottom)
        k = max(1, round(len(groups) * self.finetune_top))
        return groups[-k:], groups[:-k]

    def freeze_before_training(self, pl_module: LightningModule) -> None:
        for group in self._split(pl_module)[1]:
            self.freeze_group(group)

    def groups(self, pl_module: LightningModule) -> list[ParamGroup]:
        top = [p for g in self._split(pl_module)[0] for p in g.params]
        return [ParamGroup("head", head_params(pl_module)), ParamGroup("backbone.top", top)]

    # ---- budget, BatchNorm rule --------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            self._plan(trainer)
        super().setup(trainer, pl_module, stage)

    def _plan(self, trainer: Trainer) -> None:
        dm = trainer.datamodule
        if dm is None or not all(hasattr(dm, a) for a in ("samples", "eval_dataset")):
            raise FinetuningError("LinearProbeFinetune needs an ImageFolderDataModule (samples(), eval_dataset()).")
        if getattr(dm, "task", None) == "multilabel":  # the probe is a softmax one, picked by accuracy
            raise FinetuningError("The default recipe (LinearProbeFinetune) is for single-label data; for multi-label "
                                  "data name a model: add --model tlx.models.ImageClassifier (or a config with a model).")
        n_train = len(dm.samples("train"))
        batch = int(dm.hparams.get("batch_size", 32))
        if self.bn_rule:
            self.freezer.freeze_bn_stats = bn_stats_frozen(batch, n_train)
        global_batch = batch * trainer.world_size * trainer.accumulate_grad_batches
        user_steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        # Lightning's own default (no max_epochs, no max_steps) is 1000 epochs: anything else was asked for
        user_epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1, 1000) else None
        steps = user_steps or step_budget(n_train, global_batch, **self.budget)
        epochs = user_epochs or epochs_for(steps, n_train, global_batch)
        every = math.ceil(epochs / self.validations)
        if not user_epochs:
            epochs = math.ceil(epochs / every) * every  # the last epoch validates
        trainer.fit_loop.max_epochs = epochs
        trainer.check_val_every_n_epoch = every
        self.total_steps = min(epochs * steps_per_epoch(n_train, global_batch), user_steps or 10**9)
        if trainer.is_global_zero:
            log.info("LinearProbeFinetune: %d training images, batch %d: %d optimizer steps (%d epochs, validation "
                     "every %d epoch(s)); BatchNorm statistics %s.", n_train, global_batch, self.total_steps,
                     epochs, every, "frozen" if self.freeze_bn_stats else "updated in the fine-tuned layers")

    # ---- phase 1: the linear probe -----------------------------------------------------------
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        if self.probe_head is None:  # a resumed run restored it (state_dict), and rebuilds the start if needed
            self._fit_probe(trainer, pl_module)
            self._backbone_start = copy_state(pl_module.backbone.state_dict())
        self.finetune_best = None

    def _fit_probe(self, trainer: Trainer, pl_module: LightningModule) -> None:
        seed = torch.initial_seed() % 2**31
        head_init = copy_state(pl_module.head.state_dict())

        def probe() -> ProbeResult:
            feats = {split: self._features(trainer, pl_module, split) for split in ("train", "val")}
            pl_module.head.load_state_dict(head_init)
            return fit_probe(pl_module.head, feats["train"], feats["val"], seed=seed, **self.probe_kwargs)

        result = probe()
        if self.reestimate_bn is not False:
            result = self._choose_bn_stats(trainer, pl_module, result, probe)
        self.probe_head = copy_state(result.head_state)
        pl_module.head.load_state_dict(self.probe_head)
        self.probe_acc, self.n_val = result.val_acc, result.val_total
        if trainer.is_global_zero:
            log.info("LinearProbeFinetune: %s, epoch %d of the probe; fine-tuning starts from its head.",
                     accuracy_line("linear probe val acc", self.probe_acc, self.n_val), result.best_epoch)

    def _features(self, trainer: Trainer, pl_module: LightningModule, split: str) -> tuple[Tensor, Tensor]:
        """The backbone's pooled features of ``split`` (evaluation view), on the model's device."""
        x, y = extract_features(pl_module.backbone, trainer.datamodule.eval_dataset(split),
                                batch_size=self.extract_batch_size, num_workers=self._workers(trainer),
                                precision=str(trainer.precision))
        return x.to(pl_module.device), y.to(pl_module.device)

    @staticmethod
    def _workers(trainer: Trainer) -> int:
        return int(trainer.datamodule.hparams.get("num_workers", 0))

    def _choose_bn_stats(self, trainer: Trainer, pl_module: LightningModule, pretrained: ProbeResult,
                         probe: Any) -> ProbeResult:
        """Re-estimate the fine-tuned layers' BatchNorm statistics on the training images and fit the
        probe again under them; keep them if that probe validates better (or if forced)."""
        layers = batchnorm_layers(m for g in self._split(pl_module)[0] for m in g.modules)
        if not layers:
            return pretrained
        before = reestimate_bn_stats(pl_module.backbone, layers, trainer.datamodule.eval_dataset("train"),
                                     batch_size=self.extract_batch_size, num_workers=self._workers(trainer))
        reestimated = probe()
        keep = self.reestimate_bn is True or reestimated.val_correct > pretrained.val_correct
        self.bn_choice = {"shift": shift(before), "pretrained_acc": pretrained.val_acc,
                          "reestimated_acc": reestimated.val_acc, "kept": "reestimated" if keep else "pretrained"}
        if keep:  # what the fall-back restores, also after a resume (state_dict)
            names = {id(m): n for n, m in pl_module.backbone.named_modules()}
            self.bn_start = {f"{names[id(bn)]}.{b}": getattr(bn, b).detach().clone() for bn in layers
                             for b in ("running_mean", "running_var", "num_batches_tracked")}
        else:
            load_bn_state(before)
        if trainer.is_global_zero:
            log.info("LinearProbeFinetune: BatchNorm statistics of the fine-tuned layers re-estimated on the training "
                     "images (shift %.2f pretrained std): probe %.1f%% under them, %.1f%% under the pretrained ones: "
                     "the %s statistics are kept.", self.bn_choice["shift"], 100 * reestimated.val_acc,
                     100 * pretrained.val_acc, self.bn_choice["kept"])
        return reestimated if keep else pretrained

    # ---- phase 2: fine-tuning, with the model's optimizer and schedule -----------------------
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        acc = trainer.callback_metrics.get("val/acc")
        if trainer.sanity_checking or acc is None:
            return
        if self.finetune_best is None or float(acc) > self.finetune_best:
            self.finetune_best = float(acc)

    # ---- the result: the probe, fine-tuned, or WiSE-FT between them -------------------------
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_fit_end(trainer, pl_module)
        if self.probe_acc is None:
            return
        self.outcome = {"probe_acc": self.probe_acc, "finetune_best_acc": self.finetune_best, "n_val": self.n_val,
                        "steps": self.total_steps}
        wise = self._wise_ft(trainer, pl_module) if self.wise_alphas else None
        result = self.outcome["result"] = result_of(self.probe_acc, self.finetune_best, wise and wise["val_acc"],
                                                    self.n_val)
        probe_line = accuracy_line("the linear probe's", self.probe_acc, self.n_val)
        tuned = "no validation" if self.finetune_best is None else f"{100 * self.finetune_best:.1f}%"
        if result == "wise_ft":
            self.outcome.update(wise_ft_acc=wise["val_acc"], wise_ft_alpha=wise["alpha"])
            self._write_result(trainer, pl_module, wise["backbone"], wise["head"], wise["val_acc"])
            msg = (f"LinearProbeFinetune: WiSE-FT at alpha {wise['alpha']:g} ("
                   f"{accuracy_line('val acc', wise['val_acc'], self.n_val)}) beat fine-tuning's best ({tuned}) and "
                   f"{probe_line}: the result is the interpolated model, written over best.ckpt.")
        elif result == "finetuned":
            msg = f"LinearProbeFinetune: fine-tuning's best {accuracy_line('val acc', self.finetune_best, self.n_val)} beat {probe_line}: the result is the fine-tuned model (best.ckpt)."
        else:
            self._write_result(trainer, pl_module, self._probe_backbone(pl_module), self.probe_head, self.probe_acc)
            msg = (f"LinearProbeFinetune: fine-tuning ({tuned}) did not beat {probe_line}: the result is the probe's "
                   "model (pretrained backbone + probe head), written over best.ckpt.")
        if self.n_val < 300:
            lo, hi = wilson_interval(round(self.probe_acc * self.n_val), self.n_val)
            msg += f" A small validation set: differences within +-{50 * (hi - lo):.1f} points are noise."
        if trainer.is_global_zero:
            log.info(msg)

    def _wise_ft(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        """Validates ``(1 - alpha) * probe + alpha * fine-tuned end`` for each of ``wise_alphas``;
        returns the best (ties: the larger alpha) with its weights, and leaves the model as it was."""
        start_backbone = self._probe_backbone(pl_module)
        end_backbone, end_head = copy_state(pl_module.backbone.state_dict()), copy_state(pl_module.head.state_dict())
        best, curve = None, []
        for alpha in self.wise_alphas:
            backbone = interpolate_weights(start_backbone, end_backbone, alpha)
            head = interpolate_weights(self.probe_head, end_head, alpha)
            pl_module.backbone.load_state_dict(backbone)
            pl_module.head.load_state_dict(head)
            x, y = self._features(trainer, pl_module, "val")
            acc = count_correct(pl_module.head, x, y) / len(y)  # counted as the probe's accuracy is
            curve.append({"alpha": alpha, "val_acc": acc})
            if best is None or acc >= best["val_acc"]:
                best = {"alpha": alpha, "val_acc": acc, "backbone": backbone, "head": head}
        pl_module.backbone.load_state_dict(end_backbone)
        pl_module.head.load_state_dict(end_head)
        self.outcome["wise_ft_curve"] = curve
        if trainer.is_global_zero:
            log.info("LinearProbeFinetune: WiSE-FT between the probe (alpha 0, %.1f%%) and the fine-tuned end (alpha 1): "
                     "%s.", 100 * self.probe_acc, ", ".join(f"alpha {p['alpha']:g} {100 * p['val_acc']:.1f}%" for p in curve))
        return best

    def _write_result(self, trainer: Trainer, pl_module: LightningModule, backbone: dict[str, Tensor],
                      head: dict[str, Tensor], val_acc: float) -> None:
        """Makes these weights the run's result: in the model, and over the best checkpoint."""
        pl_module.backbone.load_state_dict(backbone)
        pl_module.head.load_state_dict(head)
        ckpt = trainer.checkpoint_callback
        if isinstance(ckpt, ModelCheckpoint) and ckpt.best_model_path:
            trainer.save_checkpoint(ckpt.best_model_path, weights_only=False)  # said: no misleading log line
            ckpt.best_model_score = torch.tensor(val_acc)

    def _probe_backbone(self, pl_module: LightningModule) -> dict[str, Tensor]:
        """The backbone the probe was fitted on (rebuilt from the weights after a resume)."""
        return self._backbone_start or self._pretrained_state(pl_module)

    def _pretrained_state(self, pl_module: LightningModule) -> dict[str, Tensor]:
        hp = pl_module.hparams
        fresh = create_backbone(hp.backbone, weights=hp.weights, weights_path=hp.weights_path, **(hp.backbone_kwargs or {}))
        return {**fresh.state_dict(), **(self.bn_start or {})}

    # ---- resuming ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "probe_head": self.probe_head, "probe_acc": self.probe_acc, "n_val": self.n_val,
                "bn_start": self.bn_start}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.probe_head, self.probe_acc = state_dict.get("probe_head"), state_dict.get("probe_acc")
        self.n_val = state_dict.get("n_val", 0)
        self.bn_start = state_dict.get("bn_start")
