"""Training and evaluation recipes from torchvision.transforms.v2, sized by a :class:`~tlx.preprocessing.Preprocessing`."""

from __future__ import annotations

from typing import Literal

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

from tlx.preprocessing import Preprocessing

AutoAugment = Literal["trivialaugment", "randaugment"] | None


def interpolation(cfg: Preprocessing) -> InterpolationMode:
    """The resampling filter of ``cfg`` as torchvision names it."""
    return InterpolationMode(cfg.interpolation)


def to_normalized_float(cfg: Preprocessing) -> list[v2.Transform]:
    """uint8 image tensor -> float in [0, 1] -> ``(x - mean) / std``: the last steps of every recipe."""
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(cfg.mean), std=list(cfg.std))]


def train_transform(
    cfg: Preprocessing,
    scale: tuple[float, float] = (0.08, 1.0),
    hflip: float = 0.5,
    auto_augment: AutoAugment = None,
) -> v2.Compose:
    """RandomResizedCrop + flip (+ TrivialAugment / RandAugment), on uint8 tensors for speed."""
    steps: list[v2.Transform] = [
        v2.ToImage(),
        v2.RandomResizedCrop(cfg.input_size, scale=scale, interpolation=interpolation(cfg), antialias=True),
    ]
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    if auto_augment == "trivialaugment":
        steps.append(v2.TrivialAugmentWide(interpolation=interpolation(cfg)))
    elif auto_augment == "randaugment":
        steps.append(v2.RandAugment(interpolation=interpolation(cfg)))
    return v2.Compose(steps + to_normalized_float(cfg))


def eval_transform(cfg: Preprocessing) -> v2.Compose:
    """Resize the short side to ``resize_size``, centre-crop ``input_size``."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(cfg.resize_size, interpolation=interpolation(cfg), antialias=True),
            v2.CenterCrop(cfg.input_size),
            *to_normalized_float(cfg),
        ]
    )


def batch_mixing(num_classes: int, mixup_alpha: float, cutmix_alpha: float) -> v2.Transform | None:
    """MixUp and/or CutMix on whole batches (one chosen per batch when both are on)."""
    mixes = []
    if mixup_alpha > 0:
        mixes.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
    if cutmix_alpha > 0:
        mixes.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
    if not mixes:
        return None
    return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)
