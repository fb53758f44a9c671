"""Everything tests share, in one module: paths to the real data, tiny generated image folders,
tiny models, running the CLI in-process, the fine-tuning recorder, the config fragments, and the
callbacks and environment of the multi-process runs. Fixtures are in conftest.py; test modules
import only from here (never from each other)."""

from __future__ import annotations

import io
import json
import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from PIL import Image
from torch.utils.data import DataLoader

from tlx.cli import TLXCLI
from tlx.data import ImageFolderDataModule
from tlx.models import ImageClassifier

# ---- paths ----------------------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]
SHARED = (REPO / ".." / "shared").resolve()
HYMENOPTERA = SHARED / "data" / "hymenoptera"
OFFICE31 = SHARED / "data" / "office31"
TORCH_CACHE = SHARED / "weights"

# ---- config fragments (configs/): tests iterate the folders, never a list of their own ------
STRATEGY_BASE = REPO / "configs" / "finetuning" / "hymenoptera.yaml"
STRATEGIES = sorted((REPO / "configs" / "finetuning" / "strategies").glob("*.yaml"))
DA_BASE = REPO / "configs" / "domain_adaptation" / "office31.yaml"
DA_TASKS = [DA_BASE.parent / "a2w.yaml", DA_BASE.parent / "w2a.yaml"]
OBJECTIVES = sorted((REPO / "configs" / "domain_adaptation" / "objectives").glob("*.yaml"))


def ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def fragment_callbacks(fragment: Path, **overrides: Any) -> list[dict]:
    """The callbacks a strategy fragment appends (``trainer.callbacks+``), as class_path/init_args
    dicts; ``overrides`` replace init args the fragment sets (a tiny run's unfreeze epoch...)."""
    specs = yaml.safe_load(fragment.read_text())["trainer"]["callbacks+"]
    for spec in specs:
        init_args = spec.setdefault("init_args", {})
        init_args.update({k: v for k, v in overrides.items() if k in init_args})
    return specs


def fragment_objective(fragment: Path) -> dict:
    """The objective (class_path/init_args) an objective fragment sets."""
    return yaml.safe_load(fragment.read_text())["model"]["init_args"]["objective"]


def build(spec: Any, typ: Any) -> Any:
    """An object of type ``typ`` from class_path/init_args dicts, built by jsonargparse as the
    CLI builds it."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--value", type=typ)
    return parser.instantiate_classes(parser.parse_object({"value": spec})).value


def build_callbacks(specs: list[dict]) -> list[Callback]:
    return build(specs, list[Callback])


# ---- tiny data and models -------------------------------------------------------------------
# Preprocessing for tiny generated images: keeps unit tests fast whatever the backbone.
TINY_PREPROCESSING = {"input_size": 32, "resize_size": 36, "interpolation": "bilinear",
                      "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
# A timm test model (0.1 M parameters), random init: no download.
TINY_MODEL = {"backbone": "timm:test_efficientnet", "weights": None, "preprocessing": TINY_PREPROCESSING}

COLOURS = {"cat": (200, 40, 40), "dog": (40, 40, 200), "fox": (40, 200, 40)}


def write_image(path: Path, colour: tuple[int, int, int], size: int = 40, seed: int = 0, fmt: str | None = None) -> Path:
    """A noisy image of one dominant colour: classes are learnable, files differ."""
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(colour)[None, None, :] + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def make_imagefolder(root: Path, classes=("cat", "dog"), n_train: int = 8, n_val: int = 4, split: bool = True) -> Path:
    """``root/{train,val}/<class>/*.png`` (or ``root/<class>/*.png`` when ``split`` is False)."""
    seed = 0
    for cls in classes:
        parts = (("train", n_train), ("val", n_val)) if split else (("", n_train + n_val),)
        for part, n in parts:
            for i in range(n):
                seed += 1
                write_image(root / part / cls / f"{cls}_{i}.png", COLOURS[cls], seed=seed)
    return root


def make_domain(root: Path, shift: int, n: int, labelled: bool = True, seed0: int = 0) -> Path:
    """cat/dog images; the target domain's colours are shifted (a covariate shift)."""
    seed = seed0
    for cls in ("cat", "dog"):
        colour = tuple(min(255, c + shift) for c in COLOURS[cls])
        for i in range(n):
            seed += 1
            folder = root / cls if labelled else root
            write_image(folder / f"{cls}_{i}.png", colour, seed=seed)
    return root


def tiny_model(seed: int = 0, **kwargs: Any) -> ImageClassifier:
    seed_everything(seed)
    return ImageClassifier(**TINY_MODEL, **kwargs)


def tiny_data(root: Path, **kwargs: Any) -> ImageFolderDataModule:
    kwargs.setdefault("batch_size", 4)
    return ImageFolderDataModule(root, num_workers=0, **kwargs)


class OrderedData(ImageFolderDataModule):
    """No shuffling and no random augmentation: two runs see exactly the same batches."""

    def __init__(self, root: str):  # str: hyperparameters must load with weights_only=True
        super().__init__(str(root), batch_size=4, num_workers=0, crop_scale=(1.0, 1.0), hflip=0.0)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_dataset(), batch_size=4, shuffle=False, drop_last=True)


# ---- running ----------------------------------------------------------------------------------
def run_cli(args: list[str]) -> TLXCLI:
    """Run ``python -m tlx ...`` in this process and return the CLI (trainer, model, datamodule)."""
    return TLXCLI(args=args)


def printed_config(capsys, *configs: str | Path, extra: tuple[str, ...] = ()) -> dict:
    """``python -m tlx fit --config ... --print_config``, in this process, as a dict."""
    args = ["fit"] + [a for c in configs for a in ("--config", str(REPO / c))] + [*extra, "--print_config"]
    with pytest.raises(SystemExit):
        run_cli(args)
    return yaml.safe_load(capsys.readouterr().out)


def tiny_fit_args(data_root, out_dir, epochs=1, extra=()) -> list[str]:
    """CLI arguments of a one-epoch fit of the tiny model on a tiny folder."""
    return [
        "fit",
        "--model.class_path=tlx.models.ImageClassifier",
        f"--model.init_args.backbone={TINY_MODEL['backbone']}",
        "--model.init_args.weights=null",
        f"--model.init_args.preprocessing={json.dumps(TINY_MODEL['preprocessing'])}",
        "--data.class_path=tlx.data.ImageFolderDataModule",
        f"--data.init_args.root={data_root}",
        "--data.init_args.batch_size=4",
        "--data.init_args.num_workers=0",
        f"--trainer.default_root_dir={out_dir}",
        f"--trainer.max_epochs={epochs}",
        "--trainer.enable_progress_bar=false",
        *extra,
    ]


def da_fit_args(source, target, out_dir, objective="tlx.domain_adaptation.DANN", extra=()) -> list[str]:
    """CLI arguments of a one-epoch domain-adaptation fit of the tiny model."""
    return [
        "fit",
        "--model.class_path=tlx.domain_adaptation.DomainAdaptationClassifier",
        f"--model.init_args.backbone={TINY_MODEL['backbone']}",
        "--model.init_args.weights=null",
        f"--model.init_args.preprocessing={json.dumps(TINY_MODEL['preprocessing'])}",
        "--model.init_args.bottleneck_dim=16",
        f"--model.init_args.objective={objective}",
        "--data.class_path=tlx.domain_adaptation.DomainAdaptationDataModule",
        f"--data.init_args.source_root={source}",
        f"--data.init_args.target_root={target}",
        "--data.init_args.batch_size=4",
        "--data.init_args.num_workers=0",
        f"--trainer.default_root_dir={out_dir}",
        "--trainer.max_epochs=1",
        "--trainer.enable_progress_bar=false",
        *extra,
    ]


def tiny_trainer(tmp_path: Path, **kwargs: Any) -> Trainer:
    defaults = dict(default_root_dir=str(tmp_path), max_epochs=1, accelerator="cpu", devices=1,
                    enable_progress_bar=False, enable_model_summary=False, logger=False,
                    enable_checkpointing=False)
    defaults.update(kwargs)
    return Trainer(**defaults)


def signal_once_saved(args: list[str], checkpoint: Path, signum: int, start_timeout: float = 200) -> tuple[int, str]:
    """Run ``python -m tlx ARGS`` in a subprocess, send ``signum`` once ``checkpoint`` exists (the
    first validation wrote it); return the exit status and stderr."""
    import subprocess
    import sys
    import time

    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "tlx", *args], cwd=repo, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + start_timeout
        while not checkpoint.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.05)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err


def fit(tmp_path: Path, model: ImageClassifier, data, callbacks: list, epochs: int = 2, ckpt_path=None, **kwargs: Any):
    trainer = tiny_trainer(tmp_path, max_epochs=epochs, callbacks=callbacks, **kwargs)
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return trainer


# ---- what a fine-tuning run did ---------------------------------------------------------------
BN = torch.nn.modules.batchnorm._NormBase


class Recorder(Callback):
    """Parameters and BatchNorm buffers at the start of training, and which parameters ever
    trained (requires_grad at some training step)."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.params0 = {n: p.detach().clone() for n, p in pl_module.named_parameters()}
        self.buffers0 = {n: b.detach().clone() for n, b in pl_module.named_buffers()}
        self.trained: set[str] = set()

        self.epochs: list[tuple[set[str], set[str], set[str]]] = []  # (frozen, trained, changed) per epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self._epoch_start = {n: p.detach().clone() for n, p in pl_module.named_parameters()}
            self._epoch_trained: set[str] = set()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = {n for n, p in pl_module.named_parameters() if p.requires_grad}
        self.trained.update(now)
        self._epoch_trained.update(now)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        params = dict(pl_module.named_parameters())
        changed = {n for n, p in params.items() if not torch.equal(p.detach(), self._epoch_start[n])}
        self.epochs.append((set(params) - self._epoch_trained, self._epoch_trained, changed))

    def changed_params(self, pl_module) -> set[str]:
        return {n for n, p in pl_module.named_parameters() if not torch.equal(p.detach(), self.params0[n])}

    def changed_bn_buffers(self, pl_module) -> set[str]:
        bn_names = {n for n, m in pl_module.named_modules() if isinstance(m, BN)}
        return {
            n for n, b in pl_module.named_buffers()
            if n.rpartition(".")[0] in bn_names and not torch.equal(b, self.buffers0[n])
        }

    def bn_buffers(self, pl_module, prefix: str = "") -> set[str]:
        bn_names = {n for n, m in pl_module.named_modules() if isinstance(m, BN) and n.startswith(prefix)}
        return {n for n, _ in pl_module.named_buffers() if n.rpartition(".")[0] in bn_names}


# ---- TensorBoard pictures ---------------------------------------------------------------------
def assert_real_picture(img: np.ndarray, size: tuple[int, int]) -> None:
    """``size`` is (width, height); real content: many non-white pixels, many distinct colours."""
    assert (img.shape[1], img.shape[0]) == size
    rgb = img[..., :3].astype(float)
    non_white = (rgb < 245).any(axis=-1).mean()
    assert non_white > 0.05, f"only {non_white:.1%} of the picture is drawn"
    assert rgb.std() > 20
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 50


def tb_images(log_dir) -> dict[str, list]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: acc.Images(tag) for tag in acc.Tags()["images"]}


def decode(event) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))


# ---- multi-process runs -----------------------------------------------------------------------
TIMEOUT = 240  # a hung collective fails the test instead of hanging the suite


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopback_env(port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo",
               PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for key in [k for k in env if k.startswith(("SLURM_", "TORCHELASTIC_")) or k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")]:
        del env[key]
    return env


def _sampler_indices(loader) -> list[int]:
    if isinstance(loader, dict):  # domain adaptation: the source loader (and the target's)
        loader = loader["source"]
    # The training sampler yields keys ``index + n * draw`` (tlx.data.resumable): back to indices.
    n = len(loader.dataset)
    return [int(i) % n for i in loader.sampler]


class ShardProbe(Callback):
    """For the multi-process runs (``tests.helpers.ShardProbe`` in their configs): each rank
    writes what it saw to ``rank<N>.json``."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.record: dict = {"train_indices": [], "val_indices": []}

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        ddp = trainer.strategy.model
        self.record.update(
            global_rank=trainer.global_rank,
            world_size=trainer.world_size,
            node_rank=trainer.node_rank,
            cwd=os.getcwd(),
            wrapper=type(ddp).__name__,
            find_unused_parameters=getattr(ddp, "find_unused_parameters", None),
            frozen_backbone=not any(p.requires_grad for p in pl_module.backbone.parameters()),
            lrs=[g["lr"] for opt in trainer.optimizers for g in opt.param_groups],
        )

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.record["train_indices"].append(_sampler_indices(trainer.train_dataloader))
        loader = trainer.train_dataloader
        loaders = loader if isinstance(loader, dict) else {"train": loader}
        self.record["train_sampler"] = type(next(iter(loaders.values())).sampler).__name__
        self.record["train_samplers"] = {k: type(v.sampler).__name__ for k, v in loaders.items()}

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self.record["val_indices"].append(_sampler_indices(trainer.val_dataloaders))

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # The per-dataset caches: how much of each this process built itself.
        for cb in trainer.callbacks:
            if type(cb).__name__ == "FeatureCache":
                self.record["features_extracted_here"] = cb.extracted_here
                self.record["feature_status"] = dict(cb.last_status)
        decoded = getattr(trainer.datamodule, "_decoded", {})
        self.record["images_decoded_here"] = {split: d.decoded_here for split, d in decoded.items()}
        self.record["metrics"] = {k: float(v) for k, v in trainer.callback_metrics.items()}
        self.record["global_step"] = trainer.global_step
        Path(self.out_dir).mkdir(parents=True, exist_ok=True)
        (Path(self.out_dir) / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.record))


class Preempt(Callback):
    """Simulates a SLURM preemption: SIGUSR1 to this process after ``at_step`` optimiser steps
    (Lightning's handler saves an HPC checkpoint and calls ``scontrol requeue``), then the job is
    killed. Active only when the environment variable ``TLX_TEST_PREEMPT`` is set."""

    def __init__(self, at_step: int = 2):
        self.at_step = at_step

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if os.environ.get("TLX_TEST_PREEMPT") and trainer.global_step == self.at_step:
            import signal

            os.kill(os.getpid(), signal.SIGUSR1)  # the handler runs before the next bytecode
            os._exit(143)  # killed like SLURM does at the end of the grace time
