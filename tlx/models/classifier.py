"""ImageClassifier: a pretrained backbone plus a pluggable head, trained with Lightning."""

from __future__ import annotations

import warnings
import logging
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MeanMetric

from tlx.backbones import create_backbone
from tlx.calibration import add_temperature, calibrated_probabilities
from tlx.errors import DataError, TLXError
from tlx.figures import figure_loggers, log_figure
from tlx.heads import HeadFactory, LinearHead
from tlx.inference import Images, Prediction, predict
from tlx.metrics import confusion_figure, per_class_metrics, scalar_metrics
from tlx.models.multilabel import DEFAULT_THRESHOLD, MultilabelMetrics, chosen, multilabel_loss
from tlx.optim import ParamGroup, ParamGroupsProvider, optimizer_param_groups, scale_learning_rates
from tlx.options import check_options
from tlx.plain import from_plain, to_plain
from tlx.preprocessing import fed_preprocessing, resolve_preprocessing
from tlx.visuals import never_fatal

log = logging.getLogger("tlx")


class ImageClassifier(LightningModule):
    """Backbone -> pooled features -> head -> logits.

    Args:
        backbone: ``source:name`` (``torchvision:mobilenet_v2``, ``timm:resnet18``) or a packaged
            offline backbone (``efficientnet_lite0``); ``python -m tlx.backbones`` lists them.
        weights: pretrained weights: ``DEFAULT``, a torchvision enum name (``IMAGENET1K_V1``), a timm
            tag; ``null`` for random initialisation.
        weights_path: a local weights file for the backbone (replaces ``weights``).
        backbone_kwargs: extra arguments for the backbone constructor (e.g. ``drop_path_rate``).
        head: the classifier head, called as ``head(num_features, num_classes)``; default
            :class:`~tlx.heads.LinearHead`.
        class_names: filled in from the data (and stored in checkpoints); set it only to pin them.
        task: ``multiclass`` (softmax, cross-entropy) or ``multilabel`` (a sigmoid per class, binary
            cross-entropy, mAP/F1, per-class thresholds fitted on validation: :mod:`tlx.models.multilabel`);
            filled in from the data (:class:`~tlx.data.CsvDataModule` says which) and stored in checkpoints.
        optimizer: called with named parameter groups: the trainable parameters (``all``), or
            the groups of the fine-tuning strategy in ``trainer.callbacks`` (which sets
            :attr:`param_groups_provider`), each group's LR scaled by its ``lr_scale``; default
            AdamW (lr 1e-3). (Defaults are ``None`` so that jsonargparse cannot carry a default
            class's arguments, such as AdamW's weight decay, into the class a config names instead.)
        lr_scheduler: called with the optimizer; a scheduler with ``set_total_steps``
            (:class:`tlx.optim.WarmupCosine`) is told the run's length in scheduler steps.
        lr_scheduler_interval: step the scheduler every ``epoch`` or every optimizer ``step``.
        no_decay_norm_bias: exempt norm layers, biases and ``no_weight_decay()`` parameters (a
            ViT's ``pos_embed``, ``cls_token``) from weight decay, as timm does; each group
            ``name`` then has a ``name.no_decay`` partner. Only where the optimizer decays.
        label_smoothing: cross-entropy label smoothing.
        preprocessing: preprocessing override (``input_size``, ``resize_size``, ``interpolation``,
            ``mean``, ``std``); by default the backbone weights' own. A data module's
            ``preprocessing`` overrides this one in turn, and the checkpoint records what the data
            fed (:func:`tlx.preprocessing.resolve_preprocessing`).
        data_config: the former name of ``preprocessing`` (deprecated; still read from checkpoints).
    """

    task: str | None = None  # set in __init__; a subclass that skips it (an ensemble) is multiclass

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
        lr_scheduler_interval: Literal["epoch", "step"] = "epoch",
        no_decay_norm_bias: bool = True,
        task: Literal["multiclass", "multilabel"] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        check_options({"label_smoothing": label_smoothing}, "model")
        for key in ("head", "optimizer", "lr_scheduler"):
            self.hparams[key] = to_plain(self.hparams.get(key))
        self.backbone = create_backbone(backbone, weights=weights, weights_path=weights_path, **(backbone_kwargs or {}))
        if data_config is not None and preprocessing is None:
            warnings.warn("model.data_config is deprecated: name it model.preprocessing.", FutureWarning, stacklevel=2)
            preprocessing = data_config
        self.preprocessing = resolve_preprocessing(self.backbone.preprocessing, preprocessing)
        self.hparams["preprocessing"], self.hparams["data_config"] = self.preprocessing.to_dict(), None
        self.head_factory = from_plain(head) or LinearHead
        self.optimizer_factory = from_plain(optimizer) or torch.optim.AdamW
        self.scheduler_factory = from_plain(lr_scheduler)
        self.input_kind = "images"  # or "features": see take_features
        self._top: list[nn.Module] = []  # the trainable top of a cut backbone, while it takes activations
        if lr_scheduler_interval not in ("epoch", "step"):
            raise TLXError(f"model.lr_scheduler_interval must be 'epoch' or 'step', got {lr_scheduler_interval!r}.")
        # Set from outside, read once in configure_optimizers: the strategy's groups
        # (tlx.finetuning) and the batch-size LR factor (tlx.callbacks.ScaleLearningRate).
        self.param_groups_provider: ParamGroupsProvider | None = None
        self.lr_factor = 1.0
        self.class_names = list(class_names) if class_names else None
        self.task = task
        self.head: torch.nn.Module | None = None
        add_temperature(self)  # T of temperature scaling (tlx.callbacks.TemperatureScaling); 1 until fitted
        if self.class_names:
            self._build_head()

    @property
    def num_classes(self) -> int | None:
        return len(self.class_names) if self.class_names else None

    def _build_head(self) -> None:
        n = self.num_classes
        self.head = self.head_factory(self.feature_dim, n)
        self.task = self.task or "multiclass"
        if self.task == "multilabel":  # in the state dict, so in every checkpoint
            self.register_buffer("label_thresholds", torch.full((n,), DEFAULT_THRESHOLD))
            self.val_multilabel, self.test_multilabel = MultilabelMetrics(n), MultilabelMetrics(n)
        else:
            self.train_acc = scalar_metrics(n, "train/")["acc"]
            self.val_metrics = scalar_metrics(n, "val/")
            self.test_metrics = scalar_metrics(n, "test/")
            self.val_details = per_class_metrics(n)
            self.test_details = per_class_metrics(n)
        # Evaluation loss as a metric: summed over ranks under DDP, so it equals the single-process
        # mean also when shards differ in size (sync_dist would average the ranks' means).
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()

    # ---- classes flow in from the data -------------------------------------------------------
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        data_classes = getattr(datamodule, "class_names", None)
        if self.class_names is None:
            if data_classes is None:
                raise DataError("No class names: give data.root (class folders) or a checkpoint via --ckpt_path.")
            self.class_names = list(data_classes)
        elif data_classes is not None and list(data_classes) != self.class_names:
            raise DataError(
                f"The model's classes {self.class_names} differ from the data's {list(data_classes)}: "
                "a checkpoint only fits data with the same class folders."
            )
        self.hparams["class_names"] = self.class_names
        data_task = getattr(datamodule, "task", None)  # multiclass / multilabel: the one place it is adopted
        if self.task is None:
            self.task = data_task
        elif data_task is not None and data_task != self.task:
            raise DataError(f"The model's task is {self.task!r} but the data is {data_task!r}: set model.task: "
                            f"{data_task} (or use a checkpoint trained on {data_task} data).")
        if "task" in self.hparams:  # a subclass without the argument (an ensemble) keeps its hparams loadable
            self.hparams["task"] = self.task
        # data.preprocessing overrides the model's: record what the data really feeds the model,
        # so that the checkpoint (predict, export) preprocesses as training did.
        self.preprocessing = fed_preprocessing(self, datamodule)
        self.hparams["preprocessing"] = self.preprocessing.to_dict()

    def configure_model(self) -> None:
        if self.head is None and self.class_names:
            self._build_head()

    # ---- steps -------------------------------------------------------------------------------
    @property
    def feature_dim(self) -> int:
        """Width of what :meth:`features` returns (the head's input); subclasses may add layers."""
        return self.backbone.num_features

    def take_features(self, enabled: bool = True, top: nn.Module | None = None) -> None:
        """Take the backbone's pooled outputs, precomputed, as input instead of images (or, with
        ``enabled=False``, images again): :class:`tlx.speed.FeatureCache` switches this for a fit.
        With ``top`` (a backbone cut in two, :func:`tlx.backbones.split_backbone`), the input is the
        frozen bottom's activations and ``top`` (sharing the backbone's parameters) runs on them."""
        self.input_kind = "features" if enabled else "images"
        # In a list: registered as a submodule, the top would list the backbone's parameters twice.
        self._top = [top] if enabled and top is not None else []

    def features(self, x: Tensor) -> Tensor:
        """Images (or, after :meth:`take_features`, backbone features) to the features the head sees."""
        if self.input_kind == "images":
            return self.backbone(x)
        if self._top:
            return self._top[0](x)
        if x.ndim != 2:
            raise TLXError(f"The model takes precomputed backbone features (B, D), got a batch of shape {tuple(x.shape)}.")
        return x

    def feature_network(self) -> nn.Module:
        """:meth:`features` on images as one plain module (export traces it)."""
        return self.backbone

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = self.loss(logits, y, self.hparams.label_smoothing)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(x))
        if y.ndim == 1:  # hard labels (MixUp/CutMix give soft ones, where accuracy means little)
            self.train_acc(logits, y)
            self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=len(x))
        return loss

    def loss(self, logits: Tensor, y: Tensor, label_smoothing: float = 0.0) -> Tensor:
        if self.task == "multilabel":
            return multilabel_loss(logits, y, label_smoothing)
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing)

    def probabilities(self, logits: Tensor) -> Tensor:
        """Class probabilities: ``softmax(logits / T)`` over the classes (T: temperature scaling, 1 until
        fitted), or for multi-label a sigmoid per class (its thresholds are its calibration)."""
        return logits.float().sigmoid() if self.task == "multilabel" else calibrated_probabilities(self, logits)

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        logits = self(x)
        mean_loss = self.val_loss if stage == "val" else self.test_loss
        mean_loss.update(self.loss(logits, y), weight=len(x))
        self.log(f"{stage}/loss", mean_loss, on_epoch=True, prog_bar=True, batch_size=len(x))
        if self.task == "multilabel":
            self._evaluate_multilabel(logits, y, stage)
            return logits
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        metrics(logits / self.temperature, y)  # the arg-max metrics do not change; ece is of the calibrated model
        (self.val_details if stage == "val" else self.test_details).update(logits, y)
        self.log_dict(metrics, on_epoch=True, prog_bar=True, batch_size=len(x))
        return logits

    # The logits go to callbacks (prediction gallery, top losses) without a second forward pass.
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._evaluate(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._evaluate(batch, "test")

    def _evaluate_multilabel(self, logits: Tensor, y: Tensor, stage: str) -> None:
        # validation decides at 0.5 (its images fit the thresholds: see tlx/models/multilabel.py)
        thresholds = self.label_thresholds if stage == "test" else DEFAULT_THRESHOLD
        metrics = self.val_multilabel if stage == "val" else self.test_multilabel
        metrics.update(self.probabilities(logits.float()), y, thresholds)

    def _log_multilabel(self, stage: str) -> None:
        metrics = self.val_multilabel if stage == "val" else self.test_multilabel
        self.log_dict(metrics.compute(f"{stage}/", self.class_names), on_epoch=True)
        if stage == "val" and self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self.label_thresholds.copy_(metrics.best_thresholds())
        metrics.reset()

    def _log_details(self, stage: str) -> None:
        if self.task == "multilabel":
            self._log_multilabel(stage)
            return
        details = self.val_details if stage == "val" else self.test_details
        values = details.compute()
        details.reset()
        per_class = {f"{stage}/acc_class/{name}": v for name, v in zip(self.class_names, values["acc_per_class"])}
        self.log_dict(per_class, on_epoch=True)
        if self.trainer.sanity_checking or not figure_loggers(self.trainer):
            return
        with never_fatal(f"{stage}/confusion_matrix"):
            fig = confusion_figure(values["confusion"], self.class_names)
            log_figure(self.trainer, f"{stage}/confusion_matrix", fig, self.current_epoch)

    def on_validation_epoch_end(self) -> None:
        self._log_details("val")

    def on_test_epoch_end(self) -> None:
        self._log_details("test")

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        x, index = batch
        if x.ndim == 5:  # test-time augmentation: (B, views, C, H, W); average the views' probabilities
            b, v = x.shape[:2]
            probs = self.probabilities(self(x.flatten(0, 1))).view(b, v, -1).mean(dim=1)
        else:
            probs = self.probabilities(self(x))
        if self.task == "multilabel":  # every label at or above its threshold
            return {"index": index, "probs": probs, "chosen": chosen(probs, self.label_thresholds)}
        return {"index": index, "probs": probs}

    def predict(self, images: Images, batch_size: int = 32) -> Prediction | list[Prediction]:
        """Class names and probabilities for a PIL image or a path (one :class:`~tlx.inference.Prediction`),
        or a list of them or a folder (a list), preprocessed as in evaluation (:mod:`tlx.inference`)."""
        if not self.class_names:
            raise TLXError("predict needs a trained model: tlx.load('best.ckpt'), or fit it first.")
        return predict(self, images, batch_size=batch_size)

    # ---- optimisation ------------------------------------------------------------------------
    def _named_groups(self) -> list[ParamGroup]:
        if self.param_groups_provider is not None:
            return self.param_groups_provider.param_groups(self)
        return [ParamGroup("all", [p for p in self.parameters() if p.requires_grad])]

    def _scheduler_steps(self) -> int:
        """The run's length in scheduler steps (the one place it is resolved)."""
        if self.hparams.get("lr_scheduler_interval", "epoch") == "step":
            return int(self.trainer.estimated_stepping_batches)
        return int(self.trainer.max_epochs)

    def configure_optimizers(self) -> Any:
        groups = self._named_groups()
        optimizer = self.optimizer_factory(optimizer_param_groups(self, groups, exempt_from_decay=False))
        if self.hparams.get("no_decay_norm_bias", True) and optimizer.defaults.get("weight_decay"):
            optimizer = self.optimizer_factory(optimizer_param_groups(self, groups, exempt_from_decay=True))
        scheduler = self.scheduler_factory(optimizer) if self.scheduler_factory is not None else None
        if hasattr(scheduler, "set_total_steps"):
            scheduler.set_total_steps(self._scheduler_steps())
        scale_learning_rates(optimizer, scheduler, self.lr_factor)
        if scheduler is None:
            return optimizer
        config = {"scheduler": scheduler, "interval": self.hparams.get("lr_scheduler_interval", "epoch")}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = "val/loss"
        return {"optimizer": optimizer, "lr_scheduler": config}
