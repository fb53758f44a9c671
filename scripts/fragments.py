"""Config fragments as the reports use them: every fragment of a folder by name, and the objects
one of them describes, built by jsonargparse as ``python -m tlx`` builds them. A new strategy or
DA objective is picked up by dropping its fragment into the folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentParser

REPO = Path(__file__).resolve().parents[1]
STRATEGIES = REPO / "configs" / "finetuning" / "strategies"
OBJECTIVES = REPO / "configs" / "domain_adaptation" / "objectives"


def fragments(folder: Path) -> dict[str, Path]:
    """name (file stem) -> path, sorted by name."""
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def read(fragment: Path, *keys: str) -> Any:
    """The plain value at ``keys`` of a fragment (``read(f, "trainer", "callbacks+")``)."""
    value = yaml.safe_load(fragment.read_text())
    for key in keys:
        value = value[key]
    return value


def instantiate(spec: Any, typ: Any) -> Any:
    """``spec`` (class_path/init_args, or a list of them) as an object of type ``typ``."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--value", type=typ)
    return parser.instantiate_classes(parser.parse_object({"value": spec})).value
