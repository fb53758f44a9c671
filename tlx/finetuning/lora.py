"""LoRA (Hu et al., 2021) on the backbone's Linear and Conv2d layers, mergeable for export.

A small module of our own rather than ``peft``: peft pulls in ``transformers`` and
``accelerate`` and wraps the whole model in its own class, for two layer types that take a few
lines each. A wrapped layer computes ``base(x) + alpha/rank * B(A(dropout(x)))`` with ``B``
zero-initialised, so training starts from the pretrained function. ``A`` runs through the base
layer's own forward with a substituted weight, so any Conv2d subclass (timm's TF-"same"
padding convolutions) keeps its padding rule.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import os
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor, nn

from tlx.finetuning.base import FinetuneStrategy, head_params
from tlx.finetuning.groups import FinetuningError
from tlx.finetuning.trainable import in_bottom
from tlx.optim import ParamGroup

log = logging.getLogger("tlx")


class LoRALayer(nn.Module):
    """A frozen ``base`` Linear or Conv2d (groups=1) plus a trainable low-rank update."""

    def __init__(self, base: nn.Module, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__()
        if rank < 1:
            raise FinetuningError(f"LoRA rank must be at least 1, got {rank}.")
        self.base = base
        self.rank = rank
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if isinstance(base, nn.Linear):
            self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))
            self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        elif isinstance(base, nn.Conv2d) and base.groups == 1:
            self.lora_A = nn.Parameter(torch.empty(rank, base.in_channels, *base.kernel_size))
            self.lora_B = nn.Parameter(torch.zeros(base.out_channels, rank))
        else:
            raise FinetuningError(f"LoRA wraps Linear and Conv2d (groups=1) layers, not {base!r}.")
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear / peft
        self.lora_A.data = self.lora_A.data.to(base.weight)
        self.lora_B.data = self.lora_B.data.to(base.weight)

    def delta_weight(self) -> Tensor:
        """The update in the base weight's shape: ``scaling * B @ A``."""
        a = self.lora_A.flatten(1)
        return (self.scaling * self.lora_B @ a).view_as(self.base.weight)

    def forward(self, x: Tensor) -> Tensor:
        out = self.base(x)
        h = self.dropout(x)
        if isinstance(self.base, nn.Linear):
            return out + self.scaling * F.linear(F.linear(h, self.lora_A), self.lora_B)
        extra = {"bias": torch.zeros(self.rank, dtype=h.dtype, device=h.device)} if self.base.bias is not None else {}
        h = torch.func.functional_call(self.base, {"weight": self.lora_A, **extra}, (h,))
        return out + self.scaling * F.conv2d(h, self.lora_B[:, :, None, None])

    def merged(self) -> nn.Module:
        """The base layer with the update added to its weight (this wrapper's weights untouched)."""
        with torch.no_grad():
            self.base.weight.add_(self.delta_weight())
        return self.base

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scaling={self.scaling:g}"


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def inject_lora(model: nn.Module, target_modules: list[str], rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
                exclude: tuple[str, ...] | list[str] = ()) -> list[str]:
    """Wrap every Linear / Conv2d (groups=1) of ``model`` whose name matches a glob pattern in
    ``target_modules``, outside the modules named in ``exclude`` (a frozen bottom); returns the
    wrapped names. Already wrapped layers are left as they are."""
    wrapped = [n for n, m in model.named_modules() if isinstance(m, LoRALayer)]
    if wrapped:
        return wrapped
    candidates = [
        (n, m) for n, m in model.named_modules()
        if (isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)) and not in_bottom(n, exclude)
    ]
    chosen = [(n, m) for n, m in candidates if any(fnmatch.fnmatchcase(n, pat) for pat in target_modules)]
    if not chosen:
        examples = ", ".join(n for n, _ in candidates[:8])
        where = f"the backbone above its frozen bottom ({', '.join(exclude)})" if exclude else "the backbone"
        raise FinetuningError(
            f"LoRA target_modules {target_modules} match no Linear or Conv2d (groups=1) layer of {where}; "
            f"its layers are named like: {examples} (glob patterns, e.g. '*conv_pw*', 'layer4.*')."
        )
    for name, module in chosen:
        _set_module(model, name, LoRALayer(module, rank, alpha, dropout))
    return [n for n, _ in chosen]


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its base layer and drop the wrappers (in place)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALayer):
            _set_module(model, name, module.merged())
    return model


def merged_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """``model``'s state dict as if LoRA were merged: the plain architecture's keys (the live
    model is not changed)."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for name, module in model.named_modules():
        if isinstance(module, LoRALayer):
            prefix = f"{name}."
            state[f"{prefix}base.weight"] = state[f"{prefix}base.weight"] + module.delta_weight().detach()
            for key in [k for k in state if k.startswith(prefix)]:
                value = state.pop(key)
                if key.startswith(f"{prefix}base."):
                    state[prefix + key[len(prefix) + 5 :]] = value
    return state


class LoRA(FinetuneStrategy):
    """Low-rank adapters on the backbone; the backbone's own weights stay frozen.

    Args:
        target_modules: glob patterns of backbone layer names (relative to the backbone model,
            e.g. ``blocks.*.conv_pw`` or ``layer4.*``); ``*`` takes every Linear and
            non-depthwise Conv2d.
        rank: rank of the update.
        alpha: the update is scaled by ``alpha / rank``.
        dropout: dropout on the adapters' input.
        backbone_lr_scale: the adapters' LR relative to the head's (the name every strategy uses).
        save_merged: at the end of fitting, write ``lora_merged.pt`` to the log directory: the
            classifier's state dict with the updates merged, loadable into a plain
            ``ImageClassifier`` with the same backbone and classes.
        freeze_bn_stats: keep every BatchNorm's running statistics.
    """

    def __init__(
        self,
        target_modules: list[str] | None = None,
        rank: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        backbone_lr_scale: float = 1.0,
        save_merged: bool = True,
        freeze_bn_stats: bool = False,
    ):
        super().__init__(freeze_bn_stats=freeze_bn_stats)
        self.target_modules = list(target_modules or ["*"])
        self.rank, self.alpha, self.dropout = rank, alpha, dropout
        self.backbone_lr_scale = backbone_lr_scale
        self.save_merged = save_merged

    def freeze_before_training(self, pl_module: LightningModule) -> None:
        # Runs in setup for every stage: a LoRA run's checkpoint holds the adapters, so
        # validate/test/predict need them in place before it loads.
        # Above a frozen bottom only (its layers never run in training; tlx.finetuning.trainable).
        names = inject_lora(pl_module.backbone.model, self.target_modules, self.rank, self.alpha, self.dropout,
                            exclude=self.bottom)
        log.info("LoRA (rank %d, alpha %g) on %d backbone layers.", self.rank, self.alpha, len(names))
        for n, p in pl_module.backbone.named_parameters():
            p.requires_grad_(".lora_" in f".{n}")

    def groups(self, pl_module: LightningModule) -> list[ParamGroup]:
        lora = [p for n, p in pl_module.backbone.named_parameters() if ".lora_" in f".{n}"]
        return [ParamGroup("head", head_params(pl_module)), ParamGroup("backbone.lora", lora, self.backbone_lr_scale)]

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_fit_end(trainer, pl_module)
        if self.save_merged and trainer.is_global_zero and trainer.log_dir:
            path = os.path.join(trainer.log_dir, "lora_merged.pt")
            os.makedirs(trainer.log_dir, exist_ok=True)
            torch.save(merged_state_dict(pl_module), path)
            log.info("LoRA merged into the backbone weights: %s", path)
