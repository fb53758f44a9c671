"""Recipes: whole training plans that adapt to the data. ``default.yaml`` beside this file is what
``python -m tlx fit`` runs when no config names a model (see :mod:`tlx.recipes.lpft`)."""

from pathlib import Path

from tlx.recipes.budget import step_budget
from tlx.recipes.lpft import LinearProbeFinetune

DEFAULT_RECIPE = Path(__file__).with_name("default.yaml")

__all__ = ["DEFAULT_RECIPE", "LinearProbeFinetune", "step_budget"]
