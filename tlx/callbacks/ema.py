"""An exponential moving average of the weights: Lightning's ``EMAWeightAveraging``, with its copy
of the model taken once the head exists and an update exact for frozen tensors
(:mod:`tlx.callbacks.weight_averaging`)."""

from __future__ import annotations

from lightning.pytorch.callbacks import EMAWeightAveraging, WeightAveraging

from tlx.callbacks.weight_averaging import LateWeightAveraging, exact_average


class EMA(LateWeightAveraging, EMAWeightAveraging):
    """``EMAWeightAveraging`` (same arguments: ``decay``, ``update_every_n_steps``,
    ``update_starting_at_step``/``_epoch``, ``use_buffers``, ``device``) for tlx models. The average
    is ``lerp(average, current, 1 - decay)``: Lightning's ``decay * average + (1 - decay) * current``,
    exact for a tensor that does not change."""

    def __init__(
        self,
        decay: float = 0.999,
        update_every_n_steps: int = 1,
        update_starting_at_step: int | None = None,
        update_starting_at_epoch: int | None = None,
        use_buffers: bool = True,
        device: str | None = None,
    ):
        # EMAWeightAveraging's own __init__ fixes its avg_fn; its update rule (should_update) is kept.
        WeightAveraging.__init__(self, device=device, use_buffers=use_buffers,
                                 avg_fn=exact_average(lambda n: 1.0 - decay))
        self.decay = decay
        self.update_every_n_steps = update_every_n_steps
        self.update_starting_at_step = update_starting_at_step
        self.update_starting_at_epoch = update_starting_at_epoch
