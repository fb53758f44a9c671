"""A table of ``path,label`` rows (a CSV file, a pandas DataFrame, a list of dicts) read into labelled
samples, single- or multi-label, with every bad row named by its line.

Labels come in one of three forms:

* one ``label`` column, one class per row (single-label);
* one ``label`` column holding ``a;b`` (``label_separator``): any number of labels per row, none too;
* one 0/1 column per label (``label_columns``, or ``"*"``: every column but the path and split ones).

Class names are sorted, as the folder module's are. The CSV is read with the ``csv`` module, so
pandas is never needed (a DataFrame is taken through its ``to_dict("records")``).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tlx.errors import DataError

SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_ONE, _ZERO = {"1", "1.0", "true"}, {"0", "0.0", "false"}


@dataclass(frozen=True)
class Row:
    where: str  # "labels.csv line 7" or "table row 3": what a message names
    values: dict[str, Any]


@dataclass
class LabelledRow:
    where: str
    path: str
    target: int | np.ndarray  # a class index, or a 0/1 float vector over the class names
    split: str | None  # train / val / test, from the split column


@dataclass
class LabelTable:
    source: str  # the CSV's path or "the table"
    class_names: list[str]
    multilabel: bool
    rows: list[LabelledRow]


# ---- reading ------------------------------------------------------------------------------------
def read_csv_rows(csv_path: str | Path) -> tuple[list[str], list[Row]]:
    path = Path(csv_path)
    if not path.is_file():
        raise DataError(f"data.csv_path {str(path)!r} does not exist (or is not a file): give the CSV of "
                        "path,label rows.")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's byte-order mark
            reader = csv.DictReader(f)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            rows = [Row(f"{path} line {reader.line_num}", {k.strip(): v for k, v in r.items() if k is not None})
                    for r in reader]
    except UnicodeDecodeError:
        raise DataError(f"data.csv_path {str(path)!r} is not UTF-8 text: save it as a UTF-8 CSV.") from None
    except csv.Error as e:
        raise DataError(f"data.csv_path {str(path)!r} is not a readable CSV ({e}).") from None
    if not columns:
        raise DataError(f"data.csv_path {str(path)!r} is empty: it needs a header row (path,label) and one row per image.")
    return columns, rows


def read_table_rows(table: Any) -> tuple[list[str], list[Row]]:
    """A DataFrame (anything with ``to_dict("records")`` and ``columns``) or a list of dicts."""
    if hasattr(table, "to_dict") and hasattr(table, "columns"):
        columns, records = [str(c) for c in table.columns], table.to_dict("records")
    elif isinstance(table, (list, tuple)) and all(isinstance(r, dict) for r in table):
        records = list(table)
        columns = list(dict.fromkeys(str(k) for r in records for k in r))
    else:
        raise DataError(f"data.table must be a pandas DataFrame or a list of dicts, got {type(table).__name__}.")
    return columns, [Row(f"table row {i}", {str(k): v for k, v in r.items()}) for i, r in enumerate(records)]


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):  # a DataFrame's missing value
        return ""
    return str(value).strip()


# ---- parsing ------------------------------------------------------------------------------------
def parse_rows(
    columns: list[str],
    rows: list[Row],
    source: str,
    path_column: str = "path",
    label_column: str = "label",
    label_separator: str | None = None,
    label_columns: list[str] | str | None = None,
    split_column: str | None = None,
) -> LabelTable:
    """Check the columns and every row; the labels as class indices or 0/1 vectors."""
    shown = ", ".join(repr(c) for c in columns)
    if label_columns is not None and label_separator:
        raise DataError("Give data.label_separator (labels joined in one column) or data.label_columns (one 0/1 "
                        "column per label), not both.")

    def need(column: str, option: str) -> None:
        if column not in columns:
            raise DataError(f"{source} has no {column!r} column (its columns: {shown}); set data.{option}.")

    need(path_column, "path_column")
    if split_column is not None:
        need(split_column, "split_column")
    if not rows:
        raise DataError(f"{source} has a header but no rows: add one row per image.")

    if label_columns is not None:
        names = _label_columns(columns, label_columns, source, shown, {path_column, split_column})
        targets = [_binary_row(row, names) for row in rows]
        multilabel = True
    else:
        need(label_column, "label_column (or data.label_columns for one 0/1 column per label)")
        if label_separator:
            label_sets = [[t.strip() for t in _text(r.values.get(label_column)).split(label_separator) if t.strip()]
                          for r in rows]
            names = sorted({t for labels in label_sets for t in labels})
            index = {n: i for i, n in enumerate(names)}
            targets = [_multi_hot([index[t] for t in labels], len(names)) for labels in label_sets]
            multilabel = True
        else:
            labels = []
            for r in rows:
                label = _text(r.values.get(label_column))
                if not label:
                    raise DataError(f"{r.where}: the {label_column!r} column is empty; give every row a label.")
                labels.append(label)
            names = sorted(set(labels))
            index = {n: i for i, n in enumerate(names)}
            targets = [index[t] for t in labels]
            multilabel = False
    if not names:
        raise DataError(f"{source} names no labels at all.")
    if not multilabel and len(names) < 2:
        raise DataError(f"{source}: every row has the label {names[0]!r}; classification needs at least two classes.")

    out, seen = [], {}
    for row, target in zip(rows, targets):
        path = _text(row.values.get(path_column))
        if not path:
            raise DataError(f"{row.where}: the {path_column!r} column is empty; give the image's path.")
        if path in seen:
            raise DataError(f"{row.where}: {path!r} is listed again (first at {seen[path]}); one row per image"
                            + (f", its labels joined by {label_separator!r}." if label_separator else "."))
        seen[path] = row.where
        split = _split(row, split_column) if split_column is not None else None
        out.append(LabelledRow(row.where, path, target, split))
    return LabelTable(source, names, multilabel, out)


def _label_columns(columns: list[str], spec: list[str] | str, source: str, shown: str, others: set) -> list[str]:
    if spec == "*":
        names = [c for c in columns if c not in others]
        if not names:
            raise DataError(f"{source}: label_columns '*' found no columns besides the path and split ones.")
    else:
        names = [spec] if isinstance(spec, str) else [str(c) for c in spec]
        unknown = [c for c in names if c not in columns]
        if unknown:
            raise DataError(f"data.label_columns names {', '.join(repr(c) for c in unknown)}, not a column of "
                            f"{source} (its columns: {shown}).")
    return sorted(names)


def _binary_row(row: Row, names: list[str]) -> np.ndarray:
    values = []
    for name in names:
        raw = row.values.get(name)
        text = _text(raw).lower()
        if text not in _ONE and text not in _ZERO:
            raise DataError(f"{row.where}: label column {name!r} holds {raw!r}; label columns hold 0 or 1.")
        values.append(1.0 if text in _ONE else 0.0)
    return np.asarray(values, dtype=np.float32)


def _multi_hot(indices: list[int], n: int) -> np.ndarray:
    target = np.zeros(n, dtype=np.float32)
    target[indices] = 1.0
    return target


def _split(row: Row, split_column: str) -> str:
    value = _text(row.values.get(split_column))
    if value.lower() not in SPLIT_NAMES:
        raise DataError(f"{row.where}: split column {split_column!r} holds {value!r}; use train, val or test.")
    return SPLIT_NAMES[value.lower()]


# ---- splits ------------------------------------------------------------------------------------
def stratum(table: LabelTable) -> list[int]:
    """The class each row is stratified by: its class, or for multi-label rows its rarest label
    (a common approximation of multi-label stratification; rows without labels form their own)."""
    if not table.multilabel:
        return [int(r.target) for r in table.rows]
    counts = np.sum([r.target for r in table.rows], axis=0)
    keys = []
    for r in table.rows:
        positive = np.flatnonzero(r.target)
        keys.append(int(positive[np.argmin(counts[positive])]) if len(positive) else -1)
    return keys


def check_seen_in_train(table: LabelTable, splits: dict[str, list[LabelledRow]]) -> None:
    """A class of val or test that train never shows cannot be learnt: name it and a row."""
    def present(rows: list[LabelledRow]) -> dict[int, str]:
        found: dict[int, str] = {}  # class -> the first row showing it
        for r in rows:
            for i in (np.flatnonzero(r.target) if table.multilabel else [r.target]):
                found.setdefault(int(i), r.where)
        return found

    in_train = present(splits["train"])
    for split in ("val", "test"):
        unseen = {i: where for i, where in present(splits.get(split, [])).items() if i not in in_train}
        if unseen:
            names = ", ".join(repr(table.class_names[i]) for i in sorted(unseen))
            raise DataError(f"{table.source}: class(es) {names} appear in {split} (e.g. {unseen[min(unseen)]}) but "
                            "never in train; the model cannot learn them: move some of those rows to train.")
