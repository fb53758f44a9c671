"""``python -m tlx export``: a checkpoint to TorchScript and ONNX that carry their preprocessing
and class names, verified against the checkpoint on real images.

The exported model takes ``(B, 3, S, S)`` float32 RGB in ``[0, 1]``: the image with its short
side resized to ``resize_size`` and centre-cropped to ``S = input_size`` (the sidecar JSON says
which). Mean/std normalisation is inside the model (geometric resizing is left outside: it
depends on the image's size and every runtime has its own). The output is class probabilities,
``softmax(logits / T)`` with the checkpoint's temperature (:mod:`tlx.calibration`; 1 when not
calibrated): the graph divides by ``T``, and the metadata names it.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule, LightningModule
from torch import Tensor, nn

from tlx.calibration import calibrated_probabilities
from tlx.data.datasets import image_files
from tlx.data.file_list import read_file_list
from tlx.data.folders import readable_paths
from tlx.data.images import load_rgb
from tlx.data.transforms import eval_transform
from tlx.errors import DataError, TLXError
from tlx.optional import require
from tlx.plain import import_dotted
from tlx.preprocessing import Preprocessing

log = logging.getLogger("tlx")

FORMATS = ("torchscript", "onnx")
INPUT_NAME, OUTPUT_NAME = "image", "probabilities"


class ExportError(TLXError):
    """The export cannot be made or does not match the checkpoint."""


class ExportedClassifier(nn.Module):
    """``[0, 1]`` RGB crops in, class probabilities out: normalisation + backbone + head + softmax
    of the logits divided by the model's temperature."""

    def __init__(self, model: LightningModule, preprocessing: Preprocessing):
        super().__init__()
        # The model's own feature path (a subclass may add layers, e.g. a domain-adaptation
        # bottleneck), as plain modules: tracing cannot walk a LightningModule.
        self.features = model.feature_network()
        self.head = model.head
        self.register_buffer("mean", torch.tensor(preprocessing.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(preprocessing.std, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("temperature", torch.tensor(temperature(model), dtype=torch.float32))

    def forward(self, image: Tensor) -> Tensor:
        return (self.head(self.features((image - self.mean) / self.std)) / self.temperature).softmax(dim=-1)


def temperature(model: nn.Module) -> float:
    t = getattr(model, "temperature", None)
    return float(t) if t is not None else 1.0


def unit_range_transform(cfg: Preprocessing):
    """The preprocessing an exported model expects: resize, centre-crop, scale to [0, 1]."""
    return eval_transform(Preprocessing(cfg.input_size, cfg.resize_size, cfg.interpolation, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)))


def metadata(model: LightningModule, ckpt_path: str) -> dict[str, Any]:
    cfg: Preprocessing = model.preprocessing
    return {
        "class_names": list(model.class_names),
        "input": {"name": INPUT_NAME, "shape": ["batch", 3, cfg.input_size, cfg.input_size], "dtype": "float32",
                  "layout": "NCHW", "color": "RGB", "range": [0.0, 1.0]},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", len(model.class_names)],
                   "meaning": "softmax probabilities of logits / temperature"},
        "temperature": temperature(model),
        "preprocessing": {
            **cfg.to_dict(),
            "steps": [f"resize the short side to {cfg.resize_size} px ({cfg.interpolation}, antialiased)",
                      f"centre-crop {cfg.input_size}x{cfg.input_size}",
                      "RGB float32 in [0, 1], NCHW",
                      "(mean/std normalisation is inside the model)"],
        },
        "backbone": getattr(getattr(model, "backbone", None), "name", None),
        "checkpoint": os.path.abspath(ckpt_path),
    }


def _datamodule_from_checkpoint(ckpt_path: str) -> LightningDataModule | None:
    """The data module the checkpoint was trained with (class folders or a CSV), when its data is still on disk."""
    from tlx.data.base import ImageDataModule
    from tlx.data.labelled import LabelledImageDataModule

    hp = torch.load(ckpt_path, map_location="cpu", weights_only=True).get("datamodule_hyper_parameters") or {}
    try:
        cls = import_dotted(hp.get("_class_path", "tlx.data.ImageFolderDataModule"), "checkpoint's data settings")
    except TLXError:
        return None
    if not (isinstance(cls, type) and issubclass(cls, LabelledImageDataModule)):
        return None
    data = hp.get("root") if hp.get("csv_path") is None else hp["csv_path"]
    if not data or not Path(data).exists():
        return None
    known = {*inspect.signature(cls).parameters, *inspect.signature(LabelledImageDataModule).parameters,
             *inspect.signature(ImageDataModule).parameters}
    try:
        return cls(**{k: v for k, v in hp.items() if k in known})
    except (TypeError, ValueError):
        return None


def _verification_paths(spec: str | None, datamodule: LightningDataModule | None, n: int) -> list[str]:
    if spec:
        p = Path(spec)
        paths = image_files(p) if p.is_dir() else read_file_list(spec)
        if not paths:
            raise DataError(f"verify_images {spec!r} holds no images.")
        return readable_paths(paths[: 4 * n], f"verify_images {spec!r}")[:n]  # bad files skipped and named
    if datamodule is not None and getattr(datamodule, "root", None) is not None and hasattr(datamodule, "samples"):
        samples = datamodule.samples("val")
        step = max(1, len(samples) // n)  # spread over the classes (samples are sorted by class)
        return [path for path, _ in samples[::step][:n]]
    return []


def _load_weights(model: LightningModule, ckpt_path: str | None) -> None:
    if not ckpt_path:
        raise ExportError("export needs a trained checkpoint: --ckpt_path path/to/best.ckpt")
    if not os.path.isfile(ckpt_path):
        raise ExportError(f"ckpt_path {ckpt_path!r} does not exist.")
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)["state_dict"]
    if getattr(model, "head", None) is None:
        raise ExportError(f"{ckpt_path} carries no class names; it cannot be exported.")
    model.load_state_dict(state)


def export_checkpoint(
    model: LightningModule,
    ckpt_path: str | None,
    formats: str | list[str] = "torchscript,onnx",
    output_dir: str | None = None,
    verify_images: str | None = None,
    num_verify: int = 8,
    tolerance: float = 1e-4,
    datamodule: LightningDataModule | None = None,
    quantize: str | None = None,
    calibration_images: int = 300,
    calibration_seed: int = 0,
    calibration_method: str = "percentile",
    threads: int = 1,
    head_weights: str = "int8",
    bias_correction: bool = True,
) -> dict[str, Any]:
    """Write ``<stem>.torchscript.pt`` / ``<stem>.onnx`` and ``<stem>.json`` (class names,
    preprocessing, verification); return that JSON's content. ``quantize`` (``int8``, ``dynamic``,
    ``fp16``, comma-separated) adds ``<stem>.<mode>.onnx`` files and every precision's figures
    (see :mod:`tlx.quantization`); ``head_weights`` (``int8``/``float``) how the int8 file stores
    the float-computed head's weights; ``bias_correction`` the int8 file's empirical bias correction."""
    wanted = [f.strip().lower() for f in (formats.split(",") if isinstance(formats, str) else formats) if f.strip()]
    unknown = sorted(set(wanted) - set(FORMATS))
    if unknown or not wanted:
        raise ExportError(f"unknown export format {unknown or formats!r}; choose from {', '.join(FORMATS)}.")
    if quantize:
        require("onnxruntime", "export", "Quantized export (--quantize)")
        from tlx.quantization.onnx_quantize import check_calibration_method, check_head_weights
        from tlx.quantization.pipeline import parse_modes

        modes = parse_modes(quantize)
        check_calibration_method(calibration_method)
        check_head_weights(head_weights)
        wanted += [] if "onnx" in wanted else ["onnx"]  # the quantized files are made from the fp32 ONNX
    _load_weights(model, ckpt_path)
    if getattr(model, "task", None) == "multilabel":  # the exported graph ends in a softmax
        raise ExportError(f"{ckpt_path} is a multi-label model: export writes softmax probabilities and does not "
                          "support it yet; predict with python -m tlx predict or tlx.load(...).predict.")
    if quantize and "int8" in modes:  # refuse before the work
        from tlx.quantization.calibration import check_calibration_size

        check_calibration_size(calibration_images, len(model.class_names))
    model = model.cpu().eval()
    ckpt = Path(ckpt_path)
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    out = Path(output_dir) if output_dir else run_dir / "export"
    out.mkdir(parents=True, exist_ok=True)

    cfg: Preprocessing = model.preprocessing
    wrapper = ExportedClassifier(model, cfg).eval()
    if (quantize or not verify_images) and getattr(datamodule, "root", None) is None:
        datamodule = _datamodule_from_checkpoint(ckpt_path)  # the training run's own images
    paths = _verification_paths(verify_images, datamodule, num_verify)
    to_unit = unit_range_transform(cfg)
    if paths:
        x = torch.stack([to_unit(load_rgb(p)) for p in paths])
        # The reference is the checkpoint model on tlx's own evaluation preprocessing.
        reference_input = torch.stack([eval_transform(cfg)(load_rgb(p)) for p in paths])
    else:
        log.warning("No images to verify the export on (give --verify_images): comparing on random inputs.")
        x = torch.rand(2, 3, cfg.input_size, cfg.input_size, generator=torch.Generator().manual_seed(0))
        reference_input = (x - wrapper.mean) / wrapper.std
    with torch.no_grad():
        reference = calibrated_probabilities(model, model(reference_input))

    info = metadata(model, ckpt_path)
    info["files"], info["verification"] = {}, {"images": paths or f"{len(x)} random inputs", "max_abs_diff": {},
                                               "top1_agreement": {}}
    meta_json = json.dumps({k: info[k] for k in ("class_names", "input", "output", "preprocessing", "temperature",
                                                 "backbone")})
    outputs: dict[str, np.ndarray] = {}
    example = x[:2] if len(x) > 1 else x.repeat(2, 1, 1, 1)  # batch 2: keep the batch axis symbolic

    if "torchscript" in wanted:
        path = out / f"{ckpt.stem}.torchscript.pt"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated but still the portable format
            traced = torch.jit.trace(wrapper, example, check_trace=False)
            torch.jit.save(traced, str(path), _extra_files={"tlx.json": meta_json})
            loaded = torch.jit.load(str(path), map_location="cpu")
            outputs["torchscript"] = loaded(x).numpy()
        info["files"]["torchscript"] = str(path)

    if "onnx" in wanted:
        onnx = require("onnx", "export", "ONNX export (--format onnx)")
        ort = require("onnxruntime", "export", "Checking the ONNX export")
        from tlx.onnx_static_shapes import fold_static_shapes  # imports onnx: only here, an extra

        path = out / f"{ckpt.stem}.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based exporter: no onnxscript needed
            torch.onnx.export(wrapper, (example,), str(path), dynamo=False, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], opset_version=17,
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        fold_static_shapes(path)  # "same"-padding arithmetic is constant at the fixed image size
        proto = onnx.load(str(path))
        for key, value in (("tlx", meta_json), ("class_names", json.dumps(info["class_names"])),
                           ("preprocessing", json.dumps(info["preprocessing"])),
                           ("temperature", json.dumps(info["temperature"]))):
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(proto)
        onnx.save(proto, str(path))
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outputs["onnx"] = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        info["files"]["onnx"] = str(path)

    ref = reference.numpy()
    for name, got in outputs.items():
        diff = float(np.abs(got - ref).max())
        agree = float((got.argmax(1) == ref.argmax(1)).mean())
        info["verification"]["max_abs_diff"][name] = diff
        info["verification"]["top1_agreement"][name] = agree
        print(f"{name}: {info['files'][name]}  max |p - p_ckpt| = {diff:.2e} on {len(x)} images, "
              f"top-1 agreement {agree:.0%}")
    sidecar = out / f"{ckpt.stem}.json"
    info["files"]["metadata"] = str(sidecar)
    with open(sidecar, "w") as f:
        json.dump(info, f, indent=2)
    bad = {k: v for k, v in info["verification"]["max_abs_diff"].items() if not v <= tolerance}
    if bad:
        raise ExportError(f"exported outputs differ from the checkpoint's by {bad} (> tolerance {tolerance}); "
                          f"see {sidecar}")
    if quantize:
        from tlx.quantization.pipeline import export_quantized

        quantized = export_quantized(wrapper, model, Path(info["files"]["onnx"]), modes, datamodule, paths, to_unit,
                                     len(info["class_names"]), calibration_images, calibration_seed, threads,
                                     calibration_method, head_weights, bias_correction)
        info["files"].update(quantized.pop("files"))
        info.update(quantized)
        with open(sidecar, "w") as f:
            json.dump(info, f, indent=2)
    print(f"Exported {', '.join([*outputs, *(modes if quantize else [])])} with class names and preprocessing in "
          f"{sidecar}")
    return info
