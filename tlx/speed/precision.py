"""bf16 where the hardware has it, and a clear word (plus fp32) where it does not."""

from __future__ import annotations

import logging
from functools import lru_cache

import torch

from tlx.compat import mkldnn_bf16_supported

log = logging.getLogger("tlx")

# CPU flags of native bf16 arithmetic (AVX512-BF16, AMX). Without them bf16 is emulated and
# runs slower than fp32, so asking for it is almost certainly not what the user wants.
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@lru_cache(maxsize=1)
def cpu_bf16_supported() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:  # not Linux: trust oneDNN, which picks bf16 kernels only where they exist
        return mkldnn_bf16_supported()
    return any(flag in flags for flag in _CPU_BF16_FLAGS)


def bf16_supported(accelerator: str) -> bool:
    """Whether ``accelerator`` (``cpu``, ``cuda``/``gpu``, ``auto``) runs bf16 natively."""
    if accelerator in ("cuda", "gpu") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if accelerator in ("cpu", "auto"):
        return cpu_bf16_supported()
    return True  # mps, xla, ...: let Lightning decide


def resolve_precision(precision: str | int | None, accelerator: str = "auto") -> str | int | None:
    """``precision`` unchanged, except bf16 on hardware without it: then ``32-true`` and a warning."""
    if precision is None or "bf16" not in str(precision) or bf16_supported(str(accelerator)):
        return precision
    device = "GPU" if accelerator in ("cuda", "gpu") or torch.cuda.is_available() else "CPU"
    log.warning(
        "trainer.precision=%s asks for bfloat16, but this %s has no native bf16 support (%s): "
        "training in 32-true instead. Set trainer.precision=32-true to silence this message.",
        precision,
        device,
        "compute capability < 8.0" if device == "GPU" else "no avx512_bf16 / amx_bf16 CPU flag",
    )
    return "32-true"
