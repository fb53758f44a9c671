"""Labels from a CSV file or a DataFrame: ``path,label`` rows in, ready-to-train loaders out."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tlx.data.folders import Sample, stratified_split
from tlx.data.label_table import (
    LabelledRow,
    LabelTable,
    check_seen_in_train,
    parse_rows,
    read_csv_rows,
    read_table_rows,
    stratum,
)
from tlx.data.labelled import LabelledImageDataModule
from tlx.errors import DataError

log = logging.getLogger("tlx")


class CsvDataModule(LabelledImageDataModule):
    """Images listed in a CSV file (or, from Python, a pandas DataFrame or a list of dicts), one row
    per image: its path and its label(s).

    Single-label: a ``label`` column. Multi-label (the model then uses sigmoid outputs, a binary
    cross-entropy loss, mAP and F1, and per-label thresholds): ``label_separator`` (``a;b`` in the
    label column) or ``label_columns`` (one 0/1 column per label). Class names are sorted.

    Splits come from ``split_column`` (``train``/``val``/``test``; without val rows a seeded
    stratified ``val_split`` of train is held out; without test rows testing uses val) or, without
    one, from a seeded stratified ``val_split`` (multi-label rows are stratified by their rarest label).

    Bad input stops with one line naming the CSV and the row: a missing column or file, an unknown
    label column, a value other than 0/1 in a label column, a class of val/test never seen in train.
    Files that do not decode are skipped before training with a warning, as in the folder module.
    The other options are those of :class:`tlx.data.labelled.LabelledImageDataModule` and
    :class:`tlx.data.base.ImageDataModule`.

    Args:
        csv_path: the CSV file (a header row, then one row per image).
        root: the folder relative paths start from (default: the CSV's folder; for a ``table``, the
            current folder).
        path_column: the column of image paths.
        label_column: the column of labels (one per row, or several joined by ``label_separator``).
        label_separator: labels in ``label_column`` are joined by this (``;``): multi-label.
        label_columns: one 0/1 column per label, listed, or ``*`` for every column but the path and
            split ones: multi-label.
        split_column: a column of ``train``/``val``/``test`` (``valid``, ``validation`` also read as val).
        val_split: the fraction of train held out for validation when no row is ``val``.
        split_seed: seed of that split (independent of the training seed).
        table: Python only: a pandas DataFrame or a list of dicts, instead of ``csv_path``.
    """

    unsaved_arguments = ("table",)

    def __init__(
        self,
        csv_path: str | None = None,
        root: str | None = None,
        path_column: str = "path",
        label_column: str = "label",
        label_separator: str | None = None,
        label_columns: list[str] | str | None = None,
        split_column: str | None = None,
        val_split: float = 0.2,
        split_seed: int = 42,
        table: Any = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if csv_path is not None and table is not None:
            raise DataError("Give data.csv_path or data.table, not both.")
        self._table = table
        if root is not None:
            self.root: Path | None = Path(root)
        elif csv_path is not None:
            self.root = Path(csv_path).parent
        else:
            self.root = Path(".") if table is not None else None
        self._parsed: LabelTable | None = None
        self._rows: dict[str, list[LabelledRow]] | None = None

    @property
    def has_data(self) -> bool:
        return self.hparams.csv_path is not None or self._table is not None

    @property
    def source(self) -> str:
        return str(self.hparams.csv_path) if self.hparams.csv_path is not None else "data.table"

    def label_table(self) -> LabelTable:
        """The rows, parsed and checked (once)."""
        if self._parsed is None:
            if not self.has_data:
                raise DataError("data.csv_path is not set: give the CSV of path,label rows.")
            hp = self.hparams
            columns, rows = read_csv_rows(hp.csv_path) if hp.csv_path is not None else read_table_rows(self._table)
            self._parsed = parse_rows(columns, rows, self.source, hp.path_column, hp.label_column, hp.label_separator,
                                      hp.label_columns, hp.split_column)
        return self._parsed

    @property
    def class_names(self) -> list[str] | None:
        return self.label_table().class_names if self.has_data else None

    @property
    def multilabel(self) -> bool:
        return self.has_data and self.label_table().multilabel

    # ---- rows to splits ------------------------------------------------------------------------
    def _split_rows(self) -> dict[str, list[LabelledRow]]:
        if self._rows is None:
            table = self.label_table()
            rows = [self._located(r) for r in table.rows]
            self._check_files(rows)
            table_rows = LabelTable(table.source, table.class_names, table.multilabel, rows)
            if self.hparams.split_column is None:
                splits = {"train": rows}
            else:
                splits = {s: [r for r in rows if r.split == s] for s in ("train", "val", "test")}
                if not splits["train"]:
                    raise DataError(f"{self.source}: no row has {self.hparams.split_column!r} = train.")
            if not splits.get("val"):
                splits["train"], splits["val"] = self._held_out(table_rows, splits["train"])
            if not splits.get("test"):
                splits.pop("test", None)
            check_seen_in_train(table, splits)
            self._rows = splits
        return self._rows

    def _located(self, row: LabelledRow) -> LabelledRow:
        path = Path(row.path)
        if not path.is_absolute():
            path = self.root / path
        return LabelledRow(row.where, str(path), row.target, row.split)

    def _check_files(self, rows: list[LabelledRow]) -> None:
        missing = [r for r in rows if not Path(r.path).is_file()]
        if missing:
            first = missing[0]
            more = f" ({len(missing) - 1} more row(s) name missing files)" if len(missing) > 1 else ""
            raise DataError(f"{first.where}: image {first.path!r} does not exist{more}; fix the path or data.root.")

    def _held_out(self, table: LabelTable, train: list[LabelledRow]) -> tuple[list[LabelledRow], list[LabelledRow]]:
        """A seeded split of ``train``, stratified by class (multi-label: by each row's rarest label)."""
        keys = stratum(LabelTable(table.source, table.class_names, table.multilabel, train))
        kept, held = stratified_split(list(enumerate(keys)), self.hparams.val_split, self.hparams.split_seed)
        return [train[i] for i, _ in kept], [train[i] for i, _ in held]

    def samples(self, split: str) -> list[Sample]:
        """The ``(path, label)`` list of ``train``, ``val`` or ``test``, after all checks (a label
        is a class index, or a 0/1 vector over :attr:`class_names` for multi-label data)."""
        if split not in self._splits:
            rows = self._split_rows()
            if split == "test" and "test" not in rows:
                log.info("No test rows in %s: testing on the validation split.", self.source)
                self._splits["test"] = self.samples("val")
            else:
                self._splits[split] = self.verified([(r.path, r.target) for r in rows[split]],
                                                    f"{self.source} ({split})", f"the {split} rows of {self.source}")
        return self._splits[split]
