"""The nightly evaluation's trend: each model's Avg@k night by night.

Every evaluate flow run is one parent run tagged with its date (``night``, tasks.plan.night_spec)
and a child run per model (tags ``evaluated_model``, ``model_version``). ``read_trend`` reads
them back; ``trend_table`` (Markdown: a row per night, a column per model) and ``trend_figure``
(a line per model) show them; ``attach_trend`` puts both on a night's parent run, with the
night's per-model summary metrics (``avg_at_4/<model>``, the names a study's parent run uses),
so that the newest night's run in MLflow shows how every model has moved.
"""

from __future__ import annotations

from dataclasses import dataclass

from matplotlib.figure import Figure

from dashboards.charts import drawing
from tasks.eval_metrics import AVG_AT_K
from tasks.plan import NIGHT_TAG
from tasks.runs import slug
from tasks.tracking import Tracker

MAX_NIGHTS = 90  # the trend's window: enough for a quarter, cheap to read


@dataclass(frozen=True)
class Point:
    """One model's evaluation on one night."""

    night: str  # YYYY-MM-DD
    model: str  # the registered name (versions change; the model's line goes on)
    version: str
    value: float
    run_id: str


def read_trend(tracker: Tracker, experiment: str, k: int, nights: int = MAX_NIGHTS
               ) -> list[Point]:
    """Each model's overall Avg@k on each of the newest nights of experiment, oldest first; of
    two evaluations on one night, the later one."""
    latest: dict[tuple[str, str], Point] = {}
    for parent, tags in tracker.runs_with_tag(experiment, NIGHT_TAG)[-nights:]:
        for child in tracker.child_runs(parent.run_id):
            value = tracker.run_metrics(child.run_id).get(AVG_AT_K.logged(k))
            if value is None:  # a failed model: no point, the line has a gap
                continue
            child_tags = tracker.run_tags(child.run_id)
            model = child_tags.get("evaluated_model", child.run_name)
            latest[(tags[NIGHT_TAG], model)] = Point(tags[NIGHT_TAG], model,
                                                     child_tags.get("model_version", "–"),
                                                     value, child.run_id)
    return sorted(latest.values(), key=lambda p: (p.night, p.model))


def trend_table(points: list[Point], k: int) -> str:
    """Markdown: a row per night, a column per model, each cell "Avg@k (vN)"."""
    models = sorted({p.model for p in points})
    by = {(p.night, p.model): p for p in points}
    lines = ["| night | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for night in sorted({p.night for p in points}):
        cells = [f"{by[night, m].value:.3f} (v{by[night, m].version})" if (night, m) in by
                 else "–" for m in models]
        lines.append(f"| {night} | " + " | ".join(cells) + " |")
    return f"Avg@{k} per night (model version in brackets)\n\n" + "\n".join(lines)


def trend_figure(points: list[Point], k: int) -> Figure:
    """A line per model through its Avg@k by night (a point where there is one night)."""
    nights = sorted({p.night for p in points})
    with drawing():
        figure = Figure(figsize=(7, 3.5))
        axes = figure.subplots()
        for model in sorted({p.model for p in points}):
            mine = [p for p in points if p.model == model]
            axes.plot([nights.index(p.night) for p in mine], [p.value for p in mine],
                      marker="o", label=model)
        shown = range(0, len(nights), max(1, len(nights) // 12))  # at most about 12 labels
        axes.set_xticks(list(shown), [nights[i] for i in shown], rotation=30, ha="right")
        axes.set_ylabel(f"Avg@{k} (overall)")
        axes.set_title(f"Nightly evaluation: Avg@{k} by night")
        axes.legend(fontsize=7, loc="best")
        figure.tight_layout()
    return figure


def attach_trend(tracker: Tracker, experiment: str, night_run_id: str, k: int) -> str:
    """Put the trend (trend.md, trend.png) and tonight's per-model summary metrics on the
    night's parent run; returns the Markdown table."""
    points = read_trend(tracker, experiment, k)
    table = trend_table(points, k)
    tonight = [p for p in points if p.run_id in
               {c.run_id for c in tracker.child_runs(night_run_id)}]
    if tonight:
        tracker.log_metrics(night_run_id, {f"{AVG_AT_K.key(k)}/{slug(p.model)}": p.value
                                           for p in tonight}, step=0)
    tracker.log_text(night_run_id, table + "\n", "trend.md")
    if points:
        tracker.log_figure(night_run_id, trend_figure(points, k), "trend.png")
    return table
