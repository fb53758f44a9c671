"""``model.predict(images)``: class names and probabilities for PIL images, files or a folder.

The model's own preprocessing (from its checkpoint: what its data fed it in training) is applied
as evaluation applied it: resize the short side, centre crop, normalise
(:func:`tlx.data.transforms.eval_transform`). ``tlx.load`` (:mod:`tlx.models.loading`) gives such a model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image

from tlx.data.datasets import image_files
from tlx.data.images import load_rgb
from tlx.data.transforms import eval_transform
from tlx.errors import DataError
from tlx.modes import evaluating

if TYPE_CHECKING:
    from tlx.models import ImageClassifier

ImageInput = Image.Image | str | Path
Images = ImageInput | Sequence[ImageInput]


@dataclass(frozen=True)
class Prediction:
    """One image's prediction: the top class, its probability, and every class's probability.
    ``labels``: the classes predicted, most probable first: the top class, or for a multi-label
    model every class at or above its threshold (:mod:`tlx.models.multilabel`; possibly none)."""

    label: str
    probability: float
    probabilities: dict[str, float]
    path: str | None = None  # the file, when the image came from one
    labels: tuple[str, ...] = ()


def _expand(images: Images) -> tuple[list[ImageInput], bool]:
    """The images as a flat list (a folder becomes its image files, sorted), and whether one was given."""
    if isinstance(images, Image.Image):
        return [images], True
    if isinstance(images, (str, Path)):
        path = Path(images)
        if path.is_dir():
            files = image_files(path)
            if not files:
                raise DataError(f"{str(path)!r} holds no images (looked for files with image extensions).")
            return list(files), False
        if not path.is_file():
            raise DataError(f"Image {str(path)!r} does not exist.")
        return [path], True
    items = list(images)
    for item in items:
        if not isinstance(item, (Image.Image, str, Path)):
            raise DataError(f"predict takes PIL images, paths or a folder, got {type(item).__name__}.")
        if not isinstance(item, Image.Image) and not Path(item).is_file():
            raise DataError(f"Image {str(item)!r} does not exist.")
    return items, False


def _batches(items: list[ImageInput], size: int) -> Iterable[list[ImageInput]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _predicted_labels(model: "ImageClassifier", probs: torch.Tensor) -> tuple[str, ...]:
    if model.task != "multilabel":
        return (model.class_names[int(probs.argmax())],)
    above = probs >= model.label_thresholds.cpu()  # as ImageClassifier.predict_step decides
    picked = [i for i in probs.argsort(descending=True).tolist() if above[i]]
    return tuple(model.class_names[i] for i in picked)


@torch.inference_mode()
def predict(model: "ImageClassifier", images: Images, batch_size: int = 32) -> Prediction | list[Prediction]:
    """Class probabilities for a PIL image or a path (one :class:`Prediction`), or for a list of them
    or a folder (a list, in order; a folder's files sorted)."""
    items, single = _expand(images)
    cfg = model.preprocessing
    transform = eval_transform(cfg)
    device = next(model.parameters()).device
    results: list[Prediction] = []
    with evaluating(model):
        for chunk in _batches(items, batch_size):
            pils = [item.convert("RGB") if isinstance(item, Image.Image) else load_rgb(item, cfg.resize_size)
                    for item in chunk]
            x = torch.stack([transform(img) for img in pils]).to(device)
            probs = model.probabilities(model(x).float()).cpu()
            for item, p in zip(chunk, probs):
                top = int(p.argmax())
                results.append(Prediction(
                    label=model.class_names[top],
                    probability=float(p[top]),
                    probabilities={name: float(v) for name, v in zip(model.class_names, p)},
                    path=None if isinstance(item, Image.Image) else str(item),
                    labels=_predicted_labels(model, p),
                ))
    return results[0] if single else results
