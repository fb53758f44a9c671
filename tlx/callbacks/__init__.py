"""Lightning callbacks of tlx."""

from tlx.callbacks.prediction_writer import PredictionWriter

__all__ = ["PredictionWriter"]
