"""Why does an int8 export lose accuracy? Calibration methods and per-layer sensitivity, measured
against the fp32 ONNX file on the validation images of an exported checkpoint.

    python scripts/quantization_sensitivity.py RUN_DIR [RUN_DIR ...] --methods minmax percentile entropy
    python scripts/quantization_sensitivity.py RUN_DIR --layers        # all-but-one-layer sweep
    python scripts/quantization_sensitivity.py RUN_DIR --label_free 10  # keep 1..10 layers float, label-free
    python scripts/quantization_sensitivity.py RUN_DIR --methods minmax entropy --bias_correction

``RUN_DIR`` holds ``checkpoints/best.ckpt`` and ``export/best.onnx`` + ``best.json`` from
``python -m tlx export --quantize int8`` (its calibration images are reused). Every variant
reports accuracy, top-1 agreement with fp32, mean and max |dp|, and how many of the flipped images
had an fp32 top-2 margin below 0.1 (near ties, which any perturbation flips). Preprocessed images
and calibration ranges are cached under ``RUN_DIR/sensitivity/``.

``--label_free K`` tries accuracy-aware PTQ without labels: each convolution's sensitivity is the
mean |dp| against fp32 on the *calibration* images with it alone kept float; then the 1..K most
sensitive are kept float, each set reported with its agreement on the calibration images (what
an export could check) and its validation figures (what it would gain).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tlx.data.images import load_rgb  # noqa: E402
from tlx.export import _datamodule_from_checkpoint, unit_range_transform  # noqa: E402
from tlx.preprocessing import Preprocessing  # noqa: E402
from tlx.quantization.calibration import ImageCalibrationReader, balanced_calibration_set  # noqa: E402
from tlx.quantization.measure import session  # noqa: E402
from tlx.quantization.onnx_quantize import layer_name, quantizable_nodes, quantize_model  # noqa: E402

NEAR_TIE = 0.1


class ArrayReader(ImageCalibrationReader):
    """The calibration reader on already preprocessed images (the sweep quantizes many times)."""

    def __init__(self, images: np.ndarray, input_name: str, batch_size: int = 16):
        super().__init__([str(i) for i in range(len(images))], None, input_name, batch_size)
        self.images = images

    def get_next(self):
        if self._next >= self._end:  # the base class keeps the range (strided calibration)
            return None
        batch = self.images[self._next:self._next + self.batch_size]
        self._next += len(batch)
        return {self.input_name: batch}


def cached_images(path: Path, paths: list[str], to_unit) -> np.ndarray:
    if not path.is_file():
        np.save(path, torch.stack([to_unit(load_rgb(p)) for p in paths]).numpy())
    return np.load(path)


def predict(onnx_path: Path, images: np.ndarray, threads: int) -> np.ndarray:
    sess = session(onnx_path, threads)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: images[i:i + 32]})[0] for i in range(0, len(images), 32)])


def figures(probs: np.ndarray, fp32: np.ndarray, labels: np.ndarray) -> dict:
    top2 = np.sort(fp32, axis=1)[:, -2:]
    flipped = probs.argmax(1) != fp32.argmax(1)
    return {"accuracy": float((probs.argmax(1) == labels).mean()), "agreement": float(1 - flipped.mean()),
            "flipped": int(flipped.sum()), "flipped_near_tie": int((flipped & (top2[:, 1] - top2[:, 0] < NEAR_TIE)).sum()),
            "mean_abs_dp": float(np.abs(probs - fp32).sum(1).mean() / 2), "max_abs_dp": float(np.abs(probs - fp32).max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--methods", nargs="+", default=["minmax"])
    parser.add_argument("--exclude", default="", help="node sets kept float, ';' between sets, ',' between "
                        "substrings of node names, e.g. 'GlobalAveragePool;features.0/,GlobalAveragePool'")
    parser.add_argument("--layers", action="store_true", help="also quantize all but one weight layer, each in turn")
    parser.add_argument("--label_free", type=int, default=0, metavar="K",
                        help="rank layers on the calibration images, keep the top 1..K float")
    parser.add_argument("--all_train", action="store_true", help="calibrate on every training image")
    parser.add_argument("--calibration_seed", type=int, default=None,
                        help="a new seeded balanced draw (as many images as the export's) instead of the export's own")
    parser.add_argument("--bias_correction", action="store_true", help="correct the int8 biases (as the export does)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for run in args.runs:
        meta = json.loads((run / "export" / "best.json").read_text())
        work = run / "sensitivity"
        work.mkdir(exist_ok=True)
        to_unit = unit_range_transform(Preprocessing.from_dict(meta["preprocessing"]))
        datamodule = _datamodule_from_checkpoint(str(run / "checkpoints" / "best.ckpt"))
        val = list(datamodule.samples("val"))
        labels = np.array([y for _, y in val])
        x_val = cached_images(work / "val.npy", [p for p, _ in val], to_unit)
        calib_paths = meta["quantization"]["calibration"]["paths"]
        suffix = ""
        if args.all_train:
            calib_paths, suffix = [p for p, _ in datamodule.samples("train")], "_all"
        elif args.calibration_seed is not None:
            train = list(datamodule.samples("train"))
            chosen = balanced_calibration_set(train, len(calib_paths), len(meta["class_names"]), args.calibration_seed)
            calib_paths, suffix = [p for p, _ in chosen], f"_seed{args.calibration_seed}"
        x_cal = cached_images(work / f"calib{suffix}.npy", calib_paths, to_unit)
        fp32_path = run / "export" / "best.onnx"
        fp32 = predict(fp32_path, x_val, args.threads)
        input_name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name
        print(f"\n{run.name}: {len(val)} val images, {len(x_cal)} calibration images, fp32 accuracy "
              f"{(fp32.argmax(1) == labels).mean():.4f}, fp32 near ties (margin < {NEAR_TIE}): "
              f"{int((np.diff(np.sort(fp32, 1)[:, -2:], axis=1)[:, 0] < NEAR_TIE).sum())}")
        all_nodes = quantizable_nodes(onnx.load(str(fp32_path)))
        excludes = {"-": []}
        for spec in [e for e in args.exclude.split(";") if e]:  # substrings of node names, comma-separated
            excludes[spec] = [n for n in all_nodes if any(part in n for part in spec.split(","))]
        for method in args.methods:
            for spec, nodes in excludes.items():
                out = work / f"int8_{method}{suffix}.onnx"
                quantize_model(fp32_path, out, "int8", ArrayReader(x_cal, input_name), calibration_method=method,
                               exclude=nodes, calibration_cache=work / f"ranges_{method}{suffix}.json",
                               bias_correction=args.bias_correction)
                row = figures(predict(out, x_val, args.threads), fp32, labels)
                size = out.stat().st_size / fp32_path.stat().st_size
                print(f"  {method:<10} float: {spec} ({len(nodes)} nodes) size {size:.3f}x "
                      + " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
                      flush=True)
        if args.layers:
            method = args.methods[0]
            names = [n for n in all_nodes if n.endswith("/Conv")]
            rows = []
            for name in names:
                out = work / "one_float.onnx"
                quantize_model(fp32_path, out, "int8", ArrayReader(x_cal, input_name), calibration_method=method,
                               exclude=[name], calibration_cache=work / f"ranges_{method}{suffix}.json")
                rows.append((figures(predict(out, x_val, args.threads), fp32, labels), name))
                print(f"  all but {layer_name(onnx.NodeProto(name=name))}: " + " ".join(
                    f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in rows[-1][0].items()), flush=True)
            print("  most sensitive (largest drop of mean |dp| when kept float):")
            for row, name in sorted(rows, key=lambda r: r[0]["mean_abs_dp"])[:8]:
                print(f"    {name}: mean|dp| {row['mean_abs_dp']:.4f} agreement {row['agreement']:.4f}")
        if args.label_free:
            label_free(fp32_path, work, x_cal, x_val, fp32, labels, input_name, args, suffix)


def label_free(fp32_path: Path, work: Path, x_cal, x_val, fp32, labels, input_name: str, args, suffix: str) -> None:
    method = args.methods[0]
    fp32_cal = predict(fp32_path, x_cal, args.threads)

    def quantize(exclude: list[str]) -> Path:
        out = work / "label_free.onnx"
        quantize_model(fp32_path, out, "int8", ArrayReader(x_cal, input_name), calibration_method=method,
                       exclude=exclude, calibration_cache=work / f"ranges_{method}{suffix}.json")
        return out

    def on_calibration(out: Path) -> str:
        row = figures(predict(out, x_cal, args.threads), fp32_cal, fp32_cal.argmax(1))
        return f"calibration agreement {row['agreement']:.4f} mean|dp| {row['mean_abs_dp']:.4f}"

    print(f"  int8, {method}: {on_calibration(quantize([]))}")
    convs = [n for n in quantizable_nodes(onnx.load(str(fp32_path))) if n.endswith("/Conv")]
    sensitivity = {}
    for name in convs:
        probs = predict(quantize([name]), x_cal, args.threads)
        sensitivity[name] = figures(probs, fp32_cal, fp32_cal.argmax(1))["mean_abs_dp"]
    ranked = sorted(convs, key=sensitivity.get)
    for k in range(1, args.label_free + 1):
        out = quantize(ranked[:k])
        row = figures(predict(out, x_val, args.threads), fp32, labels)
        print(f"  {k} most sensitive float (last {layer_name(onnx.NodeProto(name=ranked[k - 1]))}): {on_calibration(out)} | "
              f"val accuracy {row['accuracy']:.4f} agreement {row['agreement']:.4f} | size "
              f"{out.stat().st_size / fp32_path.stat().st_size:.3f}x", flush=True)


if __name__ == "__main__":
    main()
