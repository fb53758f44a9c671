"""Rendering batches of images as labelled matplotlib figures (for the loggers and the run report)."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from matplotlib.figure import Figure

GOOD, BAD = "#1a7f37", "#cf222e"

log = logging.getLogger("tlx")


@contextlib.contextmanager
def never_fatal(what: str) -> Iterator[None]:
    """A figure is a side product: if drawing it fails, say so and let training go on."""
    try:
        yield
    except Exception as e:  # matplotlib, fonts, TensorBoard: nothing worth losing a run for
        first = str(e).splitlines()[0] if str(e) else ""
        log.warning("Could not draw %s (%s: %s); training goes on without it.", what, type(e).__name__, first)


def new_figure(**kwargs: Any) -> Figure:
    """A matplotlib ``Figure`` (imported here, when a figure is first drawn, so that ``import tlx``,
    ``tlx.load`` and ``predict`` do not load matplotlib). A bare Figure needs no pyplot backend:
    :func:`figure_to_array` renders it with Agg, headless."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def denormalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Undo ``Normalize(mean, std)``: ``(B, 3, H, W)`` model inputs back to ``[0, 1]`` RGB."""
    images = images.detach().float().cpu()
    m = torch.tensor(list(mean), dtype=images.dtype).view(1, -1, 1, 1)
    s = torch.tensor(list(std), dtype=images.dtype).view(1, -1, 1, 1)
    return (images * s + m).clamp(0.0, 1.0)


def image_grid_figure(
    images: Tensor,
    titles: Sequence[str] | None = None,
    colors: Sequence[str] | None = None,
    ncols: int | None = None,
    cell_inches: float = 2.2,
) -> Figure:
    """A grid of ``[0, 1]`` RGB images, each with an optional (coloured) title."""
    n = len(images)
    ncols = ncols or max(1, math.ceil(math.sqrt(n)))
    nrows = max(1, math.ceil(n / ncols))
    title_lines = max((t.count("\n") + 1 for t in titles), default=0) if titles else 0
    fig = new_figure(figsize=(ncols * cell_inches, nrows * (cell_inches + 0.18 * title_lines)), dpi=100)
    for i in range(nrows * ncols):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(images[i].permute(1, 2, 0).numpy())
        if titles:
            # parse_math=False: titles are data (class names such as 'price_$5'), never mathtext.
            ax.set_title(titles[i], fontsize=8, color=colors[i] if colors else "black", parse_math=False)
    fig.tight_layout()
    return fig


def figure_png(fig: Figure) -> bytes:
    """``fig`` as PNG bytes (a bare Figure renders with Agg, headless)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def figure_to_array(fig: Figure) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 rendering of ``fig`` (what the loggers show)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
