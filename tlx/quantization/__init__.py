"""Smaller, faster deployment files: quantization of tlx's ONNX export (``python -m tlx export
--quantize int8``) and quantization-aware fine-tuning (:class:`QuantizationAwareTraining`)."""

from tlx.quantization.calibration import ImageCalibrationReader, balanced_calibration_set
from tlx.quantization.onnx_quantize import MODES, QuantizationError, quantize_model
from tlx.quantization.qat import QuantizationAwareTraining

__all__ = ["MODES", "ImageCalibrationReader", "QuantizationAwareTraining", "QuantizationError", "balanced_calibration_set", "quantize_model"]
