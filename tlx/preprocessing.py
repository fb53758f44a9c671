"""Preprocessing: what an image goes through before the network, decided in one place.

A :class:`Preprocessing` travels with a backbone's weights (timm's ``pretrained_cfg``, a
torchvision weights enum). :func:`resolve_preprocessing` is the one rule for which applies, each
step overriding the one before:

1. the backbone weights' own;
2. the model's ``preprocessing`` option (a user override, stored in the checkpoint);
3. the data module's ``preprocessing`` option: what the data really feeds the model.

The model records the result in its hyperparameters (``preprocessing``), so that a checkpoint
predicts and exports with the preprocessing it was trained with. Checkpoints written before this
name existed store it as ``data_config``; the model still reads that key.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from tlx.errors import DataError, TLXError
from tlx.options import check_options

_KEYS = ("input_size", "resize_size", "interpolation", "mean", "std")


@dataclass(frozen=True)
class Preprocessing:
    """Evaluation resizes the short side to ``resize_size`` and centre-crops ``input_size``;
    training takes a random-resized crop of ``input_size``. Then ``(x / 255 - mean) / std``."""

    input_size: int
    resize_size: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_timm(cls, cfg: dict[str, Any]) -> Preprocessing:
        """From timm's ``resolve_model_data_config`` (crop_pct as timm's own transforms use it)."""
        size = int(cfg["input_size"][-1])
        crop_pct = float(cfg.get("crop_pct") or 0.875)
        return cls(
            input_size=size,
            resize_size=math.floor(size / crop_pct),
            interpolation=str(cfg.get("interpolation") or "bilinear"),
            mean=tuple(float(v) for v in cfg["mean"]),
            std=tuple(float(v) for v in cfg["std"]),
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any], option: str = "preprocessing") -> Preprocessing:
        """From its plain form; other keys (an export's ``steps``, say) are ignored."""
        missing = [k for k in _KEYS if k not in d]
        if missing:
            raise TLXError(f"{option}: missing {', '.join(missing)} (give {', '.join(_KEYS)}).")
        return cls(
            input_size=int(d["input_size"]),
            resize_size=int(d["resize_size"]),
            interpolation=str(d["interpolation"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


PreprocessingLike = Preprocessing | dict[str, Any] | None


def as_preprocessing(value: PreprocessingLike, option: str = "preprocessing") -> Preprocessing | None:
    """A :class:`Preprocessing` from itself, its plain-dict form (YAML, checkpoints) or ``None``."""
    if value is None or isinstance(value, Preprocessing):
        return value
    unknown = sorted(set(value) - set(_KEYS))
    if unknown:  # a typo in a user's option must not pass silently
        raise TLXError(f"{option}: unknown key(s) {', '.join(unknown)}; the keys are {', '.join(_KEYS)}.")
    check_options(value, option)  # input_size 0, std 0, ...: named here, not deep inside torchvision
    return Preprocessing.from_dict(dict(value), option)


def resolve_preprocessing(
    weights: Preprocessing | None, model: PreprocessingLike = None, data: PreprocessingLike = None
) -> Preprocessing:
    """The preprocessing in force: the data's override, else the model's, else the weights' own."""
    for value, option in ((data, "data.preprocessing"), (model, "model.preprocessing")):
        if (chosen := as_preprocessing(value, option)) is not None:
            return chosen
    if weights is None:
        raise DataError("No preprocessing known: attach a model with a backbone, or set data.preprocessing.")
    return weights


def fed_preprocessing(model: Any, datamodule: Any) -> Preprocessing:
    """What the images a model sees went through: the data module's override, else the model's."""
    return resolve_preprocessing(getattr(model, "preprocessing", None), None, getattr(datamodule, "preprocessing", None))
