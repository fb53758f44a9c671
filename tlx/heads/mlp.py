from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

_NORMS = {"batch": nn.BatchNorm1d, "layer": nn.LayerNorm}
_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


class MLPHead(nn.Module):
    """Hidden layers of Linear, optional norm, activation and dropout, then the classifier."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden_sizes: list[int] = [512],  # noqa: B006 (jsonargparse shows list defaults)
        norm: Literal["batch", "layer"] | None = "batch",
        activation: Literal["relu", "gelu", "silu"] = "relu",
        dropout: float = 0.0,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for hidden in hidden_sizes:
            layers.append(nn.Linear(width, hidden))
            if norm:
                layers.append(_NORMS[norm](hidden))
            layers += [_ACTIVATIONS[activation](), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: Tensor) -> Tensor:
        return self.layers(features)
