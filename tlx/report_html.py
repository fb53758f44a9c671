"""One self-contained HTML page of a run (``report.html``): pictures inline as base64 PNG, a
``<style>`` block, no script and nothing fetched, so it opens anywhere, offline, as one file.

:class:`RunSummary` holds what the page shows (filled by :class:`tlx.callbacks.RunReport`);
:func:`render_report` turns it into HTML. matplotlib draws the curves and the confusion matrix
when it is installed; without it the page keeps its tables and says what is missing.
"""

from __future__ import annotations

import base64
import html
import math
import os
from dataclasses import dataclass, field

from torch import Tensor

from tlx.metrics import confusion_figure, most_confused, per_class_rows
from tlx.visuals import BAD, GOOD, figure_png, new_figure

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1180px; color: #1f2328; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; margin-top: 28px; }
h3 { font-size: 15px; margin: 16px 0 6px; }
table { border-collapse: collapse; margin: 6px 0 12px; } td, th { border: 1px solid #d0d7de; padding: 3px 8px; text-align: right; }
th { background: #f6f8fa; } td:first-child, th:first-child { text-align: left; }
.muted { color: #656d76; } .note { background: #fff8c5; border: 1px solid #d4a72c; padding: 6px 10px; border-radius: 6px; }
.row { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; } .card { width: 168px; font-size: 12px; }
.card img { width: 160px; height: 160px; object-fit: contain; background: #f6f8fa; display: block; }
.card .file { word-break: break-all; } .bad { color: %(BAD)s; } .good { color: %(GOOD)s; } pre { background: #f6f8fa; padding: 10px; overflow-x: auto; font-size: 12px; }
img.plot { max-width: 100%%; }
""" % {"BAD": BAD, "GOOD": GOOD}


@dataclass
class Worst:
    """One of the worst-predicted images."""

    true: str
    predicted: str
    loss: float
    prob_true: float
    file: str | None = None
    png: bytes | None = None


@dataclass
class Evaluation:
    """One evaluation of the model: the last validation of fit, or a test."""

    title: str
    class_names: list[str]
    confusion: Tensor
    worst: list[Worst] = field(default_factory=list)
    note: str | None = None


@dataclass
class RunSummary:
    title: str
    log_dir: str
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    best: tuple[str, float] | None = None
    history: list[dict] = field(default_factory=list)
    evaluations: list[Evaluation] = field(default_factory=list)
    trainable: list[tuple[str, int, int, str]] | None = None
    config: str | None = None
    timing: list[tuple[str, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def matplotlib_missing() -> str | None:
    """None when matplotlib can draw, else what to tell the reader."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "matplotlib is not installed, so this report has tables but no plots (pip install matplotlib)."
    return None


def data_uri_png(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def img(png: bytes, alt: str, cls: str = "plot") -> str:
    return f'<img class="{cls}" alt="{html.escape(alt)}" src="{data_uri_png(png)}">'


def fmt(v: object) -> str:
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.4g}"
    return html.escape(str(v))


def table(header: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


# ---- curves -----------------------------------------------------------------------------------
def curve_groups(history: list[dict]) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """``{"loss": {"train/loss_epoch": [(epoch, value), ...], "val/loss": [...]}, "acc": ...}``:
    one panel per metric, train and validation together."""
    groups: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for row in history:
        for name, value in row.items():
            if name in ("epoch", "step"):
                continue
            panel = name.split("/", 1)[-1].removesuffix("_epoch")
            groups.setdefault(panel, {}).setdefault(name, []).append((row["epoch"], value))
    return groups


def curves_png(history: list[dict]) -> bytes:
    groups = curve_groups(history)
    cols = min(3, len(groups))
    rows = math.ceil(len(groups) / cols)
    from matplotlib.ticker import MaxNLocator

    fig = new_figure(figsize=(4.2 * cols, 3.0 * rows), dpi=100)
    for i, (panel, series) in enumerate(sorted(groups.items())):
        ax = fig.add_subplot(rows, cols, i + 1)
        for name, points in sorted(series.items()):
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=name)
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs, never 0.96 ... 1.04
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return figure_png(fig)


def curves_section(history: list[dict], plots: bool) -> str:
    names = sorted({k for row in history for k in row} - {"epoch", "step"})
    rows = [[row["epoch"], row["step"], *[row.get(n, float("nan")) for n in names]] for row in history]
    picture = img(curves_png(history), "metric curves") if plots else ""
    details = "<details open>" if not plots else "<details>"
    return (f"<h2>Metric curves</h2>{picture}{details}<summary>values per epoch</summary>"
            f"{table(['epoch', 'step', *names], rows)}</details>")


# ---- evaluations ------------------------------------------------------------------------------
def confusion_table(e: Evaluation) -> str:
    m = e.confusion.long()
    peak = max(1, int(m.max()))
    head = "<tr><th>true \\ predicted</th>" + "".join(f"<th>{html.escape(n)}</th>" for n in e.class_names) + "</tr>"
    body = ""
    for i, name in enumerate(e.class_names):
        cells = "".join(f'<td style="background: rgba(31,111,235,{0.8 * int(v) / peak:.2f})">{int(v)}</td>'
                        for v in m[i])
        body += f"<tr><th>{html.escape(name)}</th>{cells}</tr>"
    return f"<table>{head}{body}</table>"


def evaluation_section(e: Evaluation, plots: bool) -> str:
    names = e.class_names
    total, correct = int(e.confusion.sum()), int(e.confusion.diag().sum())
    out = [f"<h2>{html.escape(e.title)}</h2>",
           f"<p>{correct} of {total} images right ({correct / max(total, 1):.1%}).</p>"]
    if e.note:
        out.append(f"<p class='note'>{html.escape(e.note)}</p>")
    per_class = table(["class", "images", "correct", "accuracy", "95% interval", "precision"],
                      [[r["class"], r["images"], r["correct"], r["accuracy"], f"{r['low']:.2f}–{r['high']:.2f}",
                        r["precision"]] for r in per_class_rows(e.confusion, names)])
    if len(names) > 30:  # a long table folds away (open it in the page)
        per_class = f"<details><summary>{len(names)} classes</summary>{per_class}</details>"
    pairs = most_confused(e.confusion, names)
    pair_table = table(["true", "predicted as", "images", "share of true class"],
                       [[t, p, n, f"{s:.1%}"] for t, p, n, s in pairs]) if pairs else "<p>No confusions.</p>"
    if plots:
        matrix = img(figure_png(confusion_figure(e.confusion, names)), "confusion matrix")
    elif len(names) <= 40:
        matrix = confusion_table(e)
    else:
        matrix = "<p class='muted'>Confusion matrix: too many classes for a table (install matplotlib).</p>"
    out.append(f"<div class='row'><div><h3>Confusion matrix</h3>{matrix}</div>"
               f"<div><h3>Per-class accuracy</h3>{per_class}<h3>Most confused pairs</h3>{pair_table}</div></div>")
    if e.worst:
        cards = []
        for w in e.worst:
            picture = img(w.png, w.file or "image", cls="") if w.png else "<div class='muted'>(no image)</div>"
            right = "good" if w.predicted == w.true else "bad"
            caption = (f"<b class='{right}'>{html.escape(w.predicted)}</b> / {html.escape(w.true)}<br>"
                       f"loss {w.loss:.2f}, p(true) {w.prob_true:.2f}")
            if w.file:
                caption += f"<br><span class='muted file' title='{html.escape(w.file)}'>{html.escape(os.path.basename(w.file))}</span>"
            cards.append(f"<div class='card'>{picture}{caption}</div>")
        out.append(f"<h3>Top losses</h3><p class='muted'>predicted / true; the images the model gets most "
                   f"wrong.</p><div class='cards'>{''.join(cards)}</div>")
    return "".join(out)


# ---- the page ---------------------------------------------------------------------------------
def metric_order(name: str) -> tuple[int, str]:
    """Test, then validation, then training metrics, then the rest (learning rates, counts)."""
    for rank, prefix in enumerate(("test/", "val/", "train/")):
        if name.startswith(prefix):
            return rank, name
    return 3, name


def render_report(s: RunSummary) -> str:
    missing = matplotlib_missing()
    notes = [*s.notes, *([missing] if missing else [])]
    parts = [f"<h1>{html.escape(s.title)}</h1>",
             f"<p class='muted'>{html.escape(s.status)} · {html.escape(s.log_dir)}</p>"]
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in notes]
    if s.metrics:
        parts.append("<h2>Final metrics</h2>" + table(["metric", "value"], [[k, s.metrics[k]] for k in sorted(s.metrics, key=metric_order)]))
    if s.best:
        parts.append(f"<p>Best checkpoint: {html.escape(s.best[0])} (score {s.best[1]:.4g})</p>")
    if s.history:
        parts.append(curves_section(s.history, plots=missing is None))
    parts += [evaluation_section(e, plots=missing is None) for e in s.evaluations]
    if s.trainable:
        rows = [list(r) for r in s.trainable]
        rows.append(["total", sum(r[1] for r in s.trainable), sum(r[2] for r in s.trainable), ""])
        parts.append("<h2>Trainable and frozen parameters</h2>" + table(["module", "trainable", "frozen", "mode"], rows))
    if s.timing:
        parts.append("<h2>Timing</h2>" + table(["phase", "seconds"], [[k, f"{v:.1f}"] for k, v in s.timing]))
    if s.config:
        parts.append(f"<h2>Resolved config</h2><pre>{html.escape(s.config)}</pre>")
    body = "\n".join(parts)
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(s.title)}</title>"
            f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n")
