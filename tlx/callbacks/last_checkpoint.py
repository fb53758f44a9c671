"""Keep ``last.ckpt`` current, and save it on SIGTERM (cluster preemption) or Ctrl-C before exiting.

Lightning 2.6's ModelCheckpoint rewrites ``last.ckpt`` only when it also saves a top-k checkpoint,
i.e. when the monitored metric improved: after an epoch without improvement ``last.ckpt`` is an
older state, and resuming from it repeats work. This callback writes it after every validation
during ``fit`` (and every ``every_n_train_steps`` steps if set), into the ModelCheckpoint's folder.

SIGTERM: Lightning's own handler makes the loops exit at once, even in the middle of a validation
run, and saves nothing (``OnExceptionCheckpoint`` would save on *any* error, a NaN loss included).
While ``fit`` trains, this callback takes SIGTERM over: the handler only sets a flag; after the
current training batch (or at the end of validation) ``last.ckpt`` is written, and Lightning's
exit path is triggered; ``python -m tlx`` then exits with status 143.

SIGINT (Ctrl-C) is handled the same way (exit status 130), so that the work since the last
validation is not lost; a second Ctrl-C interrupts at once, as usual.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from tlx.compat import checkpoint_every_n_epochs, request_graceful_stop

log = logging.getLogger("tlx")

HANDLED = (signal.SIGTERM, signal.SIGINT)
_received: list[str] = []  # the signal that stopped this process's fit, for the CLI's last line


def received_signal() -> str | None:
    """``SIGTERM`` or ``SIGINT`` when a fit of this process was stopped by one, else None."""
    return _received[-1] if _received else None


def signal_exit_code(name: str) -> int:
    """What a shell reports for a process ended by that signal (143 for SIGTERM, 130 for SIGINT)."""
    return 128 + int(getattr(signal, name))


class LastCheckpoint(Callback):
    """Write ``last.ckpt`` after each validation, every N training steps, and on SIGTERM.

    Args:
        every_n_train_steps: also save after every N optimizer steps (0: only after validation).
            Preemptible jobs lose at most this many steps.
        on_sigterm: save and stop at the next safe point when the process receives SIGTERM.
    """

    def __init__(self, every_n_train_steps: int = 0, on_sigterm: bool = True):
        self.every_n_train_steps = every_n_train_steps
        self.on_sigterm = on_sigterm
        self.sigterm = False  # a stopping signal arrived (SIGTERM or SIGINT)
        self.signal_name: str | None = None
        self.preempted_path: str | None = None
        self._previous_handlers: dict[int, object] = {}
        self._saved_step: int | None = None  # the optimizer step last saved by every_n_train_steps

    # ---- where -------------------------------------------------------------------------------
    @staticmethod
    def _model_checkpoint(trainer: Trainer) -> ModelCheckpoint | None:
        return next((cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)), None)

    def path(self, trainer: Trainer) -> str:
        cb = self._model_checkpoint(trainer)
        folder = cb.dirpath if cb is not None and cb.dirpath else os.path.join(trainer.default_root_dir, "checkpoints")
        return os.path.join(folder, ModelCheckpoint.CHECKPOINT_NAME_LAST + ModelCheckpoint.FILE_EXTENSION)

    def save(self, trainer: Trainer) -> str:
        path = self.path(trainer)
        trainer.save_checkpoint(path, weights_only=False)  # explicit: Lightning logs a misleading default otherwise
        cb = self._model_checkpoint(trainer)
        if cb is not None and os.path.dirname(path) == cb.dirpath:
            cb.last_model_path = path  # ModelCheckpoint then overwrites this file instead of adding last-v1
        return path

    # ---- when --------------------------------------------------------------------------------
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Runs after Lightning registered its own handler (Trainer._run), so ours replaces it.
        _received.clear()
        if self.on_sigterm and threading.current_thread() is threading.main_thread():
            self._previous_handlers = {s: signal.signal(s, self._on_signal) for s in HANDLED}

    def _on_signal(self, signum, frame) -> None:
        self.sigterm = True  # only a flag: the checkpoint is written at the next safe point
        self.signal_name = signal.Signals(signum).name
        if signum == signal.SIGINT:  # a second Ctrl-C interrupts at once
            signal.signal(signal.SIGINT, self._previous_handlers.pop(signal.SIGINT, signal.default_int_handler))

    def _stop_if_preempted(self, trainer: Trainer) -> bool:
        if not self.sigterm or self.preempted_path is not None:
            return False
        self.preempted_path = self.save(trainer)
        _received.append(self.signal_name or "SIGTERM")
        log.warning("%s received: saved %s; resume with --ckpt_path last.", _received[-1], self.preempted_path)
        request_graceful_stop(trainer)  # Lightning's loops exit at their next check
        return True

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        if self._stop_if_preempted(trainer):
            return
        # Once per optimizer step (several batches share one under gradient accumulation), never at 0.
        step, n = trainer.global_step, self.every_n_train_steps
        if n and step and step % n == 0 and step != self._saved_step:
            self._saved_step = step
            self.save(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        if self._stop_if_preempted(trainer):
            return
        cb = self._model_checkpoint(trainer)
        if cb is not None and cb.save_last and cb.monitor and self._will_save_top_k(cb, trainer):
            return  # ModelCheckpoint (running after us) writes last.ckpt now, with its updated best
        self.save(trainer)

    @staticmethod
    def _will_save_top_k(cb: ModelCheckpoint, trainer: Trainer) -> bool:
        every = checkpoint_every_n_epochs(cb)
        if cb.save_top_k == 0 or every < 1 or (trainer.current_epoch + 1) % every:
            return False
        return cb.check_monitor_top_k(trainer, trainer.callback_metrics.get(cb.monitor))

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}
