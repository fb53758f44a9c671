"""channels_last and torch.compile as a callback (LightningCLI has no compile switch: Lightning #17283)."""

from __future__ import annotations

import logging

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

log = logging.getLogger("tlx")


def _to_channels_last(module: torch.nn.Module, args: tuple) -> tuple | None:
    x = args[0] if args else None
    if isinstance(x, torch.Tensor) and x.ndim == 4:
        return (x.contiguous(memory_format=torch.channels_last), *args[1:])
    return None


class SpeedUp(Callback):
    """Make the backbone faster without changing what it computes.

    Args:
        channels_last: store conv weights and feed images as NHWC, the layout oneDNN (CPU) and
            cuDNN tensor cores (GPU) run fastest, most of all with ``trainer.precision: bf16-mixed``.
        compile: ``torch.compile`` the backbone in place (``nn.Module.compile``: checkpoint keys
            stay the same). The first steps are slow while it compiles; pays off on long runs.
        compile_mode: ``torch.compile`` mode (``default``, ``reduce-overhead``, ``max-autotune``).
    """

    def __init__(self, channels_last: bool = True, compile: bool = False, compile_mode: str | None = None):
        self.channels_last = channels_last
        self.compile = compile
        self.compile_mode = compile_mode
        self._hook = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        backbone = getattr(pl_module, "backbone", pl_module)
        if self.channels_last and self._hook is None:
            backbone.to(memory_format=torch.channels_last)
            self._hook = backbone.register_forward_pre_hook(_to_channels_last)
        if self.compile and not getattr(backbone, "_compiled_call_impl", None):
            log.info("SpeedUp: compiling the backbone (the first batches are slow).")
            backbone.compile(mode=self.compile_mode)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
