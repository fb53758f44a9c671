"""The interface of a distillation loss: which outputs it compares, its weight, how it is stored."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from torch import Tensor, nn

from tlx.errors import TLXError
from tlx.plain import instance_of

Needs = Literal["logits", "embedding", "feature_map"]


@dataclass
class Outputs:
    """What a network gives the losses for one batch: logits, the pooled features the head sees
    (``embedding``), and a feature map of the chosen stage (only when a loss needs one)."""

    logits: Tensor
    embedding: Tensor
    feature_map: Tensor | None = None

    def detach(self) -> Outputs:
        return Outputs(*(t.detach() if t is not None else None for t in (self.logits, self.embedding, self.feature_map)))

    def to(self, device: Any) -> Outputs:
        return Outputs(*(t.to(device) if t is not None else None for t in (self.logits, self.embedding, self.feature_map)))


class DistillationLoss(nn.Module):
    """``weight * loss(student's output, teacher's output)``, for the output named by ``needs``.

    A subclass sets ``needs``, implements :meth:`loss`, and may build learned layers (FitNets'
    projection) in :meth:`build` once both networks' widths are known.
    """

    needs: ClassVar[Needs] = "logits"
    name: ClassVar[str] = "loss"

    def __init__(self, weight: float = 1.0, **init_args: Any):
        super().__init__()
        if weight < 0:
            raise TLXError(f"{type(self).__name__}: weight must be >= 0, got {weight}.")
        self.weight = float(weight)
        self._init_args = {"weight": weight, **init_args}

    def build(self, student_width: int, teacher_width: int) -> None:
        """Called once with the widths of the compared outputs (channels for feature maps)."""

    def loss(self, student: Tensor, teacher: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, student: Outputs, teacher: Outputs) -> Tensor:
        return self.weight * self.loss(getattr(student, self.needs), getattr(teacher, self.needs))

    def describe(self) -> dict[str, Any]:
        """Plain data for the hyperparameters (checkpoints load with ``weights_only=True``)."""
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(self._init_args)}


def loss_from(spec: DistillationLoss | dict | str) -> DistillationLoss:
    """A loss, or its description (``class_path`` + ``init_args``) as stored in hyperparameters."""
    return instance_of(spec, DistillationLoss, "distillation loss")


def match_spatial(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Feature maps of different input sizes compared on the smaller grid (adaptive average pooling)."""
    h, w = min(student.shape[-2], teacher.shape[-2]), min(student.shape[-1], teacher.shape[-1])
    pool = nn.functional.adaptive_avg_pool2d
    return (student if student.shape[-2:] == (h, w) else pool(student, (h, w)),
            teacher if teacher.shape[-2:] == (h, w) else pool(teacher, (h, w)))
