"""``python -m tlx lr_find``: Lightning's learning-rate range test, its plot and its suggestion."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.tuner import Tuner

from tlx.errors import TLXError

log = logging.getLogger("tlx")


def suggest_lr(lrs: list[float], losses: list[float], skip_begin: int = 0) -> tuple[float | None, str]:
    """The steepest descent of the loss *before it diverges* (its lowest point), or ``None`` and why.

    Lightning takes the steepest descent over the whole curve: once the loss explodes and oscillates
    (0.36 -> 15 -> 12 ...), a fall between two exploded values can win, suggesting a rate far past
    divergence. Only the stretch from ``skip_begin`` to the lowest loss is considered here."""
    lr = np.asarray(lrs, dtype=float)
    loss = np.asarray(losses, dtype=float)
    finite = np.isfinite(loss)
    if not finite.any():
        return None, "the loss was never finite"
    lowest = int(np.nanargmin(np.where(finite, loss, np.nan)))
    start = min(skip_begin, lowest)
    if lowest - start < 2:
        return None, (f"the loss did not fall over {len(loss)} batches before diverging at lr {lr[lowest]:.2g}; "
                      "try a lower min_lr")
    window = loss[start:lowest + 1]
    if window[-1] >= window[0]:
        return None, f"the loss did not fall over {len(loss)} batches"
    i = start + int(np.argmin(np.gradient(window)))
    return float(lr[i]), ""


def find_lr(
    trainer: Trainer,
    model: LightningModule,
    datamodule: LightningDataModule | None = None,
    min_lr: float = 1e-7,
    max_lr: float = 1.0,
    num_training: int = 100,
    mode: str = "exponential",
    early_stop_threshold: float | None = 4.0,
    output_dir: str | None = None,
) -> dict:
    """Train ``num_training`` batches with the learning rate rising from ``min_lr`` to ``max_lr``
    (the model's own optimiser, its scheduler set aside), then restore the weights.

    Writes ``lr_find.png`` (loss versus learning rate, the suggestion marked) and ``lr_find.json``
    (the curve and the suggestion) into ``output_dir`` (default: the run's log directory) and
    returns ``{"suggestion", "plot", "results"}``. The suggestion is the point of steepest descent
    of the loss before it diverges (:func:`suggest_lr`): a starting point, not a guarantee.
    """
    if mode not in ("exponential", "linear"):
        raise TLXError(f"lr_find mode {mode!r}: choose 'exponential' or 'linear'.")
    if not 0 < min_lr < max_lr:
        raise TLXError(f"lr_find needs 0 < min_lr < max_lr (got min_lr={min_lr}, max_lr={max_lr}).")
    # The range test counts batches, not epochs: a config's max_epochs (4 epochs of a small data
    # set) must not cut it short, so epochs are unlimited while it runs.
    max_epochs = trainer.fit_loop.max_epochs
    trainer.fit_loop.max_epochs = -1
    try:
        finder = Tuner(trainer).lr_find(
            model, datamodule=datamodule, min_lr=min_lr, max_lr=max_lr, num_training=num_training, mode=mode,
            early_stop_threshold=early_stop_threshold, update_attr=False,
        )
    finally:
        trainer.fit_loop.max_epochs = max_epochs
    if finder is None:  # fast_dev_run
        raise TLXError("lr_find does not run with trainer.fast_dev_run; turn it off.")
    out = Path(output_dir or trainer.log_dir or trainer.default_root_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = len(finder.results["lr"])
    # Lightning's suggestion skips the first 10 and the last point; short runs cannot afford that.
    suggestion, why_none = suggest_lr(finder.results["lr"], finder.results["loss"], skip_begin=min(10, max(0, n // 5)))
    import matplotlib  # here, not at import: `import tlx` must not load matplotlib

    matplotlib.use("Agg")  # headless: Lightning's plot goes through pyplot
    fig = finder.plot(suggest=False)  # its own marker would re-run suggestion() with other skips
    if suggestion is not None:
        lrs, losses = finder.results["lr"], finder.results["loss"]
        i = min(range(n), key=lambda j: abs(lrs[j] - suggestion))
        fig.axes[0].plot(lrs[i], losses[i], markersize=10, marker="o", color="red")
    fig.axes[0].set_title(
        f"learning-rate range test ({n} batches)"
        + (f": suggestion {suggestion:.2e}" if suggestion is not None else "")
    )
    plot = out / "lr_find.png"
    fig.savefig(plot, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    results = {"lr": [float(v) for v in finder.results["lr"]], "loss": [float(v) for v in finder.results["loss"]]}
    with open(out / "lr_find.json", "w") as f:
        json.dump({"suggestion": suggestion, "min_lr": min_lr, "max_lr": max_lr, "mode": mode, **results}, f, indent=1)
    if trainer.is_global_zero:
        if suggestion is None:
            print(f"lr_find: no suggestion ({why_none}); see {plot}")
        else:
            print(f"Suggested learning rate: {suggestion:.3g}  (plot: {plot}; set it as the optimizer's lr, "
                  "e.g. --model.init_args.optimizer.init_args.lr=" + f"{suggestion:.2g})")
        log.info("lr_find wrote %s and %s", plot, os.path.join(out, "lr_find.json"))
    return {"suggestion": suggestion, "plot": str(plot), "results": results}
