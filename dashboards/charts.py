"""matplotlib figures for HTML pages: inline SVG whose marks name themselves on hover.

Each mark (a point, its interval, a line, a bar) is drawn as its own matplotlib artist with an
SVG group id; ``Chart.svg`` then gives that group a class and a ``<title>`` — the browser's
hover text — so a plot shared by dozens of runs still says which point is which. The SVG is made
to live inside an HTML page: no XML prologue, metadata or namespace declarations (nothing that
names an outside address), and matplotlib's own group ids, which repeat from figure to figure,
dropped. Figures are plain ``matplotlib.figure.Figure`` objects (no pyplot state), so they can
also be saved as PNG, e.g. to MLflow.
"""

from __future__ import annotations

import html
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import matplotlib
from matplotlib.figure import Figure

from tasks.stats import Interval

STYLE = {"font.size": 9, "axes.labelsize": 9, "xtick.labelsize": 8, "ytick.labelsize": 8,
         "axes.edgecolor": "#9ca3af", "figure.dpi": 100}  # apply with drawing()


def drawing():
    """The context to create and draw figures in (the house style)."""
    return matplotlib.rc_context(STYLE)


@dataclass
class Chart:
    """A figure, its axes, and the hover text of its marks by SVG group id."""

    name: str  # unique on a page: it also seeds the SVG's own ids
    figure: Figure
    axes: list = field(default_factory=list)
    tips: dict[str, tuple[str, str]] = field(default_factory=dict)  # gid -> (class, text)

    @classmethod
    def new(cls, name: str, panels: int = 1, size: tuple[float, float] = (5.7, 3.4),
            fit: bool = False) -> Chart:
        """A figure of panels side by side. fit: lay the margins out around long tick labels
        (matplotlib's constrained layout, a third of the drawing time); else fixed margins that
        suit numeric axes."""
        figure = Figure(figsize=size, layout="constrained" if fit else None)
        if not fit:
            figure.subplots_adjust(left=0.12, right=0.97, bottom=0.15, top=0.96, wspace=0.3)
        return cls(name, figure, [figure.add_subplot(1, panels, i + 1) for i in range(panels)])

    def mark(self, artist, kind: str, text: str) -> None:
        """Name an artist: its SVG group gets class ``kind`` and hover text ``text``."""
        gid = f"{self.name}-{len(self.tips)}"
        artist.set_gid(gid)
        self.tips[gid] = (kind, text)

    def svg(self, title: str) -> str:
        """The figure as SVG to inline in HTML (see the module docstring)."""
        buffer = io.StringIO()
        with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": self.name}):
            self.figure.savefig(buffer, format="svg", metadata={"Date": None})
        text = buffer.getvalue()
        text = re.sub(r"<metadata>.*?</metadata>\s*", "", text[text.index("<svg"):], flags=re.S)
        text = re.sub(r' xmlns(:xlink)?="[^"]*"', "", text).replace("xlink:href=", "href=")

        def group(match: re.Match) -> str:
            if match[1] not in self.tips:
                return "<g>"
            kind, tip = self.tips[match[1]]
            return f'<g id="{match[1]}" class="{kind}"><title>{html.escape(tip)}</title>'

        text = re.sub(r'<g id="([^"]+)">', group, text)
        label = html.escape(title)
        return text.replace("<svg ", f'<svg class="plot" role="img" aria-label="{label}" ', 1)


def style(ax, x_label: str, y_label: str) -> None:
    ax.set(xlabel=x_label, ylabel=y_label, axisbelow=True)
    ax.grid(True, color="#e5e7eb", linewidth=0.6)
    ax.spines[["top", "right"]].set_visible(False)


def _extent(value: float, interval: Interval | None) -> list[list[float]] | None:
    """matplotlib's error extents (below, above) of an interval around value."""
    if interval is None:
        return None
    return [[max(0.0, value - interval.low)], [max(0.0, interval.high - value)]]


def point(chart: Chart, ax, x: float, y: float, colour: str, tip: str, *,
          x_interval: Interval | None = None, y_interval: Interval | None = None,
          kind: str = "point", hollow: bool = False) -> None:
    """A marker with its hover text, and its intervals as error bars when given. kind
    "seed-point": a small, faint marker (one seed of a cell drawn with its pooled point)."""
    if x_interval or y_interval:
        bars = ax.errorbar([x], [y], xerr=_extent(x, x_interval), yerr=_extent(y, y_interval),
                           fmt="none", ecolor=colour, elinewidth=1.2, capsize=3, alpha=0.75)
        for collection in bars.lines[2]:
            chart.mark(collection, "interval", f"95 % interval — {tip}")
    seed = kind == "seed-point"
    (marker,) = ax.plot([x], [y], linestyle="none", marker="o", markersize=4 if seed else 7,
                        color=colour, markerfacecolor="white" if hollow else colour,
                        markeredgecolor=colour if hollow else "white", zorder=3,
                        markeredgewidth=1.6 if hollow else 0.8, alpha=0.5 if seed else 1.0)
    chart.mark(marker, kind, tip)


def bar(chart: Chart, ax, x: float, value: float, width: float, colour: str, tip: str,
        interval: Interval | None = None) -> None:
    """A bar with its hover text, and its interval as an error bar when given."""
    chart.mark(ax.bar([x], [value], width, color=colour)[0], "bar", tip)
    if interval is not None:
        bars = ax.errorbar([x], [value], yerr=_extent(value, interval), fmt="none",
                           ecolor="#374151", elinewidth=1, capsize=2)
        chart.mark(bars.lines[2][0], "interval", f"95 % interval — {tip}")


def line(chart: Chart, ax, points: Sequence[tuple[float, float]], colour: str, tip: str) -> None:
    """A line through (step, value) points, broken where the steps jump by more than twice the
    usual stride: a gap in logging (e.g. non-finite values that were not logged) shows as one."""
    strides = sorted(b[0] - a[0] for a, b in zip(points, points[1:], strict=False))
    usual = strides[len(strides) // 2] if len(strides) > 1 else math.inf
    xs, ys = [], []
    for i, (step, value) in enumerate(points):
        if i and step - points[i - 1][0] > 2 * usual:
            xs.append(math.nan)
            ys.append(math.nan)
        xs.append(step)
        ys.append(value)
    chart.mark(ax.plot(xs, ys, color=colour, linewidth=1.5)[0], "line", tip)


def labels(ax, points: Sequence[tuple[float, float, str]]) -> None:
    """Write each label beside its point: to the right, or to the left in the right quarter of
    the axes (where it would be cut off). Call once every mark is drawn (the limits are final)."""
    low, high = ax.get_xlim()
    for x, y, text in points:
        left = x > low + 0.75 * (high - low)
        ax.annotate(text, (x, y), xytext=(-6 if left else 6, 4), textcoords="offset points",
                    fontsize=8, horizontalalignment="right" if left else "left")
