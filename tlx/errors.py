"""User-facing errors.

Anything a user can fix (a path, an option, a weights file) raises a subclass of
:class:`TLXError`; ``python -m tlx`` prints its message without a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TLXError(Exception):
    """An error whose message tells the user what to change."""


class DataError(TLXError, ValueError):
    """The dataset on disk is missing, empty or inconsistent."""


class BackboneError(TLXError, ValueError):
    """An unknown backbone, unknown weights, or weights that do not fit."""


class WeightsUnavailableError(BackboneError):
    """Pretrained weights could not be had (typically: no network)."""


def close_names(name: str, candidates: Iterable[str], n: int = 5) -> str:
    """A short 'did you mean' suffix for an unknown name, or '' when nothing is close."""
    matches = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.6)
    return f" Did you mean: {', '.join(matches)}?" if matches else ""
