"""Temperature scaling (Guo et al., 2017, "On Calibration of Modern Neural Networks"): one scalar
``T`` fitted on validation logits so that ``softmax(logits / T)`` says how often the model is right.

``T`` lives in the model as the buffer ``temperature`` (1 until fitted), so it travels in the
checkpoint's ``state_dict`` with the weights it was fitted for; checkpoints written before it load
with ``T = 1``. Every place that turns logits into probabilities (``predict``, ``python -m tlx
predict``, the exported models, the ``ece`` metric) goes through :func:`calibrated_probabilities`.
Dividing by ``T > 0`` never changes the arg-max: accuracy is untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.functional.classification import multiclass_calibration_error

from tlx.errors import TLXError

ECE_BINS = 15  # Guo et al.'s bins; the ``ece`` metric (tlx.metrics) and the fit's report use the same


def add_temperature(module: nn.Module) -> None:
    """Give ``module`` a ``temperature`` buffer (1.0), kept in its state_dict; a state_dict without
    it (a checkpoint from before calibration existed) loads as ``T = 1``."""
    module.register_buffer("temperature", torch.ones(()))
    module.register_load_state_dict_pre_hook(_temperature_if_missing)


def _temperature_if_missing(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    # module level, not a closure: ddp_spawn pickles the model with its hooks
    state_dict.setdefault(prefix + "temperature", torch.ones(()))


def calibrated_probabilities(model: nn.Module, logits: Tensor) -> Tensor:
    """``softmax(logits / T)`` in float32 with the model's temperature (1 for a model without one)."""
    temperature = getattr(model, "temperature", None)
    logits = logits.float()
    return (logits / temperature if temperature is not None else logits).softmax(dim=-1)


def fit_temperature(logits: Tensor, labels: Tensor, max_iter: int = 100) -> float:
    """The ``T`` minimising the NLL of ``softmax(logits / T)`` on ``labels``. As the reference code
    (gpleiss/temperature_scaling) with LBFGS, but on ``log T`` (so ``T > 0``) with a strong-Wolfe line
    search, in float64: the NLL is convex in ``1/T``, and this reaches its minimum in a few steps
    where a fixed small step (the reference's lr=0.01, 50 iterations) may stop short of it."""
    if logits.ndim != 2 or len(logits) != len(labels) or len(labels) == 0:
        raise TLXError(f"Temperature scaling needs (N, C) logits and N labels, got {tuple(logits.shape)} and {tuple(labels.shape)}.")
    logits, labels = logits.detach().double().cpu(), labels.detach().long().cpu()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    with torch.enable_grad():  # callers may run under inference_mode/no_grad
        optimizer.step(closure)
    return float(log_t.detach().exp())


@dataclass(frozen=True)
class CalibrationReport:
    """What temperature scaling did on a set of logits: T, and NLL and ECE before and after."""

    temperature: float
    n: int
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float

    def line(self, where: str) -> str:
        return (f"Temperature scaling on {self.n} {where}: T = {self.temperature:.3f}, "
                f"NLL {self.nll_before:.4f} -> {self.nll_after:.4f}, "
                f"ECE ({ECE_BINS} bins) {self.ece_before:.4f} -> {self.ece_after:.4f}")

    def to_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def expected_calibration_error(logits: Tensor, labels: Tensor, temperature: float = 1.0) -> float:
    probs = (logits.float() / temperature).softmax(dim=-1)
    return float(multiclass_calibration_error(probs, labels, num_classes=logits.shape[-1], n_bins=ECE_BINS, norm="l1"))


def calibrate(logits: Tensor, labels: Tensor, max_iter: int = 100) -> CalibrationReport:
    """Fit ``T`` on ``logits``/``labels`` and report NLL and ECE before and after."""
    t = fit_temperature(logits, labels, max_iter)
    logits, labels = logits.float().cpu(), labels.long().cpu()
    return CalibrationReport(
        temperature=t, n=len(labels),
        nll_before=float(F.cross_entropy(logits, labels)), nll_after=float(F.cross_entropy(logits / t, labels)),
        ece_before=expected_calibration_error(logits, labels), ece_after=expected_calibration_error(logits, labels, t),
    )
