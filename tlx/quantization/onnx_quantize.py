"""Quantize tlx's fp32 ONNX export with onnxruntime's own tools: ``int8`` (static, QDQ, per-channel
weights, calibrated activations), ``dynamic`` (int8 weights, activations quantized at run time),
``fp16`` (onnxruntime's float16 converter, the same code as onnxconverter-common's).

Only the feature network (``/features/...`` nodes of :class:`tlx.export.ExportedClassifier`) is
quantized. The input normalisation stays float: an 8-bit ``[0, 1]`` image quantized before it
loses nothing, but the Sub/Div have no integer kernel and would only add Q/DQ pairs. The head and
the softmax compute in float: logits rounded to 8 bits move probabilities by up to ~1% and can tie
the top-1 between close classes. The head's weights are still stored in int8 (``head_weights``,
weight-only, :mod:`tlx.quantization.weight_only`): a 1280x31 head is 0.16 MB in float32, which
alone kept a 9 MB MobileNetV2's int8 file above 0.3x of fp32.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import onnx

from tlx.errors import TLXError
from tlx.quantization.bias_correction import calibration_batches, correct_biases
from tlx.quantization.weight_only import quantize_float_weights

log = logging.getLogger("tlx")

MODES = ("int8", "dynamic", "fp16")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
HEAD_WEIGHTS = ("int8", "float")
QUANTIZED_SCOPE = "/features/"  # node-name prefix of ExportedClassifier.features in the ONNX graph
WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


class QuantizationError(TLXError):
    """The model cannot be quantized as asked."""


def check_calibration_method(method: str) -> None:
    if method not in CALIBRATION_METHODS:
        raise QuantizationError(f"unknown --calibration_method {method!r}; choose from {', '.join(CALIBRATION_METHODS)}.")


def check_head_weights(head_weights: str) -> None:
    if head_weights not in HEAD_WEIGHTS:
        raise QuantizationError(f"unknown --head_weights {head_weights!r}; choose from {', '.join(HEAD_WEIGHTS)}.")


def layer_name(node: onnx.NodeProto) -> str:
    """The PyTorch module path of an exported node: ``/features/blocks/blocks.0/conv/Conv`` ->
    ``features.blocks.0.conv`` (the exporter's scopes repeat each parent's dotted path)."""
    scopes = node.name.strip("/").split("/")[:-1]
    return ".".join(s.rsplit(".", 1)[-1] for s in scopes) or node.name


def quantizable_nodes(model: onnx.ModelProto) -> list[str]:
    """The feature network's nodes; refuses a weight layer whose weights are not stored tensors
    (computed from the input at run time, as in dynamic/conditional convolutions): int8 weights
    need fixed values, and quantizing such a tensor like an activation ruins it."""
    stored = {init.name for init in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}

    def is_stored(name: str) -> bool:  # an initializer, possibly behind Identity/Constant
        node = producers.get(name)
        while node is not None and node.op_type == "Identity":
            name, node = node.input[0], producers.get(node.input[0])
        return name in stored or (node is not None and node.op_type == "Constant")

    nodes = [n for n in model.graph.node if n.name.startswith(QUANTIZED_SCOPE)]
    for node in nodes:
        weighted = node.op_type in ("Conv", "ConvTranspose", "Gemm") or (
            node.op_type == "MatMul" and any(is_stored(i) for i in node.input))
        if weighted and not is_stored(node.input[1]):
            raise QuantizationError(
                f"layer {layer_name(node)} ({node.op_type}, ONNX node {node.name}) cannot be quantized to int8: its "
                "weights are computed at run time, not stored; export without --quantize or with --quantize fp16.")
    if not any(n.op_type in WEIGHT_OPS for n in nodes):
        raise QuantizationError("the exported model has no Conv/Gemm/MatMul layer under /features/ to quantize.")
    return [n.name for n in nodes]


def unquantized_weight_layers(quantized: onnx.ModelProto, names: list[str]) -> list[str]:
    """Weight layers of ``names`` whose weight input does not come from a DequantizeLinear."""
    dq_outputs = {out for node in quantized.graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    wanted = set(names)
    return [f"{layer_name(n)} ({n.op_type})" for n in quantized.graph.node
            if n.name in wanted and n.op_type in ("Conv", "ConvTranspose", "Gemm") and n.input[1] not in dq_outputs]


def quantize_model(fp32_path: str | Path, out_path: str | Path, mode: str, calibration_reader=None,
                   calibration_method: str = "percentile", exclude: list[str] | None = None,
                   calibration_cache: str | Path | None = None, head_weights: str = "int8",
                   bias_correction: bool = False, threads: int = 1) -> dict:
    """Write the ``mode`` version of ``fp32_path`` to ``out_path``; return what was done (for the
    sidecar JSON). ``int8`` needs a :class:`~onnxruntime.quantization.CalibrationDataReader` and
    takes one of :data:`CALIBRATION_METHODS`; ``exclude`` names ONNX nodes kept float;
    ``calibration_cache`` (a JSON file) stores the activation ranges and reuses them when present;
    ``head_weights="int8"`` stores the float-computed layers' weights (the head) in int8 too;
    ``bias_correction`` corrects the int8 biases on the calibration images
    (:mod:`tlx.quantization.bias_correction`, ``threads`` onnxruntime threads)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if mode not in MODES:
        raise QuantizationError(f"unknown --quantize {mode!r}; choose from {', '.join(MODES)}.")
    if mode == "int8":
        check_calibration_method(calibration_method)
        check_head_weights(head_weights)
    fp32 = onnx.load(str(fp32_path))
    names = [n for n in quantizable_nodes(fp32) if n not in set(exclude or ())]
    kept_float = sorted({layer_name(n) or n.op_type for n in fp32.graph.node if n.name not in set(names)})
    info = {"mode": mode, "tool": "onnxruntime", "kept_float": kept_float}
    if mode == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        excluded = [n.name for n in fp32.graph.node if n.name not in set(names)]
        half = convert_float_to_float16(fp32, keep_io_types=True, node_block_list=excluded)
        _save_with_metadata(half, fp32, out_path)
        return info

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference only: the exporter already folded BatchNorm; keeping node names intact
        # keeps the float/int8 boundary (QUANTIZED_SCOPE) valid.
        quant_pre_process(str(fp32_path), str(prepared), skip_optimization=True)
        try:
            if mode == "int8":
                if calibration_reader is None:
                    raise QuantizationError("--quantize int8 needs calibration images (the training split).")
                # uint8 activations + int8 per-channel symmetric weights: onnxruntime's advice for x86
                # (reduce_range only matters on CPUs without VNNI); QDQ is the format its CPU kernels fuse.
                method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                          "entropy": CalibrationMethod.Entropy}[calibration_method]
                # Histogram methods keep every activation of the data they are given: collect one
                # batch at a time (merged into the histograms) so memory stays one batch's. (Not
                # CalibMaxIntermediateOutputs: in onnxruntime 1.32 it discards full chunks' ranges.)
                strided = {"CalibStridedMinMax": 1} if method != CalibrationMethod.MinMax else {}
                quantize_static(str(prepared), str(out_path), calibration_reader, quant_format=QuantFormat.QDQ,
                                per_channel=True, reduce_range=False, activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QInt8, nodes_to_quantize=names, calibrate_method=method,
                                extra_options=strided, calibration_cache_path=calibration_cache)
                info.update(format="QDQ", weights="int8 per-channel symmetric", activations="uint8 per-tensor",
                            calibration_method=calibration_method)
            else:
                quantize_dynamic(str(prepared), str(out_path), per_channel=True, weight_type=QuantType.QUInt8,
                                 nodes_to_quantize=names)
                info.update(weights="uint8 per-channel", activations="uint8, ranges computed per batch at run time")
        except QuantizationError:
            raise
        except Exception as e:  # onnxruntime's messages name the node; keep them to one line
            raise QuantizationError(f"onnxruntime could not quantize {fp32_path} ({mode}): "
                                    f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from e
    quantized = onnx.load(str(out_path))
    if mode == "int8":
        left = unquantized_weight_layers(quantized, names)
        if left:
            raise QuantizationError(f"layer {left[0]} was left in float32 by onnxruntime's quantizer "
                                    f"({len(left)} such layers); it cannot be quantized to int8 statically.")
        if bias_correction:
            info["bias_correction"] = correct_biases(quantized, fp32, calibration_batches(calibration_reader), threads,
                                                      QUANTIZED_SCOPE)
        if head_weights == "int8":
            outside = {n.name: n for n in quantized.graph.node if not n.name.startswith(QUANTIZED_SCOPE)}
            info["weight_only_int8"] = [layer_name(outside[name]) for name in quantize_float_weights(quantized, set(outside))]
        drop_unused_constants(quantized)
    _save_with_metadata(quantized, fp32, out_path)
    return info


def drop_unused_constants(model: onnx.ModelProto) -> None:
    """Remove initializers and Constant nodes that nothing reads (the ReLU6 bounds of the Clips the
    quantizer folded into activation ranges): onnxruntime warns about each one at every load."""
    used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    for init in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(init)
    for node in [n for n in model.graph.node if n.op_type == "Constant" and not set(n.output) & used]:
        model.graph.node.remove(node)


def _save_with_metadata(model: onnx.ModelProto, source: onnx.ModelProto, path: str | Path) -> None:
    """Carry the class names and preprocessing (metadata_props) over from the fp32 file."""
    del model.metadata_props[:]
    model.metadata_props.extend(source.metadata_props)
    onnx.save(model, str(path))
