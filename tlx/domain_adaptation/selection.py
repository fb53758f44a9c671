"""Unsupervised model selection: scores of a model's target predictions that need no target label.

Choosing a checkpoint or a hyper-parameter by target accuracy uses the labels that unsupervised
domain adaptation assumes are missing. These criteria read only the predicted probabilities:

* ``prediction_entropy``: mean entropy of the predictions (lower: more confident). Cheap, but it
  rewards a model that collapses onto confident mistakes, so it is logged, not used to choose.
* ``soft_neighborhood_density`` (SND; Saito et al., ICCV 2021, "Tune it the right way"): the mean
  entropy of each sample's softmax-normalised similarity to the others, in the space of the
  L2-normalised probabilities (temperature 0.05, as the paper). Higher: predictions form dense
  neighbourhoods (clusters), which tracked target accuracy across methods and hyper-parameters in
  the paper better than entropy did.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tlx.domain_adaptation.objectives.base import entropy


def prediction_entropy(probs: Tensor) -> Tensor:
    """Mean Shannon entropy of the rows of ``probs`` (N, C)."""
    return entropy(probs.float()).mean()


def soft_neighborhood_density(probs: Tensor, temperature: float = 0.05, max_samples: int = 4096) -> Tensor:
    """SND of the predictions ``probs`` (N, C); at most ``max_samples`` rows (an even stride through
    them: the N x N similarity grows quadratically)."""
    if len(probs) > max_samples:
        probs = probs[torch.linspace(0, len(probs) - 1, max_samples).long()]
    f = F.normalize(probs.float(), dim=1)
    sim = f @ f.T / temperature
    sim.fill_diagonal_(float("-inf"))  # a sample is not its own neighbour
    return entropy(sim.softmax(dim=1)).mean()
