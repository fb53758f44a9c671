"""Quantized ONNX export on a tiny model and tiny generated images: int8 agrees with the
checkpoint, the calibration draw is seeded and class-balanced, best.json holds every precision's
figures, bad input gets one clear line."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from torch import nn

from tests.helpers import COLOURS, make_imagefolder, write_image
from tests.helpers import run_cli
from tests.helpers import tiny_fit_args
from tlx.errors import TLXError
from tlx.models import ImageClassifier
from tlx.onnx_static_shapes import fold_static_shapes
from tlx.quantization import ImageCalibrationReader, QuantizationError, balanced_calibration_set, quantize_model
from tlx.quantization.bias_correction import channel_means, correctable_convs

CLASSES = ("cat", "dog", "fox")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quant")
    root = make_imagefolder(tmp / "data", classes=CLASSES, n_train=6, n_val=3)
    run_cli(tiny_fit_args(root, tmp / "runs", epochs=2, extra=["--trainer.logger=false"]))
    return root, next((tmp / "runs").rglob("best.ckpt"))


def test_int8_export_agrees_with_the_checkpoint_and_best_json_has_every_precision(tiny_ckpt, tmp_path):
    import onnxruntime as ort

    root, ckpt = tiny_ckpt
    out = tmp_path / "export"
    run_cli(["export", f"--ckpt_path={ckpt}", f"--output_dir={out}", "--format=onnx",
             "--quantize=int8,dynamic,fp16", "--calibration_images=6", "--calibration_seed=3"])
    meta = json.loads((out / "best.json").read_text())

    # every precision measured side by side on the 9 labelled validation images
    assert list(meta["precisions"]) == ["fp32", "int8", "dynamic", "fp16"]
    for name, figures in meta["precisions"].items():
        assert figures["size_bytes"] == (out / f"best{'' if name == 'fp32' else '.' + name}.onnx").stat().st_size
        assert 0 <= figures["accuracy"] <= 1 and figures["latency_batch1_ms"] > 0
        assert figures["throughput_batch32_per_s"] > 0 and figures["top1_agreement"] >= 0
    assert meta["precisions"]["fp32"]["max_abs_diff"] < 1e-4
    assert meta["precisions"]["int8"]["size_vs_fp32"] < 0.6  # int8 weights (the tiny model's graph weighs too)
    assert meta["quantization"]["evaluation"]["images"] == 9 and meta["quantization"]["evaluation"]["threads"] == 1
    calibration = meta["quantization"]["calibration"]
    assert calibration["images"] == 6 and calibration["seed"] == 3 and calibration["method"] == "percentile"
    assert calibration["per_class"] == {"0": 2, "1": 2, "2": 2}
    assert all(p.startswith(str(root / "train")) for p in calibration["paths"])

    # the int8 file: QDQ with int8 per-channel Conv weights; normalisation, head and softmax compute in float
    model = onnx.load(str(out / "best.int8.onnx"))
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    weights = {i.name: i for i in model.graph.initializer}
    dequantized = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in weights]
    # int8 weights with one scale per output channel, int32 biases
    assert {weights[n.input[0]].data_type for n in dequantized} == {onnx.TensorProto.INT8, onnx.TensorProto.INT32}
    assert any(len(weights[n.input[1]].dims) == 1 and weights[n.input[1]].dims[0] > 1 for n in dequantized)
    by_type = {n.op_type: n for n in model.graph.node}
    # the head's weights are stored int8 (one scale per class) but dequantized to float before its Gemm,
    # whose output is never rounded to 8 bits
    head_dq = next(n for n in dequantized if n.output[0] == by_type["Gemm"].input[1])
    assert weights[head_dq.input[0]].data_type == onnx.TensorProto.INT8 and list(weights[head_dq.input[1]].dims) == [3]
    assert by_type["Gemm"].input[2] in weights and weights[by_type["Gemm"].input[2]].data_type == onnx.TensorProto.FLOAT
    assert not [n for n in model.graph.node if by_type["Gemm"].output[0] in n.input and n.op_type == "QuantizeLinear"]
    assert meta["quantization"]["int8"]["weight_only_int8"] == ["head.fc"]
    assert meta["quantization"]["int8"]["bias_correction"]["images"] == 6  # on by default, on the calibration images
    assert meta["quantization"]["int8"]["bias_correction"]["layers"] > 0
    dq_outputs = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    assert not {*by_type["Sub"].input, *by_type["Softmax"].input} & dq_outputs
    assert "class_names" in {p.key for p in model.metadata_props}
    # no constant is left unread (onnxruntime warns about each one at every load)
    read = {name for n in model.graph.node for name in n.input}
    assert set(weights) <= read and all(set(n.output) <= read for n in model.graph.node if n.op_type == "Constant")

    # alone, on images it never saw, it agrees with the checkpoint on top-1
    from tlx.data.transforms import eval_transform
    from tlx.export import unit_range_transform

    checkpoint = ImageClassifier.load_from_checkpoint(ckpt, weights=None).eval()
    images = [Image.open(write_image(tmp_path / "new" / f"{c}_{i}.png", COLOURS[c], seed=100 + i)).convert("RGB")
              for c in CLASSES for i in range(4)]
    x = torch.stack([unit_range_transform(checkpoint.preprocessing)(im) for im in images])
    with torch.no_grad():
        expected = checkpoint(torch.stack([eval_transform(checkpoint.preprocessing)(im) for im in images])).softmax(-1)
    got = ort.InferenceSession(str(out / "best.int8.onnx"), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})[0]
    assert (got.argmax(1) == expected.numpy().argmax(1)).all()
    assert np.abs(got - expected.numpy()).max() < 0.1


def test_calibration_draw_is_seeded_and_class_balanced(tmp_path):
    samples = [(f"a{i}.png", 0) for i in range(10)] + [(f"b{i}.png", 1) for i in range(3)] + \
              [(f"c{i}.png", 2) for i in range(20)]
    draw = balanced_calibration_set(samples, 9, 3, seed=0)
    assert Counter(label for _, label in draw) == {0: 3, 1: 3, 2: 3}
    assert draw == balanced_calibration_set(list(reversed(samples)), 9, 3, seed=0)  # order of listing irrelevant
    assert draw != balanced_calibration_set(samples, 9, 3, seed=1)
    # a small class gives all it has, the others share the rest evenly
    assert Counter(label for _, label in balanced_calibration_set(samples, 13, 3, seed=0)) == {0: 5, 1: 3, 2: 5}
    assert len(balanced_calibration_set(samples, 100, 3)) == len(samples)
    with pytest.raises(TLXError, match="smaller than the number of classes"):
        balanced_calibration_set(samples, 2, 3)

    paths = [str(write_image(tmp_path / f"{i}.png", (10 * i, 50, 90), size=20 + i)) for i in range(5)]
    from torchvision.transforms import v2

    reader = ImageCalibrationReader(paths, v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                                                       v2.Resize((8, 8))]), "image", batch_size=2)
    batches = list(iter(reader.get_next, None))
    assert len(reader) == 3 and [b["image"].shape for b in batches] == [(2, 3, 8, 8), (2, 3, 8, 8), (1, 3, 8, 8)]
    reader.rewind()
    assert np.array_equal(reader.get_next()["image"], batches[0]["image"])
    # onnxruntime's strided calibration reads a range of batches at a time
    reader.set_range(start_index=1, end_index=2)
    assert [b["image"].shape[0] for b in iter(reader.get_next, None)] == [2]
    reader.set_range(start_index=2, end_index=3)
    assert np.array_equal(reader.get_next()["image"], batches[2]["image"]) and reader.get_next() is None
    reader.set_range(start_index=0, end_index=1)
    reader.rewind()  # a rewind reads everything again, not the last range
    assert len(list(iter(reader.get_next, None))) == 3


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_every_calibration_method_quantizes_and_agrees_with_fp32(tmp_path, method):
    import onnxruntime as ort

    torch.manual_seed(0)
    model = Exported(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU6(), nn.Conv2d(8, 4, 3, padding=1),
                                   nn.ReLU6())).eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (torch.rand(2, 3, 16, 16),), str(path), dynamo=False, input_names=["image"],
                      dynamic_axes={"image": {0: "batch"}})
    images = torch.rand(40, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    info = quantize_model(path, tmp_path / "q.onnx", "int8", TensorReader(images[:32]), calibration_method=method)
    assert info["calibration_method"] == method
    x = images[32:].numpy()  # images the calibration did not see
    got = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    with torch.no_grad():
        expected = model(images[32:]).numpy()
    assert np.abs(got - expected).max() < 0.05


class TensorReader(ImageCalibrationReader):
    """The calibration reader on already-made tensors instead of image files."""

    def __init__(self, images: torch.Tensor, batch_size: int = 8):
        super().__init__([str(i) for i in range(len(images))], None, "image", batch_size=batch_size)
        self.images = images

    def get_next(self):
        if self._next >= self._end:
            return None
        self._next += self.batch_size
        return {"image": self.images[self._next - self.batch_size:self._next].numpy()}


def test_bias_correction_brings_each_convolutions_mean_output_to_fp32s(tmp_path):
    import onnxruntime as ort

    torch.manual_seed(0)
    model = Exported(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU6(), nn.Conv2d(8, 8, 3, padding=1),
                                   nn.ReLU6(), nn.Conv2d(8, 4, 1))).eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (torch.rand(2, 3, 16, 16),), str(path), dynamo=False, input_names=["image"],
                      dynamic_axes={"image": {0: "batch"}})
    images = torch.rand(40, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    calibration = images[:32]
    quantize_model(path, tmp_path / "plain.onnx", "int8", TensorReader(calibration), calibration_method="minmax")
    info = quantize_model(path, tmp_path / "corrected.onnx", "int8", TensorReader(calibration),
                          calibration_method="minmax", bias_correction=True)
    assert info["bias_correction"]["layers"] == 3 and info["bias_correction"]["images"] == 32

    fp32, plain, corrected = (onnx.load(str(tmp_path / f)) for f in ("m.onnx", "plain.onnx", "corrected.onnx"))
    batches = [calibration[i:i + 8].numpy() for i in range(0, 32, 8)]
    errors = {"plain": [], "corrected": []}
    for name, quantized in (("plain", plain), ("corrected", corrected)):
        for node, fp32_output, _ in correctable_convs(quantized, fp32):
            target = channel_means(fp32, [fp32_output], batches)[0]
            errors[name].append(np.abs(channel_means(quantized, [node.output[0]], batches)[0] - target).mean())
    # every layer's mean output per channel is closer to fp32's than without the correction; only
    # rounding to the bias's int32 step (and the fused kernel's output rounding) is left
    assert all(c <= p + 1e-6 for c, p in zip(errors["corrected"], errors["plain"]))
    assert sum(errors["corrected"]) < 0.5 * sum(errors["plain"])
    # only the int32 biases moved
    changed = {i.name for i, j in zip(plain.graph.initializer, corrected.graph.initializer)
               if not np.array_equal(onnx.numpy_helper.to_array(i), onnx.numpy_helper.to_array(j))}
    assert changed and all(onnx.numpy_helper.to_array(i).dtype == np.int32
                           for i in corrected.graph.initializer if i.name in changed)
    # and the corrected file still runs and agrees with fp32 on images it did not see
    got = ort.InferenceSession(str(tmp_path / "corrected.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"image": images[32:].numpy()})[0]
    with torch.no_grad():
        assert np.abs(got - model(images[32:]).numpy()).max() < 0.05


def test_a_calibration_set_smaller_than_the_classes_is_refused(tiny_ckpt, tmp_path):
    _, ckpt = tiny_ckpt
    with pytest.raises(TLXError, match=r"--calibration_images 2 is smaller than the number of classes \(3\)"):
        run_cli(["export", f"--ckpt_path={ckpt}", f"--output_dir={tmp_path}", "--quantize=int8",
                 "--calibration_images=2"])
    with pytest.raises(TLXError, match="unknown --quantize 'int4'"):
        run_cli(["export", f"--ckpt_path={ckpt}", f"--output_dir={tmp_path}", "--quantize=int4"])
    with pytest.raises(TLXError, match="unknown --calibration_method 'kl'; choose from minmax, percentile, entropy"):
        run_cli(["export", f"--ckpt_path={ckpt}", f"--output_dir={tmp_path}", "--quantize=int8",
                 "--calibration_method=kl"])


class InputDependentConv(nn.Module):
    """A conditional convolution: its kernel is scaled by the input, so it is not a stored tensor."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 4, 3, 3))

    def forward(self, x):
        return nn.functional.conv2d(x, self.weight * x.mean(), padding=1)


class Exported(nn.Module):
    def __init__(self, features: nn.Module):
        super().__init__()
        self.features, self.head = features, nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3))).softmax(-1)


def test_a_layer_that_cannot_be_quantized_is_named(tmp_path):
    model = Exported(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), InputDependentConv())).eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (torch.rand(2, 3, 8, 8),), str(path), dynamo=False, input_names=["image"])
    with pytest.raises(QuantizationError, match=r"^layer features\.2 \(Conv, ONNX node /features/features\.2/Conv\) "
                                                 r"cannot be quantized to int8: its weights are computed at run time"):
        quantize_model(path, tmp_path / "q.onnx", "int8", calibration_reader=None)


def test_static_same_padding_folds_into_the_convolutions(tmp_path):
    import onnxruntime as ort
    from timm.layers import create_conv2d

    model = nn.Sequential(create_conv2d(3, 4, 3, stride=2, padding="same"), nn.ReLU6(),
                          create_conv2d(4, 4, 3, stride=2, padding="same", depthwise=True)).eval()
    path = tmp_path / "same.onnx"
    torch.onnx.export(model, (torch.rand(2, 3, 15, 15),), str(path), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "batch"}})
    assert "Pad" in {n.op_type for n in onnx.load(str(path)).graph.node}  # padding computed at run time
    assert fold_static_shapes(path) > 0
    assert {n.op_type for n in onnx.load(str(path)).graph.node} == {"Conv", "Clip"}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.rand(batch, 3, 15, 15)
        with torch.no_grad():
            assert np.abs(session.run(None, {"x": x.numpy()})[0] - model(x).numpy()).max() < 1e-5


def test_quantization_aware_training_trains_under_int8_and_its_checkpoint_exports(tmp_path):
    from lightning.pytorch import Callback
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.nn.utils import parametrize

    from tests.helpers import TINY_MODEL
    from tests.helpers import tiny_trainer
    from tlx.data import ImageFolderDataModule
    from tlx.quantization import QuantizationAwareTraining

    root = make_imagefolder(tmp_path / "data", classes=CLASSES, n_train=6, n_val=3)
    seen, validated, weights = [], [], {}

    def first_conv(module):
        return next(m for m in module.backbone.modules() if isinstance(m, nn.Conv2d))

    def on_int8_grid(conv):
        w = conv.weight.detach()
        steps = w / (w.abs().amax(dim=(1, 2, 3), keepdim=True) / 127)  # on the int8 grid: whole numbers
        return bool(torch.allclose(steps, steps.round(), atol=1e-3))

    class Probe(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            weights[trainer.current_epoch] = first_conv(pl_module).weight.detach().clone()

        def on_train_batch_end(self, trainer, pl_module, *args):
            conv = first_conv(pl_module)
            seen.append((trainer.current_epoch, parametrize.is_parametrized(conv), on_int8_grid(conv),
                         len(conv._forward_pre_hooks)))

        def on_validation_batch_end(self, trainer, pl_module, *args):
            if not trainer.sanity_checking:
                validated.append((trainer.current_epoch, on_int8_grid(first_conv(pl_module))))

    model = ImageClassifier(**TINY_MODEL)
    data = ImageFolderDataModule(str(root), batch_size=4, num_workers=0, preprocessing=TINY_MODEL["preprocessing"])
    trainer = tiny_trainer(tmp_path, max_epochs=2, enable_checkpointing=True, limit_val_batches=1, callbacks=[
        QuantizationAwareTraining(last_epochs=1), Probe(),
        ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="best", monitor=None)])
    trainer.fit(model, data)

    # float in epoch 0; int8 weights and a hooked input in epoch 1, where the weights still move
    assert {s for s in seen if s[0] == 0} == {(0, False, False, 0)}
    assert {s for s in seen if s[0] == 1} == {(1, True, True, 1)}
    # validation measures the float model in every epoch (the best checkpoint compares epochs alike),
    # and the next training step is simulated int8 again
    assert validated == [(0, False), (1, False)]
    assert not torch.equal(weights[1], first_conv(model).weight)
    # after fit: a plain model again, and so is the checkpoint (it loads strictly into a fresh one)
    assert not parametrize.is_parametrized(first_conv(model)) and not first_conv(model)._forward_pre_hooks
    ckpt = tmp_path / "ckpt" / "best.ckpt"
    fresh = ImageClassifier.load_from_checkpoint(ckpt, weights=None)
    assert torch.equal(first_conv(fresh).weight, first_conv(model).weight)

    out = tmp_path / "export"
    run_cli(["export", f"--ckpt_path={ckpt}", f"--output_dir={out}", "--format=onnx", "--quantize=int8",
             "--calibration_images=3"])
    meta = json.loads((out / "best.json").read_text())
    assert set(meta["precisions"]) == {"fp32", "int8"} and meta["precisions"]["int8"]["top1_agreement"] >= 0.5


@pytest.mark.parametrize("op", ["Gemm transB=1", "Gemm transB=0", "MatMul"])
def test_weight_only_int8_stores_int8_per_output_channel_and_computes_in_float(op):
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    from tlx.quantization.weight_only import quantize_float_weights

    rng = np.random.default_rng(0)
    # one output channel 1000x larger than another: a single scale for all would zero the small one
    w = rng.normal(size=(6, 4)).astype(np.float32) * np.array([1, 1, 1, 1e-3], dtype=np.float32)  # (in, out)
    bias = rng.normal(size=4).astype(np.float32)
    trans_b = op == "Gemm transB=1"
    stored = w.T.copy() if trans_b else w
    if op == "MatMul":
        node = helper.make_node("MatMul", ["x", "w"], ["y"], name="/head/MatMul")
    else:
        node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="/head/Gemm", transB=int(trans_b))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 6])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 4])],
                              [numpy_helper.from_array(stored, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    assert quantize_float_weights(model) == [node.name]
    onnx.checker.check_model(model)
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert weights["w_int8"].dtype == np.int8 and weights["w_scale"].shape == (4,)
    assert np.abs(weights["w_int8"]).max() == 127 and weights["b"].dtype == np.float32  # full range; bias float
    x = rng.normal(size=(5, 6)).astype(np.float32)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    expected = x @ w + (0 if op == "MatMul" else bias)
    # only the weights' rounding: at most half a step of each output channel's own scale
    step = np.abs(w).max(0) / 127
    assert (np.abs(got - expected) <= np.abs(x).sum(1, keepdims=True) * step / 2 + 1e-5).all()
    assert np.abs(got - expected)[:, 3].max() < 1e-4  # the small channel kept its own fine scale
    assert quantize_float_weights(model) == []  # weights already int8 are left alone


def test_head_weights_float_keeps_the_head_float32_and_bad_values_are_refused(tiny_ckpt, tmp_path):
    _, ckpt = tiny_ckpt
    out = tmp_path / "export"
    run_cli(["export", f"--ckpt_path={ckpt}", f"--output_dir={out}", "--format=onnx", "--quantize=int8",
             "--calibration_images=3", "--head_weights=float"])
    model = onnx.load(str(out / "best.int8.onnx"))
    weights = {i.name: i for i in model.graph.initializer}
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    assert weights[gemm.input[1]].data_type == onnx.TensorProto.FLOAT
    assert "weight_only_int8" not in json.loads((out / "best.json").read_text())["quantization"]["int8"]
    with pytest.raises(TLXError, match="unknown --head_weights 'int4'; choose from int8, float"):
        run_cli(["export", f"--ckpt_path={ckpt}", f"--output_dir={tmp_path}", "--quantize=int8", "--head_weights=int4"])


def test_quantization_aware_training_can_validate_the_simulated_int8_model(tmp_path):
    from lightning.pytorch import Callback

    from tests.helpers import TINY_MODEL
    from tests.helpers import tiny_trainer
    from tlx.data import ImageFolderDataModule
    from tlx.quantization import QuantizationAwareTraining

    root = make_imagefolder(tmp_path / "data", classes=CLASSES, n_train=4, n_val=2)
    validated = []

    class Probe(Callback):
        def on_validation_batch_end(self, trainer, pl_module, *args):
            conv = next(m for m in pl_module.backbone.modules() if isinstance(m, nn.Conv2d))
            w = conv.weight.detach()
            steps = w / (w.abs().amax(dim=(1, 2, 3), keepdim=True) / 127)
            validated.append(bool(torch.allclose(steps, steps.round(), atol=1e-3)))

    model = ImageClassifier(**TINY_MODEL)
    data = ImageFolderDataModule(str(root), batch_size=4, num_workers=0, preprocessing=TINY_MODEL["preprocessing"])
    tiny_trainer(tmp_path, max_epochs=1, num_sanity_val_steps=0, callbacks=[
        QuantizationAwareTraining(last_epochs=1, validate_quantized=True), Probe()]).fit(model, data)
    assert validated and all(validated)  # validation saw the int8-rounded weights
