"""Quantization-aware fine-tuning: the last epochs of a run see int8 rounding, so that the weights
settle where the int8 export (``python -m tlx export --quantize int8``) loses least.

What is simulated matches that export: weights int8, symmetric, one scale per output channel;
the inputs of every Conv/Linear 8-bit, one affine range per tensor (a moving average of the batch
min/max: the export's default entropy calibration then picks a range inside it); only the feature
network, as the head and the softmax stay float there. BatchNorm needs no folding simulation: with per-channel
symmetric scales, folding a per-channel factor into the weights commutes with the rounding.
Gradients pass the rounding straight through (torch's fake_quantize ops).
"""

from __future__ import annotations

import logging

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn
from torch.nn.utils import parametrize

from tlx.errors import TLXError

log = logging.getLogger("tlx")

PARAMETRIZED = ".parametrizations.weight.original"


class Int8PerChannelWeight(nn.Module):
    """Weight -> its int8 symmetric per-output-channel rounding (a parametrization); the weight
    itself while ``enabled`` is False."""

    def __init__(self):
        super().__init__()
        self.enabled = True

    def forward(self, weight: Tensor) -> Tensor:
        if not self.enabled:
            return weight
        scale = (weight.detach().abs().amax(dim=tuple(range(1, weight.ndim))) / 127).clamp_min(1e-12)
        zero = torch.zeros(len(scale), dtype=torch.int32, device=weight.device)
        return torch.fake_quantize_per_channel_affine(weight, scale.float(), zero, 0, -127, 127)


class Uint8Activation(nn.Module):
    """A forward pre-hook rounding a layer's input to 8 bits over a moving-average [min, max]
    (updated while the layer trains, fixed in evaluation)."""

    def __init__(self, averaging: float = 0.01):
        super().__init__()
        self.averaging = averaging
        self.enabled = True
        self.register_buffer("low", torch.tensor(float("nan")))
        self.register_buffer("high", torch.tensor(float("nan")))

    def forward(self, module: nn.Module, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        x = inputs[0]
        if module.training:
            with torch.no_grad():
                low, high = x.min().clamp(max=0), x.max().clamp(min=0)  # zero stays exact
                first = torch.isnan(self.low)
                self.low.copy_(torch.where(first, low, self.low + self.averaging * (low - self.low)))
                self.high.copy_(torch.where(first, high, self.high + self.averaging * (high - self.high)))
        if not self.enabled or torch.isnan(self.low):  # switched off, or never trained on: nothing to round to
            return inputs
        scale = ((self.high - self.low) / 255).clamp_min(1e-8).float()
        zero = torch.round(-self.low / scale).clamp(0, 255).int()
        return (torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255), *inputs[1:])


class QuantizationAwareTraining(Callback):
    """Fake-quantize the feature network during the last ``last_epochs`` epochs of ``fit``.

    Use it when ``export --quantize int8`` loses more than about a point of accuracy: fine-tune
    (or continue) with it for one to a few epochs, at a small learning rate, then export with
    ``--quantize int8`` as usual (calibration still sets the final activation ranges). The
    checkpoints hold plain float weights (the ones the rounding was learnt around), so they load,
    resume and export like any other. Combine with any fine-tuning strategy.

    Validation measures the float model by default, as in the epochs before: the best checkpoint
    and LinearProbeFinetune's fall-back to the probe compare epochs and the probe, so all must be
    measured alike (simulated-int8 accuracy against the probe's float accuracy threw a fine-tuned
    model away that was better in both, on Office-31 amazon MobileNetV2).

    Args:
        last_epochs: how many final epochs train under simulated int8 (``trainer.max_epochs`` must be set).
        averaging: moving-average factor of the activation ranges.
        validate_quantized: validate the simulated int8 model in those epochs instead (to watch it;
            the best checkpoint is then picked across float and simulated-int8 figures).
    """

    def __init__(self, last_epochs: int = 1, averaging: float = 0.01, validate_quantized: bool = False):
        super().__init__()
        if last_epochs < 1:
            raise TLXError(f"QuantizationAwareTraining last_epochs={last_epochs}: give 1 or more.")
        self.last_epochs, self.averaging, self.validate_quantized = last_epochs, averaging, validate_quantized
        self._layers: list[nn.Module] = []
        self._hooks: list = []
        self.activations = nn.ModuleDict()

    def _start_epoch(self, trainer: Trainer) -> int:
        if trainer.max_epochs is None or trainer.max_epochs < 0:
            raise TLXError("QuantizationAwareTraining needs trainer.max_epochs (it runs in the last epochs).")
        return max(0, trainer.max_epochs - self.last_epochs)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch >= self._start_epoch(trainer) and not self._layers:
            self._attach(pl_module)

    def _attach(self, pl_module: LightningModule) -> None:
        features = pl_module.feature_network()
        for name, module in features.named_modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)) and not parametrize.is_parametrized(module):
                parametrize.register_parametrization(module, "weight", Int8PerChannelWeight())
                key = name.replace(".", "/") or "root"
                if key not in self.activations:
                    self.activations[key] = Uint8Activation(self.averaging)
                self.activations[key].to(module.weight.device)
                self._hooks.append(module.register_forward_pre_hook(self.activations[key]))
                self._layers.append(module)
        log.info("QuantizationAwareTraining: %d layers train under simulated int8 from epoch %d.",
                 len(self._layers), pl_module.current_epoch)

    def _simulate(self, enabled: bool) -> None:
        for module in [*self.activations.values(), *(m.parametrizations.weight[0] for m in self._layers)]:
            module.enabled = enabled

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.validate_quantized:
            self._simulate(False)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._simulate(True)

    def _detach(self) -> None:
        for hook in self._hooks:
            hook.remove()
        for module in self._layers:  # keep the float weights the rounding was learnt around
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        self._hooks, self._layers = [], []

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._detach()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._detach()

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        # Checkpoints hold the plain layout (``conv.weight``), so they load into any ImageClassifier.
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.endswith(PARAMETRIZED)]:
            state[key[: -len(PARAMETRIZED)] + ".weight"] = state.pop(key)

    def state_dict(self) -> dict:
        return {"activations": self.activations.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        # resumed inside the fake-quant epochs: the ranges learnt so far carry on
        for key in {k.rsplit(".", 1)[0] for k in state_dict.get("activations", {})}:
            self.activations[key] = Uint8Activation(self.averaging)
        self.activations.load_state_dict(state_dict.get("activations", {}))
