"""What loads on this machine with no network: ``python -m tlx.backbones --available``.

Each source says what it holds locally (packaged weights, the torchvision cache under
``TORCH_HOME``, the Hugging Face cache for timm); each of those is built once here to count its
parameters, read its input size and time a forward pass. Local files of any architecture load
too, through ``model.weights_path``; they are not listed since any file may be one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from tlx.backbones.registry import create_backbone, offline_backbones
from tlx.errors import BackboneError


@dataclass
class Available:
    spec: str  # with ``@WEIGHTS`` where those are not the source's DEFAULT
    params_m: float
    input_size: int
    top1: float | None
    images_per_s: float | None
    source_classifier: bool


def images_per_second(model: torch.nn.Module, size: int, batch: int = 8, repeats: int = 2) -> float:
    """fp32 eval throughput at the weights' input size, after one warm-up batch."""
    x = torch.randn(batch, 3, size, size)
    with torch.inference_mode():
        model(x)
        start = time.perf_counter()
        for _ in range(repeats):
            model(x)
    return batch * repeats / (time.perf_counter() - start)


def available_backbones(measure_speed: bool = True) -> list[Available]:
    found = []
    for spec, weights, top1 in offline_backbones():
        try:
            backbone = create_backbone(spec, weights=weights).eval()
        except BackboneError:  # listed by a cache, yet does not load: then it is not available
            continue
        size = backbone.preprocessing.input_size
        found.append(Available(
            spec if weights in (None, "DEFAULT") else f"{spec}@{weights}",
            sum(p.numel() for p in backbone.parameters()) / 1e6, size, top1,
            images_per_second(backbone, size) if measure_speed else None,
            backbone.source_classifier is not None,
        ))
    return found


def format_available(rows: list[Available]) -> str:
    header = ("backbone", "params", "input", "top-1", "img/s", "LEEP/NCE")
    lines = [header] + [
        (r.spec, f"{r.params_m:.1f}M", str(r.input_size), "-" if r.top1 is None else f"{r.top1:.1f}",
         "-" if r.images_per_s is None else f"{r.images_per_s:.0f}", "yes" if r.source_classifier else "no")
        for r in rows
    ]
    widths = [max(len(line[c]) for line in lines) for c in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
                     for line in lines)
