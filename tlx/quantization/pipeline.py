"""``python -m tlx export --quantize int8[,dynamic,fp16]``: quantize the verified fp32 ONNX file, then
measure every precision side by side on the validation images (agreement with the checkpoint,
max |dp|, accuracy, batch-1 latency, batch-32 throughput, file size) and print it as a table."""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch import nn

from tlx.calibration import calibrated_probabilities
from tlx.data.images import load_rgb
from tlx.quantization.calibration import ImageCalibrationReader, balanced_calibration_set
from tlx.quantization.measure import compare, session, speed
from tlx.quantization.onnx_quantize import MODES, QuantizationError, quantize_model

log = logging.getLogger("tlx")

MAX_EVAL_IMAGES = 1000  # evenly spread over the validation split beyond this


def parse_modes(spec: str | list[str] | None) -> list[str]:
    modes = [m.strip().lower() for m in (spec.split(",") if isinstance(spec, str) else spec or []) if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise QuantizationError(f"unknown --quantize {','.join(unknown)!r}; choose from {', '.join(MODES)} "
                                "(comma-separated for several).")
    return list(dict.fromkeys(modes))


def _split(datamodule: LightningDataModule | None, split: str) -> list[tuple[str, int]]:
    if datamodule is None or getattr(datamodule, "root", None) is None or not hasattr(datamodule, "samples"):
        return []
    return list(datamodule.samples(split))


def export_quantized(
    wrapper: nn.Module,
    reference_model: nn.Module,
    fp32_onnx: Path,
    modes: list[str],
    datamodule: LightningDataModule | None,
    fallback_paths: list[str],
    to_unit,
    num_classes: int,
    calibration_images: int = 300,
    calibration_seed: int = 0,
    threads: int = 1,
    calibration_method: str = "percentile",
    head_weights: str = "int8",
    bias_correction: bool = True,
) -> dict[str, Any]:
    """Write ``<stem>.<mode>.onnx`` beside ``fp32_onnx`` for each mode; return the figures for the
    sidecar JSON: ``{"quantization": ..., "precisions": {"fp32": ..., "int8": ...}, "files": ...}``."""
    result: dict[str, Any] = {"quantization": {}, "files": {}}
    reader = None
    if "int8" in modes:
        train = _split(datamodule, "train")
        if not train:
            raise QuantizationError("--quantize int8 calibrates on training images, and none were found: give the "
                                    "data (--data.root) or use --quantize dynamic/fp16.")
        chosen = balanced_calibration_set(train, calibration_images, num_classes, calibration_seed)
        if len(chosen) < calibration_images:
            log.info("Calibrating on all %d training images (fewer than --calibration_images %d).",
                     len(chosen), calibration_images)
        reader = ImageCalibrationReader([p for p, _ in chosen], to_unit, wrapper_input_name(fp32_onnx))
        result["quantization"]["calibration"] = {
            "images": len(chosen), "seed": calibration_seed, "method": calibration_method,
            "per_class": {str(k): v for k, v in sorted(Counter(label for _, label in chosen).items())},
            "paths": [p for p, _ in chosen]}

    files = {"fp32": fp32_onnx}
    for mode in modes:
        path = fp32_onnx.with_name(f"{fp32_onnx.stem}.{mode}.onnx")
        result["quantization"][mode] = quantize_model(fp32_onnx, path, mode, reader if mode == "int8" else None,
                                                      calibration_method=calibration_method, head_weights=head_weights,
                                                      bias_correction=bias_correction, threads=threads)
        files[mode] = path
        result["files"][f"onnx_{mode}"] = str(path)

    samples = _split(datamodule, "val")
    if len(samples) > MAX_EVAL_IMAGES:
        samples = samples[:: -(-len(samples) // MAX_EVAL_IMAGES)]
    paths = [p for p, _ in samples] or fallback_paths
    labels = np.array([y for _, y in samples]) if samples else None
    probs, reference, images = _predict(wrapper, reference_model, files, paths, to_unit, threads)
    precisions: dict[str, dict[str, Any]] = {}
    fp32_size = os.path.getsize(fp32_onnx)
    timing = {name: speed(path, images[:32], threads) for name, path in files.items()}
    for name, path in files.items():
        size = os.path.getsize(path)
        precisions[name] = {
            "file": str(path), "size_bytes": size, "size_vs_fp32": size / fp32_size,
            **compare(probs[name], reference, labels), **timing[name],
            "latency_vs_fp32": timing[name]["latency_batch1_ms"] / timing["fp32"]["latency_batch1_ms"]}
    result["precisions"] = precisions
    result["quantization"]["evaluation"] = {
        "images": len(paths), "labelled": labels is not None,
        "checkpoint_accuracy": None if labels is None else float((reference.argmax(1) == labels).mean()),
        "onnxruntime": __import__("onnxruntime").__version__, "threads": threads,
        "timing": "median of 30 batch-1 runs and of 5 batch-32 runs, after warm-up"}
    print(precision_table(result))
    return result


def wrapper_input_name(onnx_path: Path) -> str:
    import onnx

    return onnx.load(str(onnx_path), load_external_data=False).graph.input[0].name


def _predict(wrapper, reference_model, files, paths, to_unit, threads, batch_size: int = 32):
    """Every precision's probabilities and the checkpoint's, one decode per image."""
    sessions = {name: session(path, threads) for name, path in files.items()}
    input_name = next(iter(sessions.values())).get_inputs()[0].name
    outputs: dict[str, list[np.ndarray]] = {name: [] for name in files}
    reference, first = [], None
    for start in range(0, len(paths), batch_size):
        x = torch.stack([to_unit(load_rgb(p)) for p in paths[start:start + batch_size]])
        first = x if first is None else first
        with torch.no_grad():  # the checkpoint on tlx's own evaluation preprocessing
            reference.append(calibrated_probabilities(reference_model, reference_model((x - wrapper.mean) / wrapper.std)).numpy())
        for name, sess in sessions.items():
            outputs[name].append(sess.run(None, {input_name: x.numpy()})[0])
    return {k: np.concatenate(v) for k, v in outputs.items()}, np.concatenate(reference), first.numpy()


def precision_table(result: dict[str, Any]) -> str:
    ev = result["quantization"]["evaluation"]
    lines = [f"Precisions on {ev['images']} validation images (onnxruntime {ev['onnxruntime']}, "
             f"{ev['threads']} thread(s); checkpoint accuracy "
             f"{'n/a' if ev['checkpoint_accuracy'] is None else format(ev['checkpoint_accuracy'], '.4f')}):",
             f"{'precision':<9} {'size MB':>8} {'x fp32':>7} {'top-1 agree':>11} {'max |dp|':>9} {'accuracy':>8} "
             f"{'b1 ms':>7} {'x fp32':>7} {'b32 img/s':>9}"]
    for name, p in result["precisions"].items():
        acc = "n/a" if p["accuracy"] is None else f"{p['accuracy']:.4f}"
        lines.append(f"{name:<9} {p['size_bytes'] / 1e6:>8.2f} {p['size_vs_fp32']:>7.2f} {p['top1_agreement']:>11.2%} "
                     f"{p['max_abs_diff']:>9.2e} {acc:>8} {p['latency_batch1_ms']:>7.2f} {p['latency_vs_fp32']:>7.2f} "
                     f"{p['throughput_batch32_per_s']:>9.1f}")
    return "\n".join(lines)
