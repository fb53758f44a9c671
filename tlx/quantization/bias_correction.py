"""Empirical bias correction of an int8 QDQ model (Nagel et al. 2019, "Data-Free Quantization
Through Weight Equalization and Bias Correction", section 4.2, its empirical form).

Rounding weights and clipping activations to 8 bits shifts the mean of every layer's output, and
the shifts add up through a deep network: on amazon MobileNetV2 the int8 model flipped 6% of the
validation images although each layer's error is small. Each convolution's expected output per
channel, ``E[y_int8] - E[y_fp32]`` over the calibration images, is such a shift, and the bias
absorbs it exactly: the corrected int32 bias is ``b - round(shift / bias_scale)``. Layers are
corrected in graph order, each measured with the layers before it already corrected (correcting
all from one measurement counts upstream shifts twice: it broke the model).

Measured on the pre-activation output (the Conv node's own output, before the ReLU6 the quantizer
folded into the next quantization range); the output is read as a graph output, so that Conv runs
unfused (dequantized inputs, float Conv): the same values up to the fused kernel's final rounding.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import numpy_helper


def calibration_batches(reader) -> list[np.ndarray]:
    """The reader's batches as arrays (read once: the correction runs the model once per layer)."""
    reader.rewind()
    batches = []
    while (batch := reader.get_next()) is not None:
        batches.append(next(iter(batch.values())))
    reader.rewind()
    return batches


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    model = copy.deepcopy(model)
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    return model


def channel_means(model: onnx.ModelProto, names: list[str], batches: list[np.ndarray], threads: int = 1) -> list[np.ndarray]:
    """Mean over images and positions of each channel of the tensors ``names`` (NCHW)."""
    from tlx.quantization.measure import session  # onnxruntime: only where a model runs (QAT users need none)

    # quiet: not the quantizer's unused ReLU6 bounds once per layer (dropped after the correction)
    sess = session(_with_outputs(model, names).SerializeToString(), threads, quiet=True)
    input_name = sess.get_inputs()[0].name
    sums, count = [0.0] * len(names), 0
    for x in batches:
        outs = sess.run(names, {input_name: x})
        sums = [s + o.astype(np.float64).mean(axis=(2, 3)).sum(axis=0) for s, o in zip(sums, outs)]
        count += len(x)
    return [s / count for s in sums]


def correctable_convs(quantized: onnx.ModelProto, fp32: onnx.ModelProto,
                      scope: str = "") -> list[tuple[onnx.NodeProto, str, onnx.NodeProto]]:
    """``(int8 Conv node, its fp32 twin's output, its bias's DequantizeLinear)`` for each quantized
    Conv (node name starting with ``scope``) whose bias is an int32 initializer behind a
    DequantizeLinear (what onnxruntime's QDQ quantizer writes)."""
    fp32_out = {n.name: n.output[0] for n in fp32.graph.node if n.op_type == "Conv"}
    producers = {out: n for n in quantized.graph.node for out in n.output}
    inits = {i.name for i in quantized.graph.initializer}
    found = []
    for node in quantized.graph.node:
        if node.op_type != "Conv" or not node.name.startswith(scope) or node.name not in fp32_out:
            continue
        bias = producers.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if bias is not None and bias.op_type == "DequantizeLinear" and all(i in inits for i in bias.input[:2]):
            found.append((node, fp32_out[node.name], bias))
    return found


def correct_biases(quantized: onnx.ModelProto, fp32: onnx.ModelProto, batches: list[np.ndarray],
                   threads: int = 1, scope: str = "") -> dict:
    """Shift the int32 biases of ``quantized`` (in place) so that each Conv's mean output per
    channel on ``batches`` matches fp32's; returns what was done, for the sidecar JSON."""
    convs = correctable_convs(quantized, fp32, scope)
    reference = channel_means(fp32, [out for _, out, _ in convs], batches, threads)
    inits = {i.name: i for i in quantized.graph.initializer}
    shifts = []
    for (node, _, dq), target in zip(convs, reference):
        shift = channel_means(quantized, [node.output[0]], batches, threads)[0] - target
        bias, scale = inits[dq.input[0]], numpy_helper.to_array(inits[dq.input[1]])
        values = numpy_helper.to_array(bias)
        bias.CopyFrom(numpy_helper.from_array((values - np.round(shift / scale)).astype(values.dtype), bias.name))
        shifts.append(float(np.abs(shift).mean()))
    return {"layers": len(convs), "images": int(sum(len(b) for b in batches)),
            "mean_abs_shift": float(np.mean(shifts)) if shifts else 0.0}
