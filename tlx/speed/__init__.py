"""Speed: cached features for frozen backbones, bf16 detection, channels_last, torch.compile."""

from tlx.speed.feature_cache import FeatureCache
from tlx.speed.precision import bf16_supported, resolve_precision
from tlx.speed.speedup import SpeedUp

__all__ = ["FeatureCache", "SpeedUp", "bf16_supported", "resolve_precision"]
