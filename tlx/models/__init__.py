from tlx.models.classifier import ImageClassifier
from tlx.models.loading import load


def __getattr__(name: str):
    # tlx.models.DistillationClassifier, imported lazily (it imports tlx.models itself).
    if name == "DistillationClassifier":
        from tlx.distillation.model import DistillationClassifier

        return DistillationClassifier
    raise AttributeError(name)


__all__ = ["DistillationClassifier", "ImageClassifier", "load"]
