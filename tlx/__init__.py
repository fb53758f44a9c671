"""tlx: transfer learning for images, on PyTorch Lightning.

Python API: build :class:`ImageClassifier` and :class:`ImageFolderDataModule` (or
:class:`CsvDataModule`), fit them with a
Lightning ``Trainer``; ``model = tlx.load("best.ckpt")``; ``model.predict(images)``.
"""

from tlx.data import CsvDataModule, ImageFolderDataModule
from tlx.inference import Prediction
from tlx.models import ImageClassifier, load

__version__ = "0.1.0"
__all__ = ["CsvDataModule", "ImageClassifier", "ImageFolderDataModule", "Prediction", "load", "__version__"]
