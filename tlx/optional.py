"""Optional dependencies, imported where they are used, with one line saying what to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from tlx.errors import TLXError


class MissingDependencyError(TLXError, ImportError):
    """A feature needs a package that is not installed."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """``import module``, or a :class:`MissingDependencyError` naming the ``tlx[extra]`` to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(
            f"{purpose} needs {module.split('.')[0]}, which is not installed: pip install 'tlx[{extra}]' "
            f"(from a checkout: pip install -e '.[{extra}]'). ({e})"
        ) from None
