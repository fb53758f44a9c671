"""``python -m tlx {fit,validate,test,predict,lr_find,export,rank,fuse}``: LightningCLI with tlx's defaults."""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings

import yaml
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from tlx import cli_checks, resume
from tlx.callbacks import PredictionWriter, RunReport
from tlx.callbacks.finite_loss import StopOnNonFinite
from tlx.callbacks.last_checkpoint import LastCheckpoint, received_signal, signal_exit_code
from tlx.callbacks.random_state import RandomState
from tlx.checkpoint_guards import NO_SPACE_ERRNOS
from tlx.checkpointing import SafeCheckpointIO, load_error, safe_torch_load
from tlx.errors import TLXError
from tlx.models import ImageClassifier
from tlx.preprocessing import fed_preprocessing
from tlx.recipes import DEFAULT_RECIPE
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
    "export": "a checkpoint to TorchScript and/or ONNX (--quantize int8|dynamic|fp16), verified with onnxruntime.",
    "fuse": "combine fine-tuned checkpoints: weight soups, WiSE-FT, ensembles.",
    "rank": "rank pretrained backbones for a data set before training (LogME, LEEP, NCE, H-score, kNN).",
}


def _config_files(args: list[str]) -> list[str]:
    files = []
    for i, a in enumerate(args):
        if a == "--config" and i + 1 < len(args):
            files.append(args[i + 1])
        elif a.startswith("--config="):
            files.append(a.partition("=")[2])
    return files


def with_default_recipe(args: list[str]) -> list[str]:
    """``fit`` where neither a config nor a flag names a model runs the default recipe
    (tlx/recipes/default.yaml): it goes in as the first ``--config``, so the given configs (data,
    trainer fragments) and flags override it. A config with a ``model`` section, or a
    ``--model``/``--model.class_path`` flag, is a whole experiment and is left alone."""
    if not args or args[0] != "fit":
        return args
    if any(a in ("--model", "--model.class_path") or a.startswith(("--model=", "--model.class_path=")) for a in args):
        return args
    for file in _config_files(args):
        try:
            with open(file) as f:
                names_model = "model" in (yaml.safe_load(f) or {})
        except (OSError, yaml.YAMLError):
            return args  # LightningCLI reports the bad file itself
        if names_model:
            return args
    return [args[0], "--config", str(DEFAULT_RECIPE), *args[1:]]


# Options that take several values, written the shell way: `--backbones a b c`, `--ckpt_paths a.ckpt b.ckpt`
# (jsonargparse wants one list value).
LIST_OPTIONS = ("--backbones", "--metrics", "--ckpt_paths", "--alphas")
NUMBER_LISTS = ("--alphas",)


def gather_list_options(args: list[str], options: tuple[str, ...] = LIST_OPTIONS) -> list[str]:
    """``--opt a b c`` -> ``--opt=["a", "b", "c"]`` for ``options``; a value already written as a
    list (``--opt [a,b]``) and all other arguments unchanged."""
    out, i = [], 0
    while i < len(args):
        if args[i] in options:
            j = i + 1
            while j < len(args) and not args[j].startswith("--"):
                j += 1
            values = args[i + 1:j]
            if len(values) == 1 and values[0].startswith("["):
                out += args[i:j]
            else:
                numbers = args[i] in NUMBER_LISTS
                out.append(f"{args[i]}={json.dumps([_number(v) if numbers else v for v in values])}")
            i = j
        else:
            out.append(args[i])
            i += 1
    return out


def _number(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value  # jsonargparse names it in its error


class TLXCLI(LightningCLI):
    _resume_version: int | None = None  # set by `--ckpt_path last` (tlx/resume.py)

    def __init__(self, *args, **kwargs):
        kwargs["parser_kwargs"] = _parser_kwargs(kwargs.get("parser_kwargs"))
        if not args and isinstance(kwargs.get("args"), (list, tuple)):  # main() does it for sys.argv
            kwargs["args"] = with_default_recipe(list(kwargs["args"]))
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
            "rank": {"model", "datamodule"},
            "fuse": {"model", "datamodule"},
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
        # report.html in the run folder after fit and test; --run_report.enabled false turns it off
        parser.add_lightning_class_args(RunReport, "run_report")

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        if args is None or isinstance(args, (list, tuple)):
            args = gather_list_options(list(sys.argv[1:] if args is None else args))
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads the checkpoint's hyperparameters first (weights_only=True): say why it fails.
        # They replace the command's model settings: refuse when those named another architecture.
        sub = self.config.get("subcommand")
        asked = cli_checks.architecture(self.config[sub].get("model")) if sub else {}
        try:
            super()._parse_ckpt_path()
        except Exception as e:
            if isinstance(e, TLXError):
                raise
            raise load_error(self.config[self.config.subcommand].get("ckpt_path"), e) from e
        if sub:
            trained = cli_checks.architecture(self.config[sub].get("model"), explicit_only=False)
            cli_checks.check_same_architecture(asked, trained, self.config[sub].get("ckpt_path"))

    def _model_from_checkpoint(self, path: str) -> None:
        """The model config from a checkpoint's hyperparameters, as LightningCLI does for ``ckpt_path``."""
        hparams = dict(safe_torch_load(path).get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        self.config = self.parser.parse_object({self.subcommand: {"model": hparams}}, self.config)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        cli_checks.check_run_paths(self.subcommand, config)
        # bf16 asked for on hardware without it: fp32 instead, with a message saying why (tlx.speed).
        config.trainer.precision = resolve_precision(config.trainer.precision, str(config.trainer.accelerator))
        if config.get("ckpt_path") == resume.LAST:  # across version folders, see tlx/resume.py
            root, dirpath = config.trainer.get("default_root_dir"), config.get("checkpoint", {}).get("dirpath")
            config.ckpt_path, self._resume_version = resume.resolve_last(self.subcommand, root, dirpath)
            if config.ckpt_path:  # what LightningCLI does for a given path: take the checkpoint's hparams
                self._parse_ckpt_path()
                config = self.config[self.subcommand]
        if self.subcommand == "rank":  # rank builds its own backbones: the model's are not needed
            (config.model.get("init_args") or config.model)["weights"] = None
        if self.subcommand == "fuse" and config.get("ckpt_paths"):  # the network the checkpoints fit
            self._model_from_checkpoint(config.ckpt_paths[0])
            config = self.config[self.subcommand]
        # Evaluating or predicting from a checkpoint: its own weights replace the pretrained
        # ones, so do not fetch those (they may not be available on this machine).
        if self.subcommand in ("validate", "test", "predict", "export", "fuse"):
            config = self.config[self.subcommand]
            if (config.get("ckpt_path") and os.path.isfile(config.ckpt_path)) or config.get("ckpt_paths"):
                init_args = config.model.get("init_args") or config.model
                for key in ("weights", "weights_path"):
                    if key in init_args:  # not every model has them (an ensemble holds its members)
                        init_args[key] = None

    def instantiate_trainer(self, **kwargs) -> Trainer:
        # "Nothing lost": atomic, weights_only checkpoint IO; non-finite losses stop; RNG resumes.
        config = self._get(self.config_init, "trainer", default={})
        plugins = config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs.setdefault("plugins", plugins + [SafeCheckpointIO()])
        callbacks = config.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
        if config.get("logger") is False:  # LearningRateMonitor (in the default recipe) refuses a run with no logger
            callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
        # Built-ins the config does not already have (a second RandomState would clash as state).
        built_in = [cb for cb in (StopOnNonFinite(), RandomState()) if not any(isinstance(c, type(cb)) for c in callbacks)]
        kwargs.setdefault("callbacks", callbacks + built_in)
        if config.get("logger") in (None, True):
            root = config.get("default_root_dir") or os.getcwd()
            version = self._resume_version
            if version is None and self.subcommand == "fit" and cli_checks.is_global_rank_zero():
                # Two fits started at once into one root: one version folder each (tlx/cli_checks.py).
                version = cli_checks.claim_version(os.path.join(root, "lightning_logs"))
            if version is not None:
                kwargs.setdefault("logger", TensorBoardLogger(root, version=version))
        return super().instantiate_trainer(**kwargs)


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not the one at construction:
    a notebook or a test harness that swaps (and later closes) ``sys.stderr`` must not leave tlx
    writing into a closed stream ("I/O operation on closed file")."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _configure_logging() -> None:
    logger = logging.getLogger("tlx")
    if not logger.handlers:
        handler = _CurrentStderrHandler()
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
    if args is None:  # the default recipe, unless a config or flag names a model
        sys.argv[1:] = with_default_recipe(sys.argv[1:])
    try:
        cli_checks.check_config_files(sys.argv[1:] if args is None else list(args))
        TLXCLI(args=args)
    except Exception as e:
        # jsonargparse wraps errors raised while instantiating classes (an unknown backbone, say).
        cause = _tlx_error(e)
        if cause is not None:
            print(f"tlx: error: {cause}", file=sys.stderr)
            sys.exit(2)
        if os.environ.get("TLX_TRACEBACK") == "1":
            raise
        if isinstance(e, OSError) and e.errno in NO_SPACE_ERRNOS:  # config.yaml, predictions.csv, logs, ...
            print(f"tlx: error: no space left on device while writing {e.filename or 'a file'}; free space and run "
                  "again (checkpoints already written are intact).", file=sys.stderr)
            sys.exit(2)
        print(cli_checks.report_unexpected(e), file=sys.stderr)  # one line; the traceback goes to a file
        sys.exit(1)
    except SIGTERMException:
        name = received_signal() or "SIGTERM"
        print(f"tlx: stopped by {name} after saving a checkpoint; resume with --ckpt_path last.", file=sys.stderr)
        sys.exit(signal_exit_code(name))
    except KeyboardInterrupt:
        print("tlx: interrupted (Ctrl-C) before training started; nothing was saved.", file=sys.stderr)
        sys.exit(130)
