"""DomainAdaptationClassifier: ImageClassifier trained on a source and a target batch per step."""

from __future__ import annotations

import warnings
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import CatMetric

from tlx.compat import attached_trainer
from tlx.domain_adaptation.objectives import DomainBatch, Objective, SourceOnly
from tlx.domain_adaptation.selection import prediction_entropy, soft_neighborhood_density
from tlx.errors import TLXError
from tlx.heads import HeadFactory
from tlx.models import ImageClassifier
from tlx.plain import instance_of


def _objective_from(spec: Objective | dict | str | None) -> Objective:
    """An objective, or its description as stored in a checkpoint's hyperparameters."""
    return SourceOnly() if spec is None else instance_of(spec, Objective, "objective")


class DomainAdaptationClassifier(ImageClassifier):
    """An :class:`~tlx.models.ImageClassifier` with a bottleneck and a transfer ``objective``.

    Each training step runs the source and the target batch through the network together, then
    adds the objective's loss (e.g. DANN's domain loss) to the source cross-entropy, which the
    objective may re-weight per sample (instance weighting). Validation, testing and prediction
    are those of ``ImageClassifier``, and each validation also logs ``val/snd`` and ``val/entropy``,
    criteria that need no labels (:mod:`tlx.domain_adaptation.selection`): on the target when it is
    the validation set (target class folders), so a checkpoint can be chosen without its labels
    (``--checkpoint.monitor val/snd --checkpoint.mode max``).
    Use with :class:`~tlx.domain_adaptation.DomainAdaptationDataModule`.

    Args:
        objective: a :class:`~tlx.domain_adaptation.objectives.Objective` (``SourceOnly``,
            ``DANN``, ``CDAN``, ``DAN``, ``CORAL``, ``MCC``, ``InstanceWeighting``); default
            source-only.
        bottleneck_dim: width of a Linear-BatchNorm-ReLU layer between the backbone and the head,
            where the features are aligned (as in the reference implementations); ``null``: none.
        feature_dropout: dropout on the backbone's features, before the bottleneck. Without it the
            bottleneck (BatchNorm rescales every direction of the features, the source-specific ones
            too) fits the source and loses target accuracy: on frozen Lite0 features, source-only
            A->W 70.1 without, 77.2 with 0.5 (issue 14).
        The other arguments are those of ``ImageClassifier``.
    """

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        weights: str | None = "DEFAULT",
        weights_path: str | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        head: HeadFactory | None = None,
        class_names: list[str] | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        label_smoothing: float = 0.0,
        preprocessing: dict[str, Any] | None = None,
        data_config: dict[str, Any] | None = None,
        objective: Objective | None = None,
        bottleneck_dim: int | None = 256,
        feature_dropout: float = 0.5,
        lr_scheduler_interval: Literal["epoch", "step"] = "epoch",
        no_decay_norm_bias: bool = True,
        task: Literal["multiclass"] | None = None,
    ):
        # The head is built below, once the bottleneck (its input) and the objective exist.
        with warnings.catch_warnings():  # "objective is an nn.Module": replaced by plain data below
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
            super().__init__(backbone, weights, weights_path, backbone_kwargs, head, None, optimizer, lr_scheduler,
                             label_smoothing, preprocessing, data_config, lr_scheduler_interval, no_decay_norm_bias, task)
        self.objective = _objective_from(objective)
        # Plain data in the hyperparameters: checkpoints load with weights_only=True.
        self.hparams["objective"] = self.objective.describe()
        self.bottleneck_dim = bottleneck_dim
        width = self.backbone.num_features
        # Its own module, not the bottleneck's first layer: the bottleneck's state_dict keys stay.
        self.feature_dropout = nn.Dropout(feature_dropout)
        self.bottleneck = (
            nn.Sequential(nn.Linear(width, bottleneck_dim), nn.BatchNorm1d(bottleneck_dim), nn.ReLU())
            if bottleneck_dim
            else nn.Identity()
        )
        self.class_names = list(class_names) if class_names else None
        self.hparams["class_names"] = self.class_names
        if self.class_names:
            self._build_head()

    @property
    def feature_dim(self) -> int:
        return self.bottleneck_dim or self.backbone.num_features

    def features(self, x: Tensor) -> Tensor:
        return self.bottleneck(self.feature_dropout(super().features(x)))

    def feature_network(self) -> nn.Module:
        return nn.Sequential(self.backbone, self.feature_dropout, self.bottleneck)

    def _build_head(self) -> None:
        super()._build_head()
        self.objective.build(self.feature_dim, self.num_classes)
        # Every validation prediction (of all ranks, under DDP) for the label-free criteria.
        self.val_probs = CatMetric()

    # ---- validation: label-free model selection ------------------------------------------------
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        logits = super().validation_step(batch, batch_idx)
        self.val_probs.update(logits.detach().float().softmax(dim=1))
        return logits

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if self.val_probs.update_count == 0:
            return
        probs = self.val_probs.compute()
        self.val_probs.reset()
        self.log_dict({"val/snd": soft_neighborhood_density(probs), "val/entropy": prediction_entropy(probs)})

    # ---- training ----------------------------------------------------------------------------
    @property
    def progress(self) -> float:
        """Fraction of training done, for the objectives' warm-start schedules."""
        trainer = attached_trainer(self)
        if trainer is None:
            return 1.0
        total = trainer.estimated_stepping_batches
        if not total or total == float("inf"):
            return 1.0
        return min(trainer.global_step / total, 1.0)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        if not isinstance(batch, dict) or "source" not in batch or "target" not in batch:
            raise TLXError("DomainAdaptationClassifier needs source and target batches: use "
                           "data.class_path: tlx.domain_adaptation.DomainAdaptationDataModule.")
        (xs, ys), (xt, _) = batch["source"], batch["target"]
        ns = len(xs)
        # One pass over both domains: BatchNorm sees (and normalises) them together.
        f = self.features(torch.cat([xs, xt]))
        logits = self.head(f)
        out = self.objective(DomainBatch(f[:ns], f[ns:], logits[:ns], logits[ns:], ys, self.progress))
        ce = F.cross_entropy(logits[:ns].float(), ys, reduction="none", label_smoothing=self.hparams.label_smoothing)
        w = out.source_weights
        # Objectives give weights of mean 1 (importance_weights), so the mean is the weighted mean.
        cls_loss = ce.mean() if w is None else (ce * w).mean()
        loss = cls_loss + out.loss
        log = dict(on_step=True, on_epoch=True, batch_size=ns)
        self.log("train/loss", loss, prog_bar=True, **log)
        self.log("train/cls_loss", cls_loss, **log)
        self.log("train/transfer_loss", out.loss, **log)
        self.log_dict({f"train/{k}": v for k, v in out.logs.items()}, **log)
        self.train_acc(logits[:ns], ys)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=ns)
        return loss
