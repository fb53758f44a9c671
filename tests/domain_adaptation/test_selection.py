"""Label-free model selection: SND and prediction entropy by hand, and logged at each validation."""

import math

import pytest
import torch

from tlx.domain_adaptation.selection import prediction_entropy, soft_neighborhood_density


def test_snd_by_hand():
    probs = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # Normalised rows: cosine 1 between the first two, 0 to the third; temperature 1.
    e = math.e
    first = [e / (e + 1), 1 / (e + 1)]  # rows 0 and 1: their twin (similarity 1) and the third (0)
    h = -sum(p * math.log(p + 1e-5) for p in first)
    third = -2 * 0.5 * math.log(0.5 + 1e-5)  # the third row: both others at similarity 0
    expected = (2 * h + third) / 3
    assert soft_neighborhood_density(probs, temperature=1.0).item() == pytest.approx(expected, rel=1e-5)


def test_snd_is_higher_when_neighbourhoods_are_denser():
    """Confident predictions in 4 groups of 8 (7 close neighbours each) against 16 pairs (one each)."""
    g = torch.Generator().manual_seed(0)
    groups = torch.eye(16)[torch.arange(32) // 8] * 8 + 0.1 * torch.randn(32, 16, generator=g)
    pairs = torch.eye(16)[torch.arange(32) // 2] * 8 + 0.1 * torch.randn(32, 16, generator=g)
    dense, sparse = soft_neighborhood_density(groups.softmax(1)), soft_neighborhood_density(pairs.softmax(1))
    assert dense.item() == pytest.approx(math.log(7), abs=0.05) and sparse.item() < 0.1
    # Subsampled above max_samples (an even stride): every group kept, 3 neighbours each.
    assert soft_neighborhood_density(groups.softmax(1), max_samples=16).item() == pytest.approx(math.log(3), abs=0.05)


def test_prediction_entropy():
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    assert prediction_entropy(probs).item() == pytest.approx(math.log(2) / 2, rel=1e-4)
