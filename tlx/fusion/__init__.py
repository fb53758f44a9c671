"""Knowledge fusion in weight space and in output space: model soups, WiSE-FT, logit ensembles.

One method per file; :mod:`tlx.fusion.fuse` is the ``python -m tlx fuse`` driver that loads the
checkpoints, evaluates on the validation split and writes ``fused.ckpt`` and ``fusion.json``.
"""

from tlx.fusion.bn_recalibration import RecalibrationPlan, recalibrate_batchnorm, recalibration_plan
from tlx.fusion.ensemble import EnsembleClassifier
from tlx.fusion.greedy_soup import greedy_soup
from tlx.fusion.ingredients import FusionError, Ingredient, load_ingredients
from tlx.fusion.uniform_soup import average_weights, uniform_soup
from tlx.fusion.wise_ft import interpolate_weights, wise_ft

__all__ = ["EnsembleClassifier", "FusionError", "Ingredient", "RecalibrationPlan", "average_weights", "greedy_soup",
           "interpolate_weights", "load_ingredients", "recalibrate_batchnorm", "recalibration_plan", "uniform_soup",
           "wise_ft"]
