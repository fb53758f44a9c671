"""Stochastic weight averaging (Izmailov et al., 2018): the plain mean of the weights along the end
of training, on Lightning's ``WeightAveraging`` (:mod:`tlx.callbacks.weight_averaging`).

Not Lightning's ``StochasticWeightAveraging``, for three reasons found in tlx runs: (1) its copy of
the model is taken in ``setup``, before tlx's head exists, and its updates ``zip`` the two models'
parameters, so the head was never averaged; (2) validation and ``best.ckpt`` see the raw weights (the
average reaches the model only when fit ends); (3) to refresh BatchNorm statistics it resets every BN
layer and re-estimates them in an extra training epoch, which wipes the statistics that a strategy
keeps frozen (``freeze_bn_stats``, feature extraction) and does nothing when the backbone does not
run (the feature cache). Here the average is updated after every optimizer step from
``swa_epoch_start`` on, BatchNorm buffers are averaged like the weights (frozen ones stay exact),
validation and checkpoints hold the average, and resuming continues it.

The learning rate: SWA wants a constant (or cyclic), fairly high LR while it averages. Without
``swa_lr`` the model's own scheduler runs on (fine with a constant LR; a cosine that reaches 0
averages nearly equal weights). With ``swa_lr``, the model's scheduler is replaced at
``swa_epoch_start`` by ``torch.optim.swa_utils.SWALR``, which anneals each group to a constant LR in
``annealing_epochs`` epochs (as Lightning's callback does); ``swa_lr`` is the LR of the group with
the highest LR, the others keep their ratio to it (discriminative LRs and layer decay survive).
"""

from __future__ import annotations

from typing import Any, Literal

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities.types import LRSchedulerConfig
from torch.optim.swa_utils import SWALR

from tlx.callbacks.weight_averaging import LateWeightAveraging, exact_average
from tlx.errors import TLXError


class SWA(LateWeightAveraging):
    """Equal-weight average of the weights after every ``update_every_n_steps`` optimizer steps
    from epoch ``swa_epoch_start`` (0-based; a float in (0, 1) is that fraction of ``max_epochs``).

    Args:
        swa_epoch_start: the first epoch averaged.
        update_every_n_steps: average every n-th optimizer step.
        swa_lr: when set, anneal to this constant LR from ``swa_epoch_start`` (replaces the model's
            scheduler; see the module docstring); ``None`` keeps the model's schedule.
        annealing_epochs, annealing_strategy: how ``SWALR`` reaches ``swa_lr``.
        use_buffers: average BatchNorm statistics too (else they are the current model's).
        device: where the average lives (default: the model's device; ``cpu`` saves GPU memory).
    """

    def __init__(
        self,
        swa_epoch_start: int | float = 0.75,
        update_every_n_steps: int = 1,
        swa_lr: float | None = None,
        annealing_epochs: int = 1,
        annealing_strategy: Literal["cos", "linear"] = "cos",
        use_buffers: bool = True,
        device: str | None = None,
    ):
        if not (isinstance(swa_epoch_start, int) and swa_epoch_start >= 0) and not (0 < swa_epoch_start < 1):
            raise TLXError(f"SWA swa_epoch_start must be an epoch (int >= 0) or a fraction in (0, 1), got {swa_epoch_start!r}.")
        if update_every_n_steps < 1 or (swa_lr is not None and swa_lr <= 0):
            raise TLXError("SWA update_every_n_steps must be >= 1 and swa_lr > 0 (or null).")
        super().__init__(device=device, use_buffers=use_buffers, avg_fn=exact_average(lambda n: 1.0 / (float(n) + 1.0)))
        self.swa_epoch_start = swa_epoch_start
        self.update_every_n_steps = update_every_n_steps
        self.swa_lr = swa_lr
        self.annealing_epochs = annealing_epochs
        self.annealing_strategy = annealing_strategy
        self._averaging = False
        self._scheduler: SWALR | None = None
        self._scheduler_state: dict[str, Any] | None = None

    def start_epoch(self, max_epochs: int | None) -> int:
        if isinstance(self.swa_epoch_start, int):
            return self.swa_epoch_start
        if not max_epochs or max_epochs < 0:
            raise TLXError("SWA swa_epoch_start as a fraction needs trainer.max_epochs; give an epoch number instead.")
        return int(self.swa_epoch_start * max_epochs)

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return self._averaging and step_idx is not None and step_idx % self.update_every_n_steps == 0

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._scheduler = None
        if self._scheduler_state is not None:
            # Resuming inside the SWA phase: the checkpoint's scheduler state is SWALR's, which the
            # model's scheduler cannot load; SWALR is rebuilt (and its state loaded) at the epoch's start.
            trainer.lr_scheduler_configs.clear()

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._sync(trainer)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._sync(trainer)  # a run resumed mid-epoch gets no on_train_epoch_start

    def _sync(self, trainer: Trainer) -> None:
        self._averaging = trainer.current_epoch >= self.start_epoch(trainer.max_epochs)
        if self._averaging and self.swa_lr is not None and self._scheduler is None:
            self._replace_scheduler(trainer)

    def _replace_scheduler(self, trainer: Trainer) -> None:
        if len(trainer.optimizers) != 1:
            raise TLXError("SWA swa_lr works with one optimizer; leave swa_lr null to keep the model's schedule.")
        optimizer = trainer.optimizers[0]
        base = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
        top = max(base)
        self._scheduler = SWALR(optimizer, swa_lr=[self.swa_lr * lr / top if top > 0 else self.swa_lr for lr in base],
                                anneal_epochs=self.annealing_epochs, anneal_strategy=self.annealing_strategy)
        if self._scheduler_state is not None:
            self._scheduler.load_state_dict(self._scheduler_state)
        trainer.lr_scheduler_configs[:] = [LRSchedulerConfig(self._scheduler, interval="epoch")]

    def state_dict(self) -> dict[str, Any]:
        scheduler = self._scheduler.state_dict() if self._scheduler is not None else None
        return {**super().state_dict(), "scheduler_state": scheduler}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._scheduler_state = state_dict.get("scheduler_state")
