"""Logit ensemble: several networks in one module, the mean of their logits as output.

N times the inference cost of one member. Built as the ``ImageClassifier`` interface expects
(``features`` then ``head``), so ``test``, ``predict``, ``export`` and TTA work unchanged: the
"backbone" runs every member and concatenates their features, the "head" applies each member's
head to its slice and averages the logits.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn

from tlx.preprocessing import Preprocessing, as_preprocessing
from tlx.errors import TLXError
from tlx.models import ImageClassifier
from tlx.calibration import add_temperature
from tlx.models.from_checkpoint import model_class, model_kwargs


class EnsembleFeatures(nn.Module):
    """Every member's features, concatenated (the members' feature networks as one module)."""

    def __init__(self, members: list[nn.Module], widths: list[int], preprocessing: Preprocessing, name: str):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.widths = list(widths)
        self.num_features = sum(widths)
        self.preprocessing = preprocessing
        self.name = name

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([m(x) for m in self.members], dim=1)


class EnsembleHead(nn.Module):
    """Each member's head on its slice of the features; the mean of the logits."""

    def __init__(self, heads: list[nn.Module], widths: list[int]):
        super().__init__()
        self.heads = nn.ModuleList(heads)
        self.widths = list(widths)

    def forward(self, f: Tensor) -> Tensor:
        parts = torch.split(f, self.widths, dim=1)
        return torch.stack([h(p) for h, p in zip(self.heads, parts)]).mean(dim=0)


def _member(hparams: dict[str, Any]) -> ImageClassifier:
    kwargs = model_kwargs(hparams)  # no pretrained weights: the ensemble's checkpoint holds them
    if not kwargs.get("class_names"):
        raise TLXError("Every ensemble member needs its class_names (build it from tlx checkpoints).")
    return model_class(hparams)(**kwargs)


class EnsembleClassifier(ImageClassifier):
    """A logit ensemble of :class:`~tlx.models.ImageClassifier` members (``python -m tlx fuse
    --method ensemble`` writes one). Evaluation, prediction and export as for one classifier.

    Args:
        members: each member's hyperparameters (as stored in its checkpoint).
        class_names: the classes (all members share them).
        preprocessing: preprocessing override; by default the first member's.
    """

    def __init__(self, members: list[dict[str, Any]], class_names: list[str] | None = None,
                 preprocessing: dict[str, Any] | None = None):
        LightningModule.__init__(self)  # ImageClassifier.__init__ would build a backbone of its own
        # Named explicitly: collecting them from the call frame misses ``members`` here.
        members = [{k: v for k, v in h.items() if k != "_instantiator"} for h in members]
        self.save_hyperparameters({"members": members, "class_names": class_names,
                                   "preprocessing": preprocessing})
        nets = [_member(h) for h in members]
        widths = [n.feature_dim for n in nets]
        self.backbone = EnsembleFeatures([n.feature_network() for n in nets], widths, nets[0].preprocessing,
                                         name="ensemble[" + ", ".join(str(h.get("backbone")) for h in members) + "]")
        self.preprocessing = as_preprocessing(preprocessing, "model.preprocessing") or nets[0].preprocessing
        self.hparams["preprocessing"] = self.preprocessing.to_dict()
        # The rest of what ImageClassifier.__init__ sets (its training options do not apply here).
        self.input_kind, self.param_groups_provider, self.lr_factor = "images", None, 1.0
        add_temperature(self)  # the ensemble's own T (1 until calibrated); the members' do not carry over
        heads = [n.head for n in nets]
        self.head_factory = lambda in_features, num_classes: EnsembleHead(heads, widths)
        self.optimizer_factory, self.scheduler_factory = torch.optim.AdamW, None
        self.class_names = list(class_names or nets[0].class_names)
        self.hparams["class_names"] = self.class_names
        self._build_head()

    @property
    def feature_dim(self) -> int:
        return self.backbone.num_features

    @property
    def num_members(self) -> int:
        return len(self.backbone.members)

    @classmethod
    def from_members(cls, hparams: list[dict[str, Any]], states: list[dict[str, Tensor]]) -> EnsembleClassifier:
        """The ensemble of trained members: their hyperparameters and weights (checkpoint state dicts)."""
        ensemble = cls(hparams)
        for i, (h, state) in enumerate(zip(hparams, states)):
            net = _member(h)
            net.load_state_dict(state)
            ensemble.backbone.members[i].load_state_dict(net.feature_network().state_dict())
            ensemble.head.heads[i].load_state_dict(net.head.state_dict())
        return ensemble
