"""How an ONNX model does on this CPU: accuracy and agreement with the checkpoint on labelled
images, latency at batch 1 and throughput at batch 32 in onnxruntime (medians of several runs, a
stated number of threads: on a shared machine the median is the figure that means something)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort


def session(model: str | Path | bytes, threads: int | None = None, quiet: bool = False) -> ort.InferenceSession:
    """A CPU session on an ONNX file (or a serialized model); ``quiet`` keeps onnxruntime's warnings out."""
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if quiet:
        options.log_severity_level = 3
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                providers=["CPUExecutionProvider"])


def _median_seconds(run, warmup: int, runs: int) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def speed(path: str | Path, images: np.ndarray, threads: int, runs: int = 30) -> dict[str, float]:
    """Median batch-1 latency (ms) over ``runs`` calls and median batch-32 throughput (images/s)
    over ``max(3, runs // 6)`` calls, on real images (tiled up to 32)."""
    sess = session(path, threads)
    name = sess.get_inputs()[0].name
    batch = np.resize(images, (32, *images.shape[1:])).astype(np.float32)
    one = batch[:1]
    latency = _median_seconds(lambda: sess.run(None, {name: one}), warmup=3, runs=runs)
    per_batch = _median_seconds(lambda: sess.run(None, {name: batch}), warmup=1, runs=max(3, runs // 6))
    return {"latency_batch1_ms": latency * 1e3, "throughput_batch32_per_s": 32 / per_batch}


def compare(probs: np.ndarray, reference: np.ndarray, labels: np.ndarray | None) -> dict[str, float | None]:
    """Top-1 agreement and max |p - p_ref| against the checkpoint; accuracy when labels are known."""
    top1 = probs.argmax(1)
    return {"top1_agreement": float((top1 == reference.argmax(1)).mean()),
            "max_abs_diff": float(np.abs(probs - reference).max()),
            "accuracy": None if labels is None else float((top1 == labels).mean())}
