"""tlx: transfer learning for images, on PyTorch Lightning."""

from tlx.data import ImageFolderDataModule
from tlx.models import ImageClassifier

__version__ = "0.1.0"
__all__ = ["ImageClassifier", "ImageFolderDataModule", "__version__"]
