"""Fine-tuning strategies: Lightning callbacks that decide which weights move, and how fast."""

from tlx.finetuning.freeze import FreezeBackbone

__all__ = ["FreezeBackbone"]
