"""``tlx.load(checkpoint)``: a trained classifier, ready for ``model.predict(images)``.

A checkpoint carries its class names and the preprocessing its data fed the model, so loading
needs no config and fetches no pretrained weights (the backbone is built without them; the
checkpoint's weights replace them).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from tlx.checkpointing import CheckpointError, safe_torch_load
from tlx.models.classifier import ImageClassifier


def load(checkpoint: str | Path, map_location: Any = "cpu") -> ImageClassifier:
    """A model from a tlx checkpoint (``best.ckpt``), in eval mode, ready for :meth:`ImageClassifier.predict`.

    The file is read with ``weights_only=True`` (a checkpoint carrying pickled code is refused).
    """
    ckpt = safe_torch_load(checkpoint, map_location="cpu")
    hparams = ckpt.get("hyper_parameters") or {}
    if not hparams.get("class_names") or "state_dict" not in ckpt:
        raise CheckpointError(f"{str(checkpoint)!r} is not a trained tlx classifier checkpoint (no class names "
                              "or no weights); use one written by fit, e.g. checkpoints/best.ckpt.")
    class_path = hparams.get("_class_path") or ""
    if class_path.startswith("tlx."):  # a tlx subclass (domain adaptation, say): Lightning builds it once imported
        importlib.import_module(class_path.rsplit(".", 1)[0])
    model = ImageClassifier.load_from_checkpoint(
        checkpoint, map_location=map_location, weights_only=True, weights=None, weights_path=None
    )
    return model.eval()
