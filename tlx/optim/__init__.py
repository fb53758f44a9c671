"""Optimizer building blocks shared by models and fine-tuning strategies: named parameter groups,
weight-decay exemptions, per-group learning-rate scales, a warm-up + cosine schedule."""

from tlx.optim.param_groups import ParamGroup, ParamGroupsProvider, optimizer_param_groups, scale_learning_rates
from tlx.optim.warmup_cosine import WarmupCosine

__all__ = ["ParamGroup", "ParamGroupsProvider", "WarmupCosine", "optimizer_param_groups", "scale_learning_rates"]
