from tlx.models.classifier import ImageClassifier

__all__ = ["ImageClassifier"]
