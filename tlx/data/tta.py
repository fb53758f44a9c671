"""Test-time augmentation: several views of each image, whose predictions are averaged."""

from __future__ import annotations

from typing import Literal

import torch
from torchvision.transforms import v2

from tlx.data.transforms import interpolation, to_normalized_float
from tlx.preprocessing import Preprocessing

TTA = Literal["flip", "crops", "flip_crops"] | None

# Views per image for each mode.
TTA_VIEWS = {"flip": 2, "crops": 5, "flip_crops": 10}


class _Stack(v2.Transform):
    """A tuple of views (FiveCrop / TenCrop / original + flip) -> one ``(V, C, H, W)`` tensor."""

    def forward(self, *inputs):  # v2.Transform's per-sample plumbing would split the tuple
        views = inputs[0] if len(inputs) == 1 else inputs
        return torch.stack([torch.as_tensor(v) for v in views])


class _WithFlip(v2.Transform):
    def forward(self, *inputs):
        x = inputs[0]
        return x, v2.functional.horizontal_flip(x)


def tta_transform(cfg: Preprocessing, mode: TTA) -> v2.Compose:
    """Image -> ``(V, 3, input_size, input_size)`` normalised views.

    * ``flip``: the evaluation centre crop and its mirror image (2 views);
    * ``crops``: the four corners and the centre of the central ``resize_size`` square (5; the
      centre view is the evaluation crop);
    * ``flip_crops``: those five and their mirror images (10).
    """
    if mode not in TTA_VIEWS:
        raise ValueError(f"unknown test-time augmentation {mode!r}; choose from {sorted(TTA_VIEWS)}")
    steps: list[v2.Transform] = [
        v2.ToImage(),
        v2.Resize(cfg.resize_size, interpolation=interpolation(cfg), antialias=True),
    ]
    if mode == "flip":
        steps += [v2.CenterCrop(cfg.input_size), _WithFlip()]
    else:
        steps += [v2.CenterCrop(cfg.resize_size),
                  v2.FiveCrop(cfg.input_size) if mode == "crops" else v2.TenCrop(cfg.input_size)]
    return v2.Compose(steps + [_Stack(), *to_normalized_float(cfg)])
