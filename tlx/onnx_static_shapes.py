"""Fold the shape arithmetic that is static at the export's fixed image size out of an ONNX graph.

Models with TensorFlow-style "same" padding (EfficientNet-Lite from timm, among others) compute
their strided convolutions' padding from the input's height and width at run time: the traced
graph holds Shape -> Gather -> Ceil/Sub/Max ... -> Pad chains. Only the batch axis of tlx's export
is symbolic, so those values are constants; left in, they cost time in fp32 and, worse, int8
quantization treats the pad arithmetic as tensors to quantize and leaves Q/DQ pairs around every
Pad. Each pass replaces ``Gather(Shape(x), i)`` on a static axis with a constant and lets
onnxruntime's basic (hardware-independent, standard-ops-only) optimizer fold what follows; then
Pad fuses into its Conv. Outputs are unchanged (checked by the export's verification).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _static_dims(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    inferred = onnx.shape_inference.infer_shapes(model)
    return {vi.name: [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
            for vi in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}


def _fold_once(model: onnx.ModelProto) -> int:
    """Replace ``Gather(Shape(x), const)`` on static axes of ``x`` by constants; count them."""
    dims = _static_dims(model)
    consts = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    consts.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node
                   if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    producers = {out: node for node in model.graph.node for out in node.output}
    nodes, folded = [], 0
    for node in model.graph.node:
        shape_node = producers.get(node.input[0]) if node.op_type == "Gather" and node.input else None
        if shape_node is not None and shape_node.op_type == "Shape" and node.input[1] in consts:
            attrs = {a.name: a.i for a in shape_node.attribute}
            shape = dims.get(shape_node.input[0]) or []
            shape = shape[attrs.get("start", 0):attrs.get("end", len(shape))]
            index = consts[node.input[1]]
            if shape and all(shape[int(i)] is not None for i in np.atleast_1d(index)):
                value = np.array([d if d is not None else -1 for d in shape], dtype=np.int64)[index]
                nodes.append(helper.make_node("Constant", [], [node.output[0]], name=node.name,
                                              value=numpy_helper.from_array(value)))
                folded += 1
                continue
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return folded


def _drop_dead_nodes(model: onnx.ModelProto) -> None:
    needed = {out.name for out in model.graph.output}
    kept = []
    for node in reversed(model.graph.node):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(node.input)
    del model.graph.node[:]
    model.graph.node.extend(reversed(kept))


def _basic_optimize(model: onnx.ModelProto, workdir: Path) -> onnx.ModelProto:
    import onnxruntime as ort

    source, target = workdir / "in.onnx", workdir / "out.onnx"
    onnx.save(model, str(source))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(target)
    options.log_severity_level = 3
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    return onnx.load(str(target))


def fold_static_shapes(path: str | Path, max_passes: int = 10) -> int:
    """Rewrite the ONNX file at ``path`` in place; return how many shape lookups were folded."""
    model = onnx.load(str(path))
    total = 0
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(max_passes):
            folded = _fold_once(model)
            if not folded:
                break
            total += folded
            # each pass makes the next layer's input shape known to shape inference
            model = _basic_optimize(model, Path(tmp))
    if total:
        _drop_dead_nodes(model)
        onnx.save(model, str(path))
    return total
