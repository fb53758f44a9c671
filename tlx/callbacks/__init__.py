"""Lightning callbacks of tlx."""

from tlx.callbacks.lr_scaling import ScaleLearningRate
from tlx.callbacks.prediction_writer import PredictionWriter

__all__ = ["PredictionWriter", "ScaleLearningRate"]
