"""Every private Lightning / torch API tlx uses, each behind one small function.

tlx is tested with the Lightning range pinned in pyproject.toml; when an upgrade moves one of
these, this file (and tests/test_compat.py, one test per function) is the only place to change.
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn

# BatchNorm1d/2d/3d, SyncBatchNorm and the instance norms share this base (no public alias).
BatchNormBase: type[nn.Module] = nn.modules.batchnorm._NormBase


def attached_trainer(pl_module: LightningModule) -> Trainer | None:
    """The trainer ``pl_module`` is attached to, or None (``.trainer`` raises when detached)."""
    return pl_module._trainer


def request_graceful_stop(trainer: Trainer) -> None:
    """Make Lightning's loops exit at their next check, as after its own SIGTERM handler."""
    trainer._signal_connector.received_sigterm = True


def checkpoint_every_n_epochs(cb: ModelCheckpoint) -> int:
    """``ModelCheckpoint``'s epoch interval (``every_n_epochs``, stored privately)."""
    return getattr(cb, "_every_n_epochs", 1)


def flatten_dense_tensors(tensors: list[Tensor]) -> Tensor:
    """One contiguous buffer of ``tensors`` (one all-reduce instead of one per tensor)."""
    return torch._utils._flatten_dense_tensors(tensors)


def unflatten_dense_tensors(flat: Tensor, like: list[Tensor]) -> tuple[Tensor, ...]:
    """Views of ``flat`` shaped as ``like`` (the inverse of :func:`flatten_dense_tensors`)."""
    return torch._utils._unflatten_dense_tensors(flat, like)


def max_abs_per_tensor(tensors: list[Tensor]) -> list[Tensor]:
    """``max |x|`` of each tensor, in torch's fused multi-tensor kernels (one launch, not one per tensor)."""
    return list(torch._foreach_norm(tensors, float("inf")))


def mkldnn_bf16_supported() -> bool:
    """Whether this CPU runs bfloat16 through oneDNN at speed (AVX512-BF16 / AMX)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


__all__ = [
    "BatchNormBase",
    "attached_trainer",
    "checkpoint_every_n_epochs",
    "flatten_dense_tensors",
    "max_abs_per_tensor",
    "mkldnn_bf16_supported",
    "request_graceful_stop",
    "unflatten_dense_tensors",
]
