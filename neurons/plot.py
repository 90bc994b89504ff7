"""The localnet's loss chart: one line per neuron over the windows, as a PNG (matplotlib).

The figure is drawn on matplotlib's Agg canvas directly, never through pyplot, so that no
global backend is chosen and nothing needs a display.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from matplotlib.figure import Figure

WIDTH_IN, HEIGHT_IN, DPI = 10.0, 5.6, 120  # 1200 x 672 pixels


@attrs.frozen
class Series:
    """One neuron's line: its label and (window, loss) points."""

    label: str
    points: Sequence[tuple[int, float]]
    # The validator's loss is the network's result; the miners' are their own batches'.
    primary: bool = False
    dashed: bool = False  # a miner that misbehaves on purpose


def loss_figure(series: Sequence[Series], title: str) -> Figure:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    for s in series:
        points = [(w, v) for w, v in s.points if math.isfinite(v)]
        ax.plot(
            [w for w, _ in points],
            [v for _, v in points],
            label=s.label,
            linewidth=2.4 if s.primary else 1.2,
            marker="o" if s.primary else ".",
            markersize=4 if s.primary else 3,
            alpha=1.0 if s.primary else 0.75,
            zorder=3 if s.primary else 2,
            linestyle="--" if s.dashed else "-",
        )
    ax.set_title(title)
    ax.set_xlabel("window")
    ax.set_ylabel("loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    if series:
        ax.legend(loc="upper right", fontsize="small")
    return fig


def save_loss_png(series: Sequence[Series], title: str, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = loss_figure(series, title)
    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def neuron_series(
    losses: Mapping[str, Mapping[int, float]],
    windows: Sequence[int],
    labels: Mapping[str, str],
    primary: str,
    dashed: Collection[str] = (),
) -> list[Series]:
    """Each neuron's losses over `windows` (those without a loss there are left out), the
    `primary` neuron first; `dashed`: the names drawn dashed."""
    shown = set(windows)
    order = sorted(losses, key=lambda name: (name != primary, name))
    out = []
    for name in order:
        points = sorted((w, v) for w, v in losses[name].items() if w in shown)
        if points:
            label = labels.get(name, name)
            out.append(Series(label, points, primary=name == primary, dashed=name in dashed))
    return out
