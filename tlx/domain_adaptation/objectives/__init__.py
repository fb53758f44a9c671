"""Domain-adaptation objectives, chosen in YAML as ``model.init_args.objective``."""

from tlx.domain_adaptation.objectives.base import DomainBatch, Objective, ObjectiveOutput
from tlx.domain_adaptation.objectives.cdan import CDAN
from tlx.domain_adaptation.objectives.coral import CORAL
from tlx.domain_adaptation.objectives.dan import DAN
from tlx.domain_adaptation.objectives.dann import DANN
from tlx.domain_adaptation.objectives.grl import reverse_gradient, warm_start
from tlx.domain_adaptation.objectives.information_maximization import InformationMaximization
from tlx.domain_adaptation.objectives.instance_weighting import InstanceWeighting
from tlx.domain_adaptation.objectives.mcc import MCC
from tlx.domain_adaptation.objectives.source_only import SourceOnly

__all__ = [
    "CDAN", "CORAL", "DAN", "DANN", "MCC", "DomainBatch", "InformationMaximization", "InstanceWeighting", "Objective",
    "ObjectiveOutput", "SourceOnly", "reverse_gradient", "warm_start",
]
