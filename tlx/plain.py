"""Hyperparameters as plain data and back: checkpoints load with ``weights_only=True``, so a class or
a factory in ``hparams`` is stored as its dotted name (or ``class_path``/``init_args``) and
rebuilt here, the one place tlx imports a dotted path."""

from __future__ import annotations

import functools
import importlib
import inspect
from typing import Any

from tlx.errors import TLXError


def import_dotted(path: str, what: str = "hyperparameters") -> Any:
    """The object ``package.module.Name`` names; one clear error naming ``what`` when it cannot."""
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise TLXError(f"Cannot import {path!r} named in the {what}: {e}") from e


def to_plain(value: Any) -> Any:
    """A class or function as its dotted name, ``functools.partial(cls, **kwargs)`` (the Python API's
    way to give an optimizer or head its arguments) as ``class_path``/``init_args``; anything else unchanged."""
    if isinstance(value, functools.partial) and not value.args and to_plain(value.func) != value.func:
        return {"class_path": to_plain(value.func), "init_args": dict(value.keywords)}
    if inspect.isclass(value) or inspect.isfunction(value):
        return f"{value.__module__}.{value.__qualname__}"
    return value


def from_plain(value: Any, what: str = "model's hyperparameters") -> Any:
    """The inverse of :func:`to_plain`: a dotted name is imported, a ``class_path``/``init_args``
    dict becomes a factory (``functools.partial``); anything else is returned as it is."""
    if isinstance(value, str):
        return import_dotted(value, what)
    if isinstance(value, dict) and "class_path" in value:
        return functools.partial(import_dotted(value["class_path"], what), **(value.get("init_args") or {}))
    return value


def instance_of(spec: Any, base: type, what: str) -> Any:
    """An instance of ``base`` (an objective, a distillation loss): given as one, or as its
    description in hyperparameters (a dotted class name, or ``class_path`` + ``init_args``)."""
    if isinstance(spec, base):
        return spec
    if isinstance(spec, str):
        spec = {"class_path": spec}
    cls = import_dotted(spec["class_path"], what)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TLXError(f"{what}: {spec['class_path']!r} is not a {base.__module__}.{base.__qualname__}.")
    return cls(**(spec.get("init_args") or {}))

