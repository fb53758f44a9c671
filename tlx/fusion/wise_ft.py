"""WiSE-FT (Wortsman et al., 2022, "Robust fine-tuning of zero-shot models"): the weights
``(1 - alpha) * theta_0 + alpha * theta_ft`` between a model that keeps the pretrained features
(here a linear probe: pretrained backbone + a head trained on its features) and the model
fine-tuned from it. Between the two ends the model often gains out of distribution at equal
in-distribution accuracy; alpha is chosen on the validation split."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

from tlx.fusion.ingredients import FusionError
from tlx.fusion.uniform_soup import average_weights

DEFAULT_ALPHAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def check_alphas(alphas: Sequence[float]) -> list[float]:
    alphas = [float(a) for a in alphas]
    bad = [a for a in alphas if not 0.0 <= a <= 1.0]
    if not alphas or bad:
        raise FusionError(f"--alphas must be numbers in [0, 1] (0: the linear probe, 1: the fine-tuned model); "
                          f"got {bad or 'none'}.")
    return alphas


def interpolate_weights(theta_0: dict[str, Tensor], theta_ft: dict[str, Tensor], alpha: float) -> dict[str, Tensor]:
    """``(1 - alpha) * theta_0 + alpha * theta_ft``; alpha 0 and 1 give their input bit for bit."""
    check_alphas([alpha])
    return average_weights([theta_0, theta_ft], [1.0 - alpha, alpha])


def wise_ft(theta_0: dict[str, Tensor], theta_ft: dict[str, Tensor], alphas: Sequence[float],
            evaluate: Callable[[dict[str, Tensor], float], float]) -> tuple[dict[str, Tensor], float, list[dict[str, Any]]]:
    """Evaluates every alpha (``evaluate(weights, alpha)`` -> held-out accuracy) and returns the
    best weights, their alpha and the curve. Ties go to the larger alpha (closer to the
    fine-tuned model, whose in-distribution accuracy is usually the better one)."""
    curve = []
    for alpha in sorted(check_alphas(alphas)):
        curve.append({"alpha": alpha, "val_acc": evaluate(interpolate_weights(theta_0, theta_ft, alpha), alpha)})
    best = max(reversed(curve), key=lambda point: point["val_acc"])
    return interpolate_weights(theta_0, theta_ft, best["alpha"]), best["alpha"], curve
