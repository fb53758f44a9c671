"""CsvDataModule: labels from a CSV or a DataFrame, single- and multi-label, splits, every bad-input
line; and multi-label training end to end (BCE, mAP, thresholds in the checkpoint, predict)."""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import tlx
from tests.helpers import COLOURS, REPO, TINY_MODEL, TINY_PREPROCESSING, run_cli, write_image
from tlx.data import CsvDataModule
from tlx.errors import DataError

CSV_FRAGMENT = REPO / "configs" / "data" / "csv.yaml"


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def single_label_csv(root: Path, n: int = 6, classes=("cat", "dog"), split: bool = True) -> Path:
    """``root/img/<class><i>.png`` and ``root/labels.csv`` (path,label[,split]); the last third of
    each class is val when ``split``."""
    rows, seed = [], 0
    for cls in classes:
        for i in range(n):
            seed += 1
            write_image(root / "img" / f"{cls}{i}.png", COLOURS[cls], seed=seed)
            rows.append([f"img/{cls}{i}.png", cls] + (["val" if i >= n - n // 3 else "train"] if split else []))
    return write_csv(root / "labels.csv", ["path", "label"] + (["split"] if split else []), rows)


# Two independent labels a tiny model learns fast: "red" (a high red channel), "blue" (a high blue one).
def multilabel_images(root: Path, n: int = 8) -> list[tuple[str, set[str]]]:
    out, seed = [], 0
    for red in (0, 1):
        for blue in (0, 1):
            for i in range(n):
                seed += 1
                name = f"img/{red}{blue}_{i}.png"
                write_image(root / name, (220 if red else 30, 60, 220 if blue else 30), seed=seed)
                out.append((name, {lbl for lbl, on in (("red", red), ("blue", blue)) if on}))
    return out


def datamodule(**kwargs) -> CsvDataModule:
    return CsvDataModule(**{"num_workers": 0, "batch_size": 4, "preprocessing": TINY_PREPROCESSING, **kwargs})


def tiny_csv_fit_args(csv_path: Path, out_dir: Path, epochs: int = 1, extra=()) -> list[str]:
    """A fit of the tiny model on a CSV, through configs/data/csv.yaml."""
    return [
        "fit", "--model.class_path=tlx.models.ImageClassifier",
        f"--model.init_args.backbone={TINY_MODEL['backbone']}", "--model.init_args.weights=null",
        f"--model.init_args.preprocessing={json.dumps(TINY_PREPROCESSING)}",
        "--config", str(CSV_FRAGMENT), f"--data.init_args.csv_path={csv_path}",
        "--data.init_args.batch_size=4", "--data.init_args.num_workers=0",
        f"--trainer.default_root_dir={out_dir}", f"--trainer.max_epochs={epochs}",
        "--trainer.enable_progress_bar=false", *extra,
    ]


# ---- single label ------------------------------------------------------------------------------
def test_single_label_csv_fits_tests_and_predicts_through_the_cli(tmp_path):
    labels = single_label_csv(tmp_path / "data")
    fit = run_cli(tiny_csv_fit_args(labels, tmp_path / "runs", extra=["--data.init_args.split_column=split"]))
    dm = fit.datamodule
    assert isinstance(dm, CsvDataModule) and dm.class_names == ["cat", "dog"] and dm.task == "multiclass"
    assert len(dm.samples("train")) == 8 and len(dm.samples("val")) == 4
    best = next((tmp_path / "runs").rglob("best.ckpt"))
    ckpt = torch.load(best, weights_only=True)  # the data settings load without pickled objects
    assert ckpt["hyper_parameters"]["class_names"] == ["cat", "dog"]
    assert ckpt["hyper_parameters"]["task"] == "multiclass" and "label_thresholds" not in ckpt["state_dict"]
    assert ckpt["datamodule_hyper_parameters"]["csv_path"] == str(labels)

    out = tmp_path / "predictions.csv"
    run_cli(["predict", f"--ckpt_path={best}", "--data=tlx.data.CsvDataModule", f"--data.init_args.csv_path={labels}",
             "--data.init_args.split_column=split", "--data.init_args.num_workers=0",
             f"--prediction_writer.output={out}", f"--trainer.default_root_dir={tmp_path / 'pred'}",
             "--trainer.enable_progress_bar=false"])
    rows = list(csv.DictReader(out.open()))
    assert [r["file"] for r in rows] == [p for p, _ in dm.samples("val")]  # no test rows: predict on val
    assert {r["predicted_class"] for r in rows} <= {"cat", "dog"}


def test_paths_are_relative_to_the_csv_folder_or_root_and_absolute_paths_stay(tmp_path):
    labels = single_label_csv(tmp_path / "data", split=False)
    assert datamodule(csv_path=str(labels)).samples("train")[0][0].startswith(str(tmp_path / "data" / "img"))
    moved = write_csv(tmp_path / "elsewhere" / "labels.csv", ["path", "label"],
                      [[f"img/{c}{i}.png", c] for c in ("cat", "dog") for i in range(6)])
    assert len(datamodule(csv_path=str(moved), root=str(tmp_path / "data")).samples("train")) > 0
    absolute = write_csv(tmp_path / "abs.csv", ["path", "label"],
                         [[str(tmp_path / "data" / "img" / f"{c}{i}.png"), c] for c in ("cat", "dog") for i in range(6)])
    assert len(datamodule(csv_path=str(absolute)).samples("val")) == 2


def test_splits_from_the_column_with_test_rows_and_val_held_out_when_missing(tmp_path):
    rows = [[f"img/{c}{i}.png", c, "test" if i == 5 else "train"] for c in ("cat", "dog") for i in range(6)]
    for c in ("cat", "dog"):
        for i in range(6):
            write_image(tmp_path / "img" / f"{c}{i}.png", COLOURS[c], seed=i)
    labels = write_csv(tmp_path / "labels.csv", ["path", "label", "split"], rows)
    dm = datamodule(csv_path=str(labels), split_column="split", val_split=0.25)
    test = dm.samples("test")
    assert sorted(Path(p).name for p, _ in test) == ["cat5.png", "dog5.png"]
    # no val rows: a stratified val_split of the train rows
    train, val = dm.samples("train"), dm.samples("val")
    assert Counter(label for _, label in val) == {0: 1, 1: 1} and len(train) == 8
    assert not {p for p, _ in val} & {p for p, _ in train} and not {p for p, _ in val} & {p for p, _ in test}


def test_seeded_split_is_stratified_and_reproducible(tmp_path):
    labels = single_label_csv(tmp_path, n=10, classes=("cat", "dog", "fox"), split=False)
    val = datamodule(csv_path=str(labels), val_split=0.3, split_seed=7).samples("val")
    assert Counter(label for _, label in val) == {0: 3, 1: 3, 2: 3}
    assert datamodule(csv_path=str(labels), val_split=0.3, split_seed=7).samples("val") == val
    assert datamodule(csv_path=str(labels), val_split=0.3, split_seed=8).samples("val") != val
    dm = datamodule(csv_path=str(labels), val_split=0.3, split_seed=7)
    assert dm.samples("test") == dm.samples("val")  # no test rows: testing uses val


class FakeFrame:
    """What CsvDataModule needs of a pandas DataFrame (pandas is not a tlx dependency)."""

    def __init__(self, records: list[dict]):
        self.records, self.columns = records, list(records[0])

    def to_dict(self, orient: str) -> list[dict]:
        assert orient == "records"
        return self.records


def test_a_dataframe_or_list_of_dicts_is_read_like_the_csv_and_kept_out_of_hparams(tmp_path, monkeypatch):
    records = [{"path": f"img/{c}{i}.png", "label": c} for c in ("cat", "dog") for i in range(6)]
    for r in records:
        write_image(tmp_path / r["path"], COLOURS[r["label"]])
    monkeypatch.chdir(tmp_path)  # a table's relative paths start from the current folder
    from_frame = datamodule(table=FakeFrame(records), val_split=0.5)
    from_list = datamodule(table=records, val_split=0.5, root=str(tmp_path))
    assert from_frame.class_names == from_list.class_names == ["cat", "dog"]
    assert [label for _, label in from_frame.samples("val")] == [label for _, label in from_list.samples("val")]
    assert "table" not in from_frame.hparams  # a checkpoint cannot hold a DataFrame (weights_only)
    with pytest.raises(DataError, match="data.table must be a pandas DataFrame or a list of dicts, got int"):
        datamodule(table=3).class_names


# ---- multi-label data --------------------------------------------------------------------------
def test_multilabel_from_a_separator_or_from_01_columns(tmp_path):
    images = multilabel_images(tmp_path)
    by_sep = write_csv(tmp_path / "sep.csv", ["path", "label"], [[p, ";".join(sorted(s))] for p, s in images])
    by_cols = write_csv(tmp_path / "cols.csv", ["path", "split", "red", "blue"],
                        [[p, "train", int("red" in s), int("blue" in s)] for p, s in images])
    a = datamodule(csv_path=str(by_sep), label_separator=";")
    b = datamodule(csv_path=str(by_cols), label_columns="*", split_column="split")
    c = datamodule(csv_path=str(by_cols), label_columns=["red", "blue"])
    for dm in (a, b, c):
        assert dm.class_names == ["blue", "red"] and dm.task == "multilabel"
    truth = {str(tmp_path / p): s for p, s in images}
    for path, target in a.samples("train") + b.samples("train"):
        assert {n for n, v in zip(["blue", "red"], target) if v == 1.0} == truth[path]
    # stratified by each row's rarest label (rows without labels: their own stratum): both labels
    # and the empty set reach val, in proportion
    val_targets = np.stack([t for _, t in a.samples("val")])
    assert len(val_targets) == 7 and (val_targets.sum(axis=0) > 0).all() and (val_targets.sum(axis=1) == 0).sum() == 2
    a.setup("fit")
    x, y = next(iter(a.train_dataloader()))
    assert y.shape == (4, 2) and y.dtype == torch.float32


def test_multilabel_training_uses_bce_logs_map_and_predicts_with_the_checkpoint_thresholds(tmp_path, monkeypatch):
    images = multilabel_images(tmp_path / "data")
    labels = write_csv(tmp_path / "data" / "labels.csv", ["path", "label"],
                       [[p, ";".join(sorted(s))] for p, s in images])
    import tlx.models.classifier as classifier

    calls = Counter()
    bce = classifier.multilabel_loss
    monkeypatch.setattr(classifier, "multilabel_loss", lambda *a, **k: calls.update(["bce"]) or bce(*a, **k))
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", lambda *a, **k: pytest.fail("cross-entropy used"))
    fit = run_cli(tiny_csv_fit_args(labels, tmp_path / "runs", epochs=4, extra=[
        "--data.init_args.label_separator=;", "--checkpoint.monitor=val/mAP", "--data.init_args.batch_size=8"]))
    monkeypatch.undo()
    assert calls["bce"] > 0 and fit.model.task == "multilabel"
    metrics = fit.trainer.callback_metrics
    assert {"val/mAP", "val/f1_macro", "val/f1_micro", "val/ap_class/red", "val/ap_class/blue"} <= set(metrics)

    best = next((tmp_path / "runs").rglob("best.ckpt"))
    ckpt = torch.load(best, weights_only=True)
    assert ckpt["hyper_parameters"]["task"] == "multilabel"
    thresholds = ckpt["state_dict"]["label_thresholds"]
    assert thresholds.shape == (2,) and ((thresholds > 0) & (thresholds < 1)).all()

    model = tlx.load(best)
    assert torch.equal(model.label_thresholds, thresholds)
    val = fit.datamodule.samples("val")
    preds = model.predict([p for p, _ in val])
    for pred in preds:  # every label at or above its threshold, most probable first
        above = [n for n, t in zip(model.class_names, thresholds) if pred.probabilities[n] >= t]
        assert set(pred.labels) == set(above)
        assert list(pred.labels) == sorted(pred.labels, key=lambda n: -pred.probabilities[n])
    # The best checkpoint ranks val perfectly here, so its fitted thresholds give the true label sets.
    best_score = next(v for k, v in ckpt["callbacks"].items() if "ModelCheckpoint" in k)["best_model_score"]
    assert float(best_score) == 1.0
    truth = {p: {n for n, v in zip(model.class_names, t) if v} for p, t in val}
    assert {p.path: set(p.labels) for p in preds} == truth

    # Thresholds edited in the checkpoint decide what predict (Python and CLI) gives.
    ckpt["state_dict"]["label_thresholds"] = torch.tensor([0.0, 1.5])  # blue always, red never
    edited = tmp_path / "edited.ckpt"
    torch.save(ckpt, edited)
    assert {tlx.load(edited).predict(val[0][0]).labels} == {("blue",)}
    out = tmp_path / "predictions.csv"
    run_cli(["predict", f"--ckpt_path={edited}", f"--data.init_args.predict_dir={tmp_path / 'data' / 'img'}",
             "--data.init_args.num_workers=0", f"--prediction_writer.output={out}",
             f"--trainer.default_root_dir={tmp_path / 'pred'}", "--trainer.enable_progress_bar=false"])
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 32 and list(rows[0]) == ["file", "labels", "blue", "red"]
    assert {r["labels"] for r in rows} == {"blue"} and all(0 <= float(r["red"]) <= 1 for r in rows)


def test_the_default_recipe_and_a_pinned_multiclass_model_refuse_multilabel_data(tmp_path):
    images = multilabel_images(tmp_path, n=2)
    labels = write_csv(tmp_path / "m.csv", ["path", "label"], [[p, ";".join(sorted(s))] for p, s in images])
    with pytest.raises(tlx.errors.TLXError, match="default recipe .* is for single-label data; .* --model tlx.models"):
        run_cli(["fit", "--config", str(CSV_FRAGMENT),  # no model named: the default recipe
                 f"--data.init_args.csv_path={labels}", "--data.init_args.label_separator=;",
                 "--data.init_args.num_workers=0", f"--model.init_args.backbone={TINY_MODEL['backbone']}",
                 "--model.init_args.weights=null", f"--trainer.default_root_dir={tmp_path}"])
    from tests.helpers import tiny_model, tiny_trainer

    model = tiny_model(class_names=["blue", "red"])  # pinned classes: multiclass unless told
    with pytest.raises(DataError, match="task is 'multiclass' but the data is 'multilabel': set model.task"):
        tiny_trainer(tmp_path).validate(model, datamodule(csv_path=str(labels), label_separator=";"))


# ---- bad input: one line each, naming the CSV / option / row -----------------------------------
def test_missing_csv_and_missing_columns(tmp_path):
    with pytest.raises(DataError, match=r"data.csv_path '.*nope.csv' does not exist"):
        datamodule(csv_path=str(tmp_path / "nope.csv")).class_names
    bad = write_csv(tmp_path / "l.csv", ["file", "label"], [["a.png", "cat"]])
    with pytest.raises(DataError, match=r"l.csv has no 'path' column \(its columns: 'file', 'label'\); set data.path_column"):
        datamodule(csv_path=str(bad)).class_names
    no_label = write_csv(tmp_path / "n.csv", ["path", "class"], [["a.png", "cat"]])
    with pytest.raises(DataError, match=r"no 'label' column .*; set data.label_column \(or data.label_columns"):
        datamodule(csv_path=str(no_label)).class_names
    with pytest.raises(DataError, match="no 'split' column"):
        datamodule(csv_path=str(no_label), label_column="class", split_column="split").class_names


def test_unknown_label_column_and_values_other_than_0_1(tmp_path):
    labels = write_csv(tmp_path / "l.csv", ["path", "red", "blue"], [["a.png", 1, 0], ["b.png", 0, 2]])
    with pytest.raises(DataError, match=r"data.label_columns names 'green', not a column of .*l.csv \(its columns"):
        datamodule(csv_path=str(labels), label_columns=["red", "green"]).class_names
    with pytest.raises(DataError, match=r"l.csv line 3: label column 'blue' holds '2'; label columns hold 0 or 1"):
        datamodule(csv_path=str(labels), label_columns="*").class_names
    with pytest.raises(DataError, match=r"Give data.label_separator .* or data.label_columns .*, not both"):
        datamodule(csv_path=str(labels), label_columns="*", label_separator=";").class_names


def test_a_row_whose_image_is_missing_is_named_with_its_line(tmp_path):
    labels = single_label_csv(tmp_path, split=False)
    (tmp_path / "img" / "cat3.png").unlink()
    (tmp_path / "img" / "dog1.png").unlink()
    with pytest.raises(DataError, match=r"labels.csv line 5: image '.*img/cat3.png' does not exist \(1 more row"):
        datamodule(csv_path=str(labels)).samples("train")


def test_unreadable_images_are_skipped_before_training_with_a_warning(tmp_path, caplog):
    labels = single_label_csv(tmp_path, split=False)
    (tmp_path / "img" / "dog2.png").write_bytes(b"not an image")
    with caplog.at_level(logging.WARNING, logger="tlx"):
        dm = datamodule(csv_path=str(labels))
        kept = dm.samples("train") + dm.samples("val")
    assert len(kept) == 11 and not any(p.endswith("dog2.png") for p, _ in kept)
    assert "skipped 1 unreadable image(s)" in caplog.text and "dog2.png" in caplog.text


def test_a_class_in_val_or_test_never_seen_in_train(tmp_path):
    labels = single_label_csv(tmp_path, classes=("cat", "dog", "fox"))
    rows = list(csv.reader(labels.open()))
    rows = [r for r in rows if not (r[1] == "fox" and r[2] == "train")]  # fox only in val now
    write_csv(labels, rows[0], rows[1:])
    with pytest.raises(DataError, match=r"class\(es\) 'fox' appear in val \(e.g. .*labels.csv line \d+\) but never in train"):
        datamodule(csv_path=str(labels), split_column="split").samples("train")
    images = multilabel_images(tmp_path / "m", n=2)
    rows = [[p, ";".join(sorted(s)), "test" if "red" in s else "train"] for p, s in images]
    multi = write_csv(tmp_path / "m" / "m.csv", ["path", "label", "split"], rows)
    with pytest.raises(DataError, match=r"class\(es\) 'red' appear in test"):
        datamodule(csv_path=str(multi), label_separator=";", split_column="split").samples("test")


def test_other_bad_rows_are_named(tmp_path):
    cases = [
        (["path", "label"], [["a.png", "cat"], ["b.png", ""]], {}, r"line 3: the 'label' column is empty"),
        (["path", "label"], [["a.png", "cat"], ["a.png", "dog"]], {}, r"line 3: 'a.png' is listed again \(first at .*line 2\)"),
        (["path", "label", "s"], [["a.png", "cat", "train"], ["b.png", "dog", "holdout"]], {"split_column": "s"},
         r"line 3: split column 's' holds 'holdout'; use train, val or test"),
        (["path", "label"], [["a.png", "cat"], ["b.png", "cat"]], {}, r"every row has the label 'cat'"),
        (["path", "label"], [], {}, r"has a header but no rows"),
    ]
    for header, rows, options, message in cases:
        labels = write_csv(tmp_path / "l.csv", header, rows)
        with pytest.raises(DataError, match=message):
            datamodule(csv_path=str(labels), **options).class_names


def test_mixing_and_balanced_sampling_are_refused_for_multilabel_data(tmp_path):
    images = multilabel_images(tmp_path, n=2)
    labels = write_csv(tmp_path / "m.csv", ["path", "label"], [[p, ";".join(sorted(s))] for p, s in images])
    dm = datamodule(csv_path=str(labels), label_separator=";", mixup_alpha=0.2)
    dm.setup("fit")
    with pytest.raises(DataError, match="mixup_alpha and cutmix_alpha work on single-label data only"):
        dm.train_dataloader()


def test_export_finds_the_verification_images_of_a_csv_run(tmp_path):
    from tlx.export import _datamodule_from_checkpoint

    labels = single_label_csv(tmp_path / "data")
    run_cli(tiny_csv_fit_args(labels, tmp_path / "runs", extra=["--data.init_args.split_column=split"]))
    dm = _datamodule_from_checkpoint(str(next((tmp_path / "runs").rglob("best.ckpt"))))
    assert isinstance(dm, CsvDataModule) and len(dm.samples("val")) == 4
    assert np.all([Path(p).is_file() for p, _ in dm.samples("val")])


def test_the_same_files_as_a_csv_train_exactly_as_the_class_folders_do(tiny_folder, tmp_path):
    """The CSV module shares the folder module's loaders, transforms and seeded order: the same
    samples in the same order give the same run, bit for bit."""
    from tests.helpers import tiny_data, tiny_model, tiny_trainer

    folders = tiny_data(tiny_folder, preprocessing=TINY_PREPROCESSING)
    rows = [[p, folders.class_names[label], split] for split in ("train", "val") for p, label in folders.samples(split)]
    labels = write_csv(tmp_path / "labels.csv", ["path", "label", "split"], rows)
    table = datamodule(csv_path=str(labels), split_column="split")
    results = []
    for data in (folders, table):
        trainer = tiny_trainer(tmp_path, max_epochs=2)
        trainer.fit(tiny_model(seed=3), data)
        results.append({k: float(v) for k, v in trainer.callback_metrics.items()})
    assert results[0] == results[1] and "val/acc" in results[0]


def test_temperature_scaling_refuses_a_multilabel_run_before_training(tmp_path):
    images = multilabel_images(tmp_path / "data", n=2)
    labels = write_csv(tmp_path / "data" / "labels.csv", ["path", "label"],
                       [[p, ";".join(sorted(s))] for p, s in images])
    temperature = REPO / "configs" / "callbacks" / "temperature.yaml"
    with pytest.raises(tlx.errors.TLXError, match="multi-label model's per-label thresholds.*remove the callback"):
        run_cli(tiny_csv_fit_args(labels, tmp_path / "runs", extra=[
            "--data.init_args.label_separator=;", "--config", str(temperature)]))
    assert not list((tmp_path / "runs").rglob("*.ckpt"))  # refused before any training
