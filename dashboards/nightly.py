"""The nightly evaluation's trend: each model's Avg@k night by night.

Every evaluate flow run is one parent run tagged with its date (``night``, tasks.plan.night_spec)
and a child run per model (tags ``evaluated_model``, ``model_version``; params ``eval.*``, the
settings it was evaluated with, which may differ between models: each student's are its
study's). ``read_trend`` reads them back, each model at its own k (its settings' largest);
``trend_table`` (Markdown: a row per night, a column per model, each value with its version and
settings) and ``trend_figure`` (a line per model) show them; ``attach_trend`` puts both on a
night's parent run, with the night's per-model summary metrics (``avg_at_4/<model>``, the names a
study's parent run uses), so that the newest night's run in MLflow shows how every model has
moved.
"""

from __future__ import annotations

import json
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
    k: int  # Avg@k's k: the largest of the model's evaluation ks
    settings: str = ""  # "problems × samples, T, cap" as evaluated that night


def evaluated_k(params: dict[str, str], k: int) -> int:
    """The k a child run's Avg@k is read at: the largest of its ``eval.ks``, else k."""
    return max(json.loads(params["eval.ks"])) if "eval.ks" in params else k


def settings_text(params: dict[str, str], metrics: dict[str, float]) -> str:
    """A child run's settings in brief: "20×4, T=1.0, cap 256" (problems × samples)."""
    if "eval.n" not in params:
        return ""
    problems = metrics.get("eval/overall/problems")
    return (f"{problems:.0f}×{params['eval.n']}, T={params.get('eval.temperature')}, "
            f"cap {params.get('eval.max_new_tokens')}")


def read_trend(tracker: Tracker, experiment: str, k: int, nights: int = MAX_NIGHTS
               ) -> list[Point]:
    """Each model's overall Avg@k on each of the newest nights of experiment, oldest first; of
    two evaluations on one night, the later one. Each child at the k of its own settings; k
    for a child that logged none."""
    latest: dict[tuple[str, str], Point] = {}
    for parent, tags in tracker.runs_with_tag(experiment, NIGHT_TAG)[-nights:]:
        for child in tracker.child_runs(parent.run_id):
            params, metrics = tracker.run_params(child.run_id), tracker.run_metrics(child.run_id)
            own_k = evaluated_k(params, k)
            value = metrics.get(AVG_AT_K.logged(own_k))
            if value is None:  # a failed model: no point, the line has a gap
                continue
            child_tags = tracker.run_tags(child.run_id)
            model = child_tags.get("evaluated_model", child.run_name)
            latest[(tags[NIGHT_TAG], model)] = Point(
                tags[NIGHT_TAG], model, child_tags.get("model_version", "–"), value,
                child.run_id, own_k, settings_text(params, metrics))
    return sorted(latest.values(), key=lambda p: (p.night, p.model))


def trend_table(points: list[Point], k: int) -> str:
    """Markdown: a row per night, a column per model, each cell "Avg@k (vN; settings)"; k is
    each model's own where it differs from the given one."""
    models = sorted({p.model for p in points})
    by = {(p.night, p.model): p for p in points}
    lines = ["| night | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for night in sorted({p.night for p in points}):
        cells = [_trend_cell(by[night, m], k) if (night, m) in by else "–" for m in models]
        lines.append(f"| {night} | " + " | ".join(cells) + " |")
    return (f"Avg@{k} per night (in brackets: model version; problems × samples, temperature, "
            "cap it was evaluated with)\n\n" + "\n".join(lines))


def _trend_cell(point: Point, k: int) -> str:
    value = f"{point.value:.3f}" + (f" (avg@{point.k})" if point.k != k else "")
    return f"{value} (v{point.version}" + (f"; {point.settings})" if point.settings else ")")


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
        tracker.log_metrics(night_run_id, {f"{AVG_AT_K.key(p.k)}/{slug(p.model)}": p.value
                                           for p in tonight}, step=0)
    tracker.log_text(night_run_id, table + "\n", "trend.md")
    if points:
        tracker.log_figure(night_run_id, trend_figure(points, k), "trend.png")
    return table
