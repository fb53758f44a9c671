"""Domain adaptation: a labelled source, an unlabelled target, and transfer objectives.

``DomainAdaptationDataModule`` pairs the two domains; ``DomainAdaptationClassifier`` trains an
``ImageClassifier`` with one of the objectives in :mod:`tlx.domain_adaptation.objectives`.
"""

from tlx.domain_adaptation.data import DomainAdaptationDataModule
from tlx.domain_adaptation.model import DomainAdaptationClassifier
from tlx.domain_adaptation.objectives import (
    CDAN, CORAL, DAN, DANN, MCC, InformationMaximization, InstanceWeighting, Objective, SourceOnly,
)

__all__ = [
    "CDAN", "CORAL", "DAN", "DANN", "MCC", "DomainAdaptationClassifier", "DomainAdaptationDataModule",
    "InformationMaximization", "InstanceWeighting", "Objective", "SourceOnly",
]
