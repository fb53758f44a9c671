from tlx.models.classifier import ImageClassifier
from tlx.models.loading import load

__all__ = ["ImageClassifier", "load"]
