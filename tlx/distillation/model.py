"""DistillationClassifier: an ImageClassifier student trained against a frozen teacher."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tlx.checkpointing import atomic_torch_save, safe_torch_load
from tlx.distillation.base import DistillationLoss, Outputs, loss_from
from tlx.distillation.teacher import Teacher, network_outputs
from tlx.errors import DataError, TLXError
from tlx.models import ImageClassifier
from tlx.modes import evaluating

log = logging.getLogger("tlx")

STUDENT_CKPT = "student.ckpt"


class DistillationClassifier(ImageClassifier):
    """A student :class:`~tlx.models.ImageClassifier` learning from the labels and a frozen teacher.

    Training loss: ``ce_weight * cross-entropy + sum(loss(student, teacher))`` over ``losses``
    (each :mod:`tlx.distillation` loss carries its own weight): ``KD`` (soft targets), ``Hint``
    (FitNets), ``Attention`` (AT), ``RKD`` (distances and angles), ``SP`` (similarity-preserving).
    The teacher sees the same view as the student, resampled and normalised for its own
    preprocessing. Validation, testing, prediction and export are the student's alone.

    At the end of fit, ``student.ckpt`` beside the best checkpoint is the student as an ordinary
    ImageClassifier checkpoint (no teacher, no loss layers): ``test``, ``predict``, ``export`` and
    ``fuse`` take it like any other. ``best.ckpt``/``last.ckpt`` stay distillation checkpoints, so
    that ``--ckpt_path last`` resumes the distillation.

    Args:
        teacher_ckpt: the teacher's tlx checkpoint (its classes must be the data's).
        losses: distillation losses, e.g. ``[{class_path: tlx.distillation.KD, init_args: {temperature: 4}}]``.
        ce_weight: weight of the cross-entropy on the labels.
        feature_stage: timm stage index of the feature maps for hint/attention/sp (-1: the last
            stage, before the final 1x1 convolution), in both networks.
        teacher_cache_size: teacher outputs kept per distinct view (0: recompute every step).
        **kwargs: the student's ``ImageClassifier`` arguments (backbone, weights, head, optimizer, ...).
    """

    def __init__(
        self,
        teacher_ckpt: str,
        losses: list[DistillationLoss] | None = None,
        ce_weight: float = 1.0,
        feature_stage: int = -1,
        teacher_cache_size: int = 0,
        **kwargs: Any,
    ):
        with warnings.catch_warnings():  # "losses is an nn.Module": replaced by plain data below
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
            super().__init__(**kwargs)
        self.losses = nn.ModuleList([loss_from(spec) for spec in (losses or [])])
        self.hparams["losses"] = [loss.describe() for loss in self.losses]
        needs = {loss.needs for loss in self.losses}
        self.feature_stage = feature_stage if "feature_map" in needs else None
        self.teacher = Teacher(teacher_ckpt, self.feature_stage, teacher_cache_size)
        if self.class_names and self.class_names != self.teacher.class_names:
            raise DataError(self._class_mismatch(self.class_names))
        self._build_losses()

    def _class_mismatch(self, classes: list[str]) -> str:
        return (f"The teacher {self.hparams.teacher_ckpt!r} knows classes {self.teacher.class_names}, the data "
                f"{classes}: distil from a teacher trained on the same class folders.")

    @torch.no_grad()
    def _build_losses(self) -> None:
        """Give each loss the widths it compares (a probe pass of one image through both nets)."""
        if not any(loss.needs != "logits" for loss in self.losses):
            return
        probe = torch.zeros(1, 3, self.preprocessing.input_size, self.preprocessing.input_size)
        with evaluating(self.backbone):
            s = network_outputs(self.backbone, nn.Identity(), probe, self.feature_stage)
        t = self.teacher.compute(probe, self.preprocessing)
        for loss in self.losses:
            if loss.needs != "logits":
                loss.build(getattr(s, loss.needs).shape[1], getattr(t, loss.needs).shape[1])

    def setup(self, stage: str) -> None:
        data_classes = getattr(getattr(self.trainer, "datamodule", None), "class_names", None)
        if data_classes is not None and list(data_classes) != self.teacher.class_names:
            raise DataError(self._class_mismatch(list(data_classes)))
        super().setup(stage)

    # ---- training ----------------------------------------------------------------------------
    def student_outputs(self, x: Tensor) -> Outputs:
        return network_outputs(self.backbone, self.head, x, self.feature_stage)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        if x.ndim != 4:
            raise TLXError("DistillationClassifier trains on images (the teacher needs them), not cached features.")
        student = self.student_outputs(x)
        teacher = self.teacher(x, self.preprocessing)
        ce = F.cross_entropy(student.logits, y, label_smoothing=self.hparams.label_smoothing)
        log = dict(on_step=True, on_epoch=True, batch_size=len(x))
        loss = self.hparams.ce_weight * ce
        self.log("train/ce_loss", ce, **log)
        for term in self.losses:
            value = term(student, teacher)
            self.log(f"train/{term.name}_loss", value, **log)
            loss = loss + value
        self.log("train/loss", loss, prog_bar=True, **log)
        if y.ndim == 1:
            self.train_acc(student.logits, y)
            self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=len(x))
        return loss

    # ---- the student as an ordinary checkpoint -------------------------------------------------
    def on_fit_end(self) -> None:
        callback = self.trainer.checkpoint_callback
        best = getattr(callback, "best_model_path", "") if callback is not None else ""
        if best and self.trainer.is_global_zero and Path(best).is_file():
            out = Path(best).with_name(STUDENT_CKPT)
            atomic_torch_save(student_checkpoint(safe_torch_load(best)), out)
            log.info("Student checkpoint (an ordinary ImageClassifier one): %s", out)


def student_checkpoint(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A DistillationClassifier checkpoint reduced to its student: an ImageClassifier checkpoint
    (weights of backbone and head, the student's hyperparameters; no teacher, no loss layers,
    no training state)."""
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    for key in ("teacher_ckpt", "losses", "ce_weight", "feature_stage", "teacher_cache_size"):
        hparams.pop(key, None)
    hparams["_class_path"] = "tlx.models.ImageClassifier"
    state = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith(("backbone.", "head."))}
    keep = ("epoch", "global_step", "pytorch-lightning_version")
    return {**{k: checkpoint[k] for k in keep if k in checkpoint}, "state_dict": state, "hyper_parameters": hparams}
