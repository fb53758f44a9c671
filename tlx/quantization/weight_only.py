"""Weight-only int8 for the layers the static quantization keeps float (the head): the weights are
stored as int8, one symmetric scale per output channel, and a DequantizeLinear turns them back
into float32 in the graph, so the layer's input, arithmetic and output stay float.

The file shrinks by 3/4 of those weights at no cost in the logits' precision (8-bit logits are
what keeping the head float avoids, :mod:`tlx.quantization.onnx_quantize`); the only error is the
weights' own rounding, which per channel is at most half a step of ``max|w| / 127``.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

INT8_MAX = 127  # symmetric [-127, 127], as onnxruntime's int8 weights and tlx's QAT


def output_channel_axis(node: onnx.NodeProto, weight: np.ndarray) -> int | None:
    """Axis of the output channels of ``node``'s weight (input 1), or None for a layout not handled."""
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if node.op_type == "MatMul" and weight.ndim == 2:
        return 1
    return None


def quantize_per_channel(weight: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """int8 values and float32 scales with ``weight ~= values * scale`` along ``axis``."""
    other = tuple(a for a in range(weight.ndim) if a != axis)
    scale = (np.abs(weight).max(axis=other) / INT8_MAX).astype(np.float32)
    scale[scale == 0] = 1.0  # an all-zero channel: any scale rounds it to zeros
    shape = [1] * weight.ndim
    shape[axis] = -1
    values = np.clip(np.rint(weight / scale.reshape(shape)), -INT8_MAX, INT8_MAX).astype(np.int8)
    return values, scale


def quantize_float_weights(model: onnx.ModelProto, node_names: set[str] | None = None) -> list[str]:
    """Store the float weights of the Gemm/MatMul nodes in ``node_names`` (default: every one whose
    weight is a float32 initializer not already dequantized) as int8 + DequantizeLinear, in place.
    Returns the names of the nodes changed. An initializer shared with another node is left alone."""
    initializers = {init.name: init for init in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    changed, new_nodes = [], []
    for node in model.graph.node:
        weight_name = node.input[1] if node.op_type in ("Gemm", "MatMul") and len(node.input) > 1 else None
        init = initializers.get(weight_name) if weight_name else None
        wanted = node_names is None or node.name in node_names
        if init is None or not wanted or init.data_type != onnx.TensorProto.FLOAT or uses[weight_name] > 1:
            new_nodes.append(node)
            continue
        weight = numpy_helper.to_array(init)
        axis = output_channel_axis(node, weight)
        if axis is None:
            new_nodes.append(node)
            continue
        values, scale = quantize_per_channel(weight, axis)
        q_name, s_name, z_name = f"{weight_name}_int8", f"{weight_name}_scale", f"{weight_name}_zero_point"
        model.graph.initializer.remove(init)
        model.graph.initializer.extend([numpy_helper.from_array(values, q_name), numpy_helper.from_array(scale, s_name),
                                        numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), z_name)])
        new_nodes.append(helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [weight_name], axis=axis,
                                          name=f"{node.name}_weight_DequantizeLinear"))
        new_nodes.append(node)
        changed.append(node.name)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    return changed
