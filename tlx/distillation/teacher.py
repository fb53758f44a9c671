"""The frozen teacher: any tlx checkpoint, fed its own preprocessing of the student's batch,
with its outputs cached per view."""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tlx.distillation.base import Outputs
from tlx.errors import TLXError
from tlx.models.from_checkpoint import model_from_checkpoint
from tlx.preprocessing import Preprocessing


def network_outputs(backbone: nn.Module, head: nn.Module, x: Tensor, feature_stage: int | None) -> Outputs:
    """Logits, pooled features and (when ``feature_stage`` is set) that stage's feature map, in one
    pass. Feature maps come from timm's ``forward_intermediates`` (timm and packaged backbones)."""
    if feature_stage is None:
        embedding = backbone(x)
        return Outputs(head(embedding), embedding)
    net = getattr(backbone, "model", backbone)
    if not hasattr(net, "forward_intermediates"):
        raise TLXError(f"Feature-map losses (hint, attention, sp) need a timm or packaged backbone; "
                       f"{getattr(backbone, 'name', type(net).__name__)} has no forward_intermediates.")
    final, (feature_map,) = net.forward_intermediates(x, indices=[feature_stage])
    embedding = net.forward_head(final)  # the pooled features, as backbone(x) gives them
    return Outputs(head(embedding), embedding, feature_map)


def convert_preprocessing(x: Tensor, source: Preprocessing, target: Preprocessing) -> Tensor:
    """A batch normalised for ``source`` re-expressed for ``target``: un-normalise, resample the
    same view to the target's input size, normalise with the target's mean and std."""
    if source == target:
        return x
    mean_s, std_s = (torch.tensor(v, device=x.device, dtype=x.dtype).view(1, 3, 1, 1) for v in (source.mean, source.std))
    mean_t, std_t = (torch.tensor(v, device=x.device, dtype=x.dtype).view(1, 3, 1, 1) for v in (target.mean, target.std))
    x = x * std_s + mean_s
    if x.shape[-1] != target.input_size or x.shape[-2] != target.input_size:
        mode = "bicubic" if target.interpolation == "bicubic" else "bilinear"
        x = F.interpolate(x, size=(target.input_size, target.input_size), mode=mode, align_corners=False,
                          antialias=True).clamp(0, 1)
    return (x - mean_t) / std_t


class Teacher(nn.Module):
    """A trained classifier from ``ckpt_path``, frozen and always in eval mode.

    Args:
        ckpt_path: any tlx classifier checkpoint (another backbone and input size are fine).
        feature_stage: the stage whose feature map the losses see (timm's index, -1: the last).
        cache_size: teacher outputs kept per distinct view (0: none). A view is recognised by its
            pixels, so a view seen again (an image without random augmentation, or a cached
            feature view) costs no second teacher pass; random crops rarely repeat.
    """

    def __init__(self, ckpt_path: str, feature_stage: int | None = None, cache_size: int = 0):
        super().__init__()
        model = model_from_checkpoint(ckpt_path)
        self.class_names = list(model.class_names)
        self.preprocessing: Preprocessing = model.preprocessing
        self.backbone, self.head = model.backbone, model.head
        self.feature_stage = feature_stage
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[bytes, Outputs] = OrderedDict()
        self.hits = self.misses = 0
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)  # frozen: BatchNorm statistics and dropout stay as trained

    @torch.no_grad()
    def forward(self, x: Tensor, source: Preprocessing) -> Outputs:
        if not self.cache_size:
            return self.compute(x, source)
        keys = [hashlib.blake2b(v.detach().cpu().contiguous().numpy().tobytes(), digest_size=16).digest() for v in x]
        missing = [i for i, k in enumerate(keys) if k not in self._cache]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            out = self.compute(x[missing], source).to("cpu")
            for j, i in enumerate(missing):
                fm = out.feature_map[j] if out.feature_map is not None else None
                self._cache[keys[i]] = Outputs(out.logits[j], out.embedding[j], fm)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        rows = [self._cache[k] for k in keys]
        stack = lambda name: torch.stack([getattr(r, name) for r in rows]).to(x.device)  # noqa: E731
        return Outputs(stack("logits"), stack("embedding"),
                       stack("feature_map") if rows[0].feature_map is not None else None)

    @torch.no_grad()
    def compute(self, x: Tensor, source: Preprocessing) -> Outputs:
        """The teacher's outputs for a batch preprocessed for ``source``, never cached."""
        return network_outputs(self.backbone, self.head, convert_preprocessing(x, source, self.preprocessing),
                               self.feature_stage).detach()
