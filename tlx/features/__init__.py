"""Features: a backbone run once over a dataset, reusable by every method that trains on its outputs."""

from tlx.features.digest import content_key, weights_digest
from tlx.features.extract import PRECISIONS, extract_features, extraction_precision, features_cache_key
from tlx.features.loaders import FeatureBatches, FeatureSamples, feature_loader

__all__ = [
    "PRECISIONS",
    "FeatureBatches",
    "FeatureSamples",
    "content_key",
    "extract_features",
    "extraction_precision",
    "feature_loader",
    "features_cache_key",
    "weights_digest",
]
