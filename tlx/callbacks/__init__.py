"""Lightning callbacks of tlx."""

from tlx.callbacks.augmentation_preview import AugmentationPreview
from tlx.callbacks.ema import EMA
from tlx.callbacks.hparams import HParamsMetrics
from tlx.callbacks.lr_scaling import ScaleLearningRate
from tlx.callbacks.prediction_gallery import PredictionGallery
from tlx.callbacks.prediction_writer import PredictionWriter
from tlx.callbacks.run_report import RunReport
from tlx.callbacks.swa import SWA
from tlx.callbacks.temperature import TemperatureScaling
from tlx.callbacks.top_losses import TopLosses
from tlx.callbacks.trainable_summary import TrainableSummary

__all__ = ["EMA", "AugmentationPreview", "HParamsMetrics", "PredictionGallery", "PredictionWriter", "RunReport", "SWA",
           "ScaleLearningRate", "TemperatureScaling", "TopLosses", "TrainableSummary"]
