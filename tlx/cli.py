"""``python -m tlx {fit,validate,test,predict,lr_find,export}``: LightningCLI with tlx's defaults."""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings

from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from tlx import resume
from tlx.callbacks import PredictionWriter
from tlx.callbacks.finite_loss import StopOnNonFinite
from tlx.callbacks.last_checkpoint import EXIT_CODE as PREEMPTED_EXIT_CODE
from tlx.callbacks.last_checkpoint import LastCheckpoint
from tlx.callbacks.random_state import RandomState
from tlx.checkpointing import SafeCheckpointIO, load_error
from tlx.errors import TLXError
from tlx.models import ImageClassifier
from tlx.preprocessing import fed_preprocessing
from tlx.trainer import TLXTrainer
from tlx.speed.precision import resolve_precision


class SaveRunInfo(SaveConfigCallback):
    """Beside the resolved ``config.yaml``: ``run.json`` with class names and preprocessing."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # trainer.log_dir is a collective (broadcast) under DDP: every rank must call it, so not in
        # save_config, which runs on rank 0 only (a deadlock otherwise).
        self._log_dir = trainer.log_dir
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        info = {
            "class_names": getattr(datamodule, "class_names", None) or getattr(pl_module, "class_names", None),
            # what the data feeds the model (the model adopts it in its setup, after this hook)
            "preprocessing": fed_preprocessing(pl_module, datamodule).to_dict(),
            "backbone": getattr(getattr(pl_module, "backbone", None), "name", None),
            "stage": stage,
        }
        with open(os.path.join(self._log_dir, "run.json"), "w") as f:
            json.dump(info, f, indent=2)


DESCRIPTION = (
    "tlx: transfer learning for images on PyTorch Lightning. Fine-tune a pretrained backbone on "
    "class folders: `tlx fit --config configs/hymenoptera.yaml`. The data options are listed by "
    "`tlx fit --data.help ImageFolderDataModule`, the model's by `tlx fit --model.help ImageClassifier`."
)


def _parser_kwargs(given: dict | None) -> dict:
    """Say what tlx is on every ``--help`` (LightningCLI's default is "Lightning Trainer command line
    tool", and a subcommand's is the Trainer method's docstring, which shows no data options)."""
    kwargs = dict(given or {})
    kwargs.setdefault("description", DESCRIPTION)
    kwargs.setdefault("prog", "tlx")  # the console script; `python -m tlx` is the same
    for subcommand in TLXCLI.subcommands():
        sub = dict(kwargs.get(subcommand) or {})
        sub.setdefault("description", f"tlx {subcommand}: {_SUBCOMMAND_HELP.get(subcommand, '')} {DESCRIPTION}")
        kwargs[subcommand] = sub
    return kwargs


_SUBCOMMAND_HELP = {
    "fit": "train a classifier (the best and last checkpoints go to lightning_logs/version_N/checkpoints).",
    "validate": "evaluate a checkpoint (--ckpt_path) on the validation split.",
    "test": "evaluate a checkpoint (--ckpt_path) on the test split (the validation split without one).",
    "predict": "class probabilities for --data.predict_dir or --data.predict_files, to predictions.csv.",
    "lr_find": "learning-rate range test: loss versus learning rate, and a suggested rate.",
    "export": "a checkpoint to TorchScript and/or ONNX, verified with onnxruntime.",
}


class TLXCLI(LightningCLI):
    _resume_version: int | None = None  # set by `--ckpt_path last` (tlx/resume.py)

    def __init__(self, *args, **kwargs):
        kwargs["parser_kwargs"] = _parser_kwargs(kwargs.get("parser_kwargs"))
        kwargs.setdefault("model_class", ImageClassifier)
        kwargs.setdefault("datamodule_class", LightningDataModule)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("seed_everything_default", 42)
        kwargs.setdefault("save_config_callback", SaveRunInfo)
        # Re-running into an existing log directory must not fail on the saved config.
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("trainer_class", TLXTrainer)  # adds the lr_find and export subcommands
        super().__init__(*args, **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # Extra subcommands run TLXTrainer methods (tlx/tuning.py, tlx/export.py hold the logic).
        return {
            **LightningCLI.subcommands(),
            "lr_find": {"model", "datamodule"},
            "export": {"model", "datamodule"},
        }

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.filename": "best",
                "checkpoint.save_last": True,
                "checkpoint.auto_insert_metric_name": False,
                "model": {"class_path": "tlx.models.ImageClassifier"},
                "data": {"class_path": "tlx.data.ImageFolderDataModule"},
            }
        )
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads the checkpoint's hyperparameters first (weights_only=True): say why it fails.
        try:
            super()._parse_ckpt_path()
        except Exception as e:
            if isinstance(e, TLXError):
                raise
            raise load_error(self.config[self.config.subcommand].get("ckpt_path"), e) from e

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        # bf16 asked for on hardware without it: fp32 instead, with a message saying why (tlx.speed).
        config.trainer.precision = resolve_precision(config.trainer.precision, str(config.trainer.accelerator))
        if config.get("ckpt_path") == resume.LAST:  # across version folders, see tlx/resume.py
            root, dirpath = config.trainer.get("default_root_dir"), config.get("checkpoint", {}).get("dirpath")
            config.ckpt_path, self._resume_version = resume.resolve_last(self.subcommand, root, dirpath)
            if config.ckpt_path:  # what LightningCLI does for a given path: take the checkpoint's hparams
                self._parse_ckpt_path()
                config = self.config[self.subcommand]
        # Evaluating or predicting from a checkpoint: its own weights replace the pretrained
        # ones, so do not fetch those (they may not be available on this machine).
        if self.subcommand in ("validate", "test", "predict", "export"):
            config = self.config[self.subcommand]
            if config.get("ckpt_path") and os.path.isfile(config.ckpt_path):
                init_args = config.model.get("init_args") or config.model
                init_args["weights"] = None
                init_args["weights_path"] = None

    def instantiate_trainer(self, **kwargs) -> Trainer:
        # "Nothing lost": atomic, weights_only checkpoint IO; non-finite losses stop; RNG resumes.
        config = self._get(self.config_init, "trainer", default={})
        plugins = config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs.setdefault("plugins", plugins + [SafeCheckpointIO()])
        callbacks = config.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
        # Built-ins the config does not already have (a second RandomState would clash as state).
        built_in = [cb for cb in (StopOnNonFinite(), RandomState()) if not any(isinstance(c, type(cb)) for c in callbacks)]
        kwargs.setdefault("callbacks", callbacks + built_in)
        if self._resume_version is not None and config.get("logger") in (None, True):
            kwargs.setdefault("logger", TensorBoardLogger(config.get("default_root_dir") or os.getcwd(),
                                                          version=self._resume_version))
        return super().instantiate_trainer(**kwargs)


def _configure_logging() -> None:
    logger = logging.getLogger("tlx")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[tlx] %(levelname)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _tlx_error(e: BaseException | None) -> TLXError | None:
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, TLXError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def main(args: list[str] | None = None) -> None:
    _configure_logging()
    # Lightning's own use of a deprecated torch API; nothing a user can act on.
    warnings.filterwarnings("ignore", message=".*treespec.*")
    try:
        TLXCLI(args=args)
    except Exception as e:
        # jsonargparse wraps errors raised while instantiating classes (an unknown backbone, say).
        cause = _tlx_error(e)
        if cause is None:
            raise
        print(f"tlx: error: {cause}", file=sys.stderr)
        sys.exit(2)
    except SIGTERMException:
        print("tlx: stopped by SIGTERM after saving a checkpoint; resume with --ckpt_path last.", file=sys.stderr)
        sys.exit(PREEMPTED_EXIT_CODE)
