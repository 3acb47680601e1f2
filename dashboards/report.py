"""The tradeoff report of a study: one self-contained HTML page, readable offline and in MLflow.

A study is the parent run of a ``grid`` flow (tag ``study=grid``) and its child runs — the cells
(tags ``cell``, ``objective``, ``prefix_source``, ``lambda``, ``curriculum``) and the reference
runs (tag ``reference=true``: "teacher", "student (start)") — or an explicit list of run ids, or
every run of an experiment that has no grid. It is read through ``tasks.tracking.Tracker`` (this
package never imports mlflow) and the rollout store, and written as one HTML file with no outside
references: plots are static inline SVG drawn here, no JavaScript. The page holds

- the results table: per run Avg@k, Pass@k, mean length, truncation rate, entropy, train FLOPs,
  wall time; references, grid cells, λ mixes and curriculum runs as groups of rows;
- tradeoff scatter plots: Avg@k vs entropy, vs mean response length, vs train FLOPs (matched
  steps), and a matched-FLOPs view (per-step training metrics where every cell has spent the
  same FLOPs);
- training curves (``train/loss``, ``train/entropy``, ``train/response_length``) with curriculum
  stage changes and gate steps marked;
- the per-benchmark breakdown (``eval/<benchmark>/…``);
- RL after distillation: for each cell with a GRPO run tagged ``source_run=<the cell's run>``
  (the rl_after_distill flow), Avg@k, Pass@k, entropy and length before → after RL as a table,
  an arrow plot of accuracy against entropy, and the reward curves;
- a few correct and incorrect responses per run from the store (stage ``eval/<benchmark>``),
  HTML-escaped.

A run without some metric (a failed cell, an older run) reads "–" in the tables, is left out of
the plots that need it, and is named in a note: missing data never raises.

    python -m dashboards.report --experiment demo [--run PARENT_ID] [--output report.html]
"""

from __future__ import annotations

import argparse
import html
import math
import re
import shutil
import statistics
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tasks.artifacts import artifact_root
from tasks.store import RolloutStore, default_url
from tasks.tracking import RunSummary, Tracker, default_tracking_uri

CURVE_KEYS = ("train/loss", "train/entropy", "train/response_length")
FLOPS_KEY = "train/total_flops"  # cumulative: the history at step s is the FLOPs spent so far
WALL_KEY = "time/train_total"
LENGTH_CAP_KEY = "train/max_response_length"  # changes where the curriculum moves a rung
GATE_KEY = "curriculum/length_after"  # logged only at curriculum gate steps
HISTORY_KEYS = (*CURVE_KEYS, FLOPS_KEY, LENGTH_CAP_KEY, GATE_KEY)
RL_SOURCE_TAG = "source_run"  # set by the rl_after_distill flow on each GRPO run
RL_REWARD_KEY = "rl/reward_mean"
RL_EVAL_NAMES = ("avg_at_{k}", "pass_at_{k}", "entropy", "response_length_mean")
GROUPS = {"reference": "references", "grid cell": "grid cells", "λ mix": "λ mixes",
          "curriculum": "curriculum runs"}  # group -> its title in the results table
SAMPLES_PER_VERDICT = 2  # correct and incorrect responses shown per run and benchmark
MAX_RESPONSE_CHARS = 1200
MAX_CURVE_POINTS = 400
CELL_COLOURS = ("#4e79a7", "#f28e2b", "#e15759", "#59a14f", "#b07aa1", "#76b7b2", "#edc948",
                "#ff9da7", "#9c755f", "#17becf")
REFERENCE_COLOURS = ("#222222", "#8c8c8c", "#555555", "#b0b0b0")
_EVAL_KEY = re.compile(r"^eval/(?P<benchmark>[^/]+)/(?P<name>.+)$")
esc = html.escape


# -- what is read -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sample:
    """One evaluation response as the report shows it."""

    benchmark: str
    step: int
    prompt_id: str
    sample_index: int
    problem: str | None
    response: str
    token_count: int
    truncated: bool
    correct: bool | None
    mean_entropy: float | None


@dataclass
class RunData:
    """One run of the study: its tags, latest metrics, per-step histories and samples."""

    run_id: str
    name: str
    status: str
    tags: dict[str, str]
    metrics: dict[str, float]
    histories: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    colour: str = "#000000"

    @property
    def label(self) -> str:
        return self.tags.get("cell") or self.name

    @property
    def group(self) -> str:
        if self.tags.get("reference") == "true":
            return "reference"
        if self.tags.get("curriculum") == "true":
            return "curriculum"
        return "λ mix" if ":" in self.tags.get("objective", "") else "grid cell"

    @property
    def trained(self) -> bool:
        return self.group != "reference"

    def metric(self, key: str) -> float | None:
        value = self.metrics.get(key)
        return value if value is not None and math.isfinite(value) else None


@dataclass
class Study:
    """The runs of one report and where they came from."""

    title: str
    tracking_uri: str
    parent_run_id: str | None
    runs: list[RunData]
    k: int  # the headline k of Avg@k / Pass@k: the largest logged
    store_url: str | None = None
    notes: list[str] = field(default_factory=list)  # about the study as a whole
    rl: list[RLRun] = field(default_factory=list)  # GRPO runs started from the study's cells


@dataclass
class RLRun:
    """A GRPO run (the rl_after_distill flow) that started from one run of the study: its
    evaluation before (the first logged step, 0) and after (the last) RL."""

    source: RunData
    run_id: str
    status: str
    k: int
    before: dict[str, float]
    after: dict[str, float]  # empty if the run was never evaluated after RL
    steps: int | None  # the step of the "after" evaluation: GRPO steps taken
    reward: list[tuple[int, float]]  # rl/reward_mean per GRPO step


# -- reading MLflow -----------------------------------------------------------------------------

def experiment_runs(tracker: Tracker, experiment: str) -> list[RunSummary]:
    """Every run of an experiment except study parents, oldest first."""
    runs = tracker.experiment_runs(experiment, without_tag="study")
    if runs is None:
        raise ValueError(f"no MLflow experiment {experiment!r} at {tracker.tracking_uri}: check "
                         "the name (`mlflow experiments search`) or pass --tracking-uri")
    return runs


def newest_grid(tracker: Tracker, experiment: str) -> str | None:
    """The newest grid parent run of an experiment (None if it has none)."""
    experiment_runs(tracker, experiment)  # raises, naming the experiment, if it does not exist
    return tracker.latest_run(experiment, "study", "grid")


def resolve_runs(tracker: Tracker, experiment: str | None, parent_run_id: str | None,
                 run_ids: Sequence[str] | None) -> tuple[str | None, list[RunSummary], str]:
    """(parent run id or None, the runs to report, a title) for the given selection."""
    if run_ids:
        return None, [tracker.run_summary(r) for r in run_ids], f"{len(run_ids)} selected runs"
    if parent_run_id is None:
        if experiment is None:
            raise ValueError("say which runs to report: experiment=, parent_run_id= or run_ids= "
                             "(CLI: --experiment NAME, --run PARENT_ID or --runs ID …)")
        parent_run_id = newest_grid(tracker, experiment)
        if parent_run_id is None:
            runs = experiment_runs(tracker, experiment)
            if not runs:
                raise ValueError(f"experiment {experiment!r} at {tracker.tracking_uri} has no "
                                 "runs: run `distill grid CONFIG` first")
            return None, runs, f"experiment {experiment} (no grid run: all its runs)"
    children = tracker.child_runs(parent_run_id)
    if not children:
        raise ValueError(f"run {parent_run_id} has no child runs: pass the parent run of a grid "
                         "study (tag study=grid), or --runs ID … for single runs")
    name = tracker.run_summary(parent_run_id).run_name
    return parent_run_id, children, f"{name} ({parent_run_id})"


def load_run(tracker: Tracker, summary: RunSummary) -> RunData:
    """Tags, latest metrics and the histories the plots need (only of metrics it has)."""
    metrics = tracker.run_metrics(summary.run_id)
    histories = {key: tracker.metric_history(summary.run_id, key)
                 for key in HISTORY_KEYS if key in metrics}
    return RunData(summary.run_id, summary.run_name, summary.status,
                   tracker.run_tags(summary.run_id), metrics, histories)


def load_study(tracker: Tracker, experiment: str | None, parent_run_id: str | None,
               run_ids: Sequence[str] | None) -> Study:
    """Read every run of the selection; runs ordered by group, colours assigned."""
    parent, summaries, title = resolve_runs(tracker, experiment, parent_run_id, run_ids)
    runs = [load_run(tracker, s) for s in summaries]
    runs.sort(key=lambda run: list(GROUPS).index(run.group))  # stable: start time within a group
    references = [r for r in runs if not r.trained]
    for i, run in enumerate(references):
        run.colour = REFERENCE_COLOURS[i % len(REFERENCE_COLOURS)]
    for i, run in enumerate(r for r in runs if r.trained):
        run.colour = CELL_COLOURS[i % len(CELL_COLOURS)]
    k = headline_k(key for run in runs for key in run.metrics)
    study = Study(title, tracker.tracking_uri, parent, runs, k)
    study.rl = [rl for run in runs if run.trained
                if (rl := load_rl_run(tracker, run, study)) is not None]
    return study


def load_rl_run(tracker: Tracker, source: RunData, study: Study) -> RLRun | None:
    """The newest GRPO run tagged with source's run id (None if it has none)."""
    found = tracker.tagged_runs(RL_SOURCE_TAG, source.run_id)
    if not found:
        return None
    if len(found) > 1:
        study.notes.append(f"{source.label}: {len(found)} RL runs started from it; the RL "
                           f"section shows the newest ({found[-1].run_id}).")
    newest = found[-1]
    metrics = tracker.run_metrics(newest.run_id)
    k = headline_k(metrics)
    before, after, last_step = {}, {}, None
    for name in RL_EVAL_NAMES:
        key = f"eval/overall/{name.format(k=k)}"
        history = tracker.metric_history(newest.run_id, key) if key in metrics else []
        if history:
            before[key] = history[0][1]
        if len(history) > 1:
            after[key] = history[-1][1]
            last_step = history[-1][0]
    reward = (tracker.metric_history(newest.run_id, RL_REWARD_KEY)
              if RL_REWARD_KEY in metrics else [])
    return RLRun(source, newest.run_id, newest.status, k, before, after, last_step, reward)


def headline_k(metric_keys: Iterable[str]) -> int:
    """The largest k of any ``eval/overall/avg_at_<k>`` key (1 if none is logged)."""
    ks = [int(m.group(1)) for key in metric_keys
          if (m := re.fullmatch(r"eval/overall/avg_at_(\d+)", key))]
    return max(ks, default=1)


def benchmarks(runs: Sequence[RunData]) -> list[str]:
    """Benchmarks named by ``eval/<benchmark>/…`` keys of any run, ``overall`` excluded."""
    names = {m["benchmark"] for run in runs for key in run.metrics
             if (m := _EVAL_KEY.match(key))}
    return sorted(names - {"overall"})


# -- reading the rollout store ------------------------------------------------------------------

def _sqlite_file(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL (None for a server URL)."""
    if not url.startswith("sqlite:///"):
        return None
    return Path(url.removeprefix("sqlite:///").split("?")[0]).resolve()


def default_store_url(tracking_uri: str) -> str:
    """``distill_lab.db`` beside a SQLite MLflow database (both live in the artifact directory),
    else in the artifact directory."""
    database = _sqlite_file(tracking_uri)
    return default_url(database.parent if database else artifact_root())


def attach_samples(study: Study, store_url: str | None) -> None:
    """Fill each run's samples from the store; a missing default store becomes a note."""
    url = store_url or default_store_url(study.tracking_uri)
    path = _sqlite_file(url)
    if path is not None and not path.is_file():
        if store_url:
            raise FileNotFoundError(f"no rollout store at {url} ({path} does not exist): pass "
                                    "the distill_lab.db the flows wrote (--store sqlite:///PATH)")
        study.notes.append(f"No rollout store at {url}: sample responses are not shown "
                           "(pass --store URL).")
        return
    study.store_url = url
    with RolloutStore(url) as store:
        for run in study.runs:
            run.samples = pick_samples(store, run)


def pick_samples(store: RolloutStore, run: RunData) -> list[Sample]:
    """Up to SAMPLES_PER_VERDICT correct and as many other responses per benchmark, from the
    run's last evaluated step."""
    picked: list[Sample] = []
    problems: dict[str, str] | None = None
    for benchmark in benchmarks([run]):
        rows = store.samples(run.run_id, f"eval/{benchmark}")
        if not rows:
            continue
        last = max(row.step for row in rows)
        rows = [row for row in rows if row.step == last]
        chosen = ([row for row in rows if row.correct][:SAMPLES_PER_VERDICT]
                  + [row for row in rows if not row.correct][:SAMPLES_PER_VERDICT])
        problems = problems if problems is not None else store.problems(run.run_id)
        picked += [Sample(benchmark, row.step, row.prompt_id, row.sample_index,
                          problems.get(row.prompt_id), row.response, row.token_count,
                          row.truncated, row.correct, row.mean_entropy) for row in chosen]
    return picked


# -- derived views ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Marker:
    """A curriculum event on a training curve."""

    step: int
    text: str
    change: bool  # True: the maximum response length changed; False: a gate decision


def stage_markers(run: RunData) -> list[Marker]:
    """Where the maximum response length changes, and every curriculum gate."""
    caps = run.histories.get(LENGTH_CAP_KEY, [])
    markers = [Marker(step, f"max length {before:g} → {after:g}", True)
               for (_, before), (step, after) in zip(caps, caps[1:], strict=False)
               if after != before]
    markers += [Marker(step, f"gate: max length {after:g} next", False)
                for step, after in run.histories.get(GATE_KEY, [])]
    return sorted(markers, key=lambda m: m.step)


def value_at(history: Sequence[tuple[int, float]], step: int) -> float | None:
    """The last value logged at or before step (None if there is none)."""
    before = [value for s, value in history if s <= step]
    return before[-1] if before else None


def flops_budget(runs: Sequence[RunData]) -> float | None:
    """The smallest final cumulative FLOPs among finished trained runs (among all trained runs
    if none finished: a cell that failed early would otherwise set a tiny budget)."""
    finals = [(run, run.histories[FLOPS_KEY][-1][1]) for run in runs
              if run.trained and run.histories.get(FLOPS_KEY)]
    pool = [flops for run, flops in finals if run.status == "FINISHED"] or [
        flops for _, flops in finals]
    return min(pool) if pool else None


def matched_step(run: RunData, budget: float) -> int | None:
    """The first step at which the run's cumulative FLOPs reach the budget (None: never)."""
    for step, flops in run.histories.get(FLOPS_KEY, []):
        if flops >= budget * (1 - 1e-9):
            return step
    return None


# -- SVG ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Frame:
    """Maps data coordinates to the pixels of one plot."""

    x_lo: float
    x_hi: float
    y_lo: float
    y_hi: float
    width: int = 560
    height: int = 320
    left: int = 64
    right: int = 18
    top: int = 16
    bottom: int = 46

    @classmethod
    def around(cls, xs: Sequence[float], ys: Sequence[float]) -> Frame:
        return cls(*_padded(xs), *_padded(ys))

    def px(self, x: float) -> float:
        span = self.width - self.left - self.right
        return self.left + (x - self.x_lo) / (self.x_hi - self.x_lo) * span

    def py(self, y: float) -> float:
        span = self.height - self.top - self.bottom
        return self.height - self.bottom - (y - self.y_lo) / (self.y_hi - self.y_lo) * span


@dataclass(frozen=True)
class Point:
    label: str
    x: float
    y: float
    colour: str


@dataclass(frozen=True)
class Line:
    label: str
    colour: str
    points: list[tuple[int, float]]


def _padded(values: Sequence[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.08 if hi > lo else (abs(lo) * 0.1 or 1.0)
    return lo - pad, hi + pad


def ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """About ``count`` round values between lo and hi."""
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    multipliers = (1, 2, 5, 10) if 1 <= raw < 10 else (1, 2, 2.5, 5, 10)  # steps: no 2.5
    step = next(m * magnitude for m in multipliers if m * magnitude >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def short(value: float) -> str:
    """A tick label: 0.25, 120, 2.6e11."""
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.3g}".replace("e+", "e")
    return f"{round(value, 10):g}"


def axes_svg(frame: Frame, x_label: str, y_label: str,
             x_ticks: Sequence[tuple[float, str]] | None = None) -> str:
    """Background, grid lines, tick labels and axis titles."""
    bottom, right = frame.height - frame.bottom, frame.width - frame.right
    parts = [f'<rect x="{frame.left}" y="{frame.top}" width="{right - frame.left}" '
             f'height="{bottom - frame.top}" fill="#fcfcfd" stroke="#d1d5db"/>']
    for y in ticks(frame.y_lo, frame.y_hi):
        py = frame.py(y)
        parts.append(f'<line x1="{frame.left}" x2="{right}" y1="{py:.1f}" y2="{py:.1f}" '
                     f'stroke="#e5e7eb"/><text x="{frame.left - 6}" y="{py + 4:.1f}" '
                     f'text-anchor="end">{short(y)}</text>')
    for x, text in x_ticks or [(x, short(x)) for x in ticks(frame.x_lo, frame.x_hi)]:
        px = frame.px(x)
        parts.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{frame.top}" y2="{bottom}" '
                     f'stroke="#e5e7eb"/><text x="{px:.1f}" y="{bottom + 16}" '
                     f'text-anchor="middle">{esc(text)}</text>')
    parts.append(f'<text x="{(frame.left + right) / 2:.0f}" y="{frame.height - 6}" '
                 f'text-anchor="middle" class="axis-title">{esc(x_label)}</text>')
    parts.append(f'<text transform="translate(14 {(frame.top + bottom) / 2:.0f}) rotate(-90)" '
                 f'text-anchor="middle" class="axis-title">{esc(y_label)}</text>')
    return "".join(parts)


def svg(frame: Frame, title: str, body: str) -> str:
    return (f'<svg class="plot" width="{frame.width}" height="{frame.height}" '
            f'viewBox="0 0 {frame.width} {frame.height}" role="img" aria-label="{esc(title)}">'
            f"<title>{esc(title)}</title>{body}</svg>")


def scatter_svg(points: Sequence[Point], x_label: str, y_label: str) -> str:
    """One labelled circle per point (hover shows the values)."""
    frame = Frame.around([p.x for p in points], [p.y for p in points])
    parts = [axes_svg(frame, x_label, y_label)]
    placed: list[tuple[float, float, float]] = []  # (left, right, baseline) of drawn labels
    for p in points:
        x, y = frame.px(p.x), frame.py(p.y)
        label_x, label_y, anchor = _label_place(x, y, len(p.label), frame, placed)
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="{p.colour}" '
                     f'fill-opacity="0.85" stroke="#fff"><title>{esc(p.label)}: {esc(x_label)} '
                     f"{p.x:.4g}, {esc(y_label)} {p.y:.4g}</title></circle>"
                     f'<text x="{label_x:.1f}" y="{label_y:.1f}" text-anchor="{anchor}">'
                     f"{esc(p.label)}</text>")
    return svg(frame, f"{y_label} vs {x_label}", "".join(parts))


def _label_place(x: float, y: float, chars: int, frame: Frame,
                 placed: list[tuple[float, float, float]]) -> tuple[float, float, str]:
    """Where a point's label goes: right of it (left near the right edge, so it is not cut
    off), above, or moved below when it would overlap a label already drawn."""
    width = 6.3 * chars  # about 11 px text
    near_right = x > 0.75 * frame.width
    left = x - 8 - width if near_right else x + 8
    for dy in (-7, 17, -19, 29, -31):
        box = (left, left + width, y + dy)
        if not any(b[0] < box[1] and box[0] < b[1] and abs(b[2] - box[2]) < 12 for b in placed):
            break
    placed.append(box)
    return (x - 8, box[2], "end") if near_right else (x + 8, box[2], "start")


def _segments(points: Sequence[tuple[int, float]]) -> list[list[tuple[int, float]]]:
    """Split a history where steps jump by more than twice the usual stride (a gap in logging,
    e.g. non-finite values that were not logged), so the gap is drawn as a gap."""
    if len(points) < 3:
        return [list(points)]
    stride = statistics.median(b[0] - a[0] for a, b in zip(points, points[1:], strict=False))
    segments = [[points[0]]]
    for before, point in zip(points, points[1:], strict=False):
        if point[0] - before[0] > 2 * stride:
            segments.append([])
        segments[-1].append(point)
    return segments


def _thin(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    stride = max(1, math.ceil(len(points) / MAX_CURVE_POINTS))
    return points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])


def lines_svg(lines: Sequence[Line], markers: Sequence[tuple[RunData, Marker]], x_label: str,
              y_label: str) -> str:
    """One polyline per run; curriculum length changes as dashed lines, gates as triangles."""
    frame = Frame.around([s for line in lines for s, _ in line.points],
                         [v for line in lines for _, v in line.points])
    parts = [axes_svg(frame, x_label, y_label)]
    parts += [_marker_svg(frame, run, marker) for run, marker in markers
              if frame.x_lo <= marker.step <= frame.x_hi]
    for line in lines:
        for segment in _segments(line.points):
            xy = " ".join(f"{frame.px(s):.1f},{frame.py(v):.1f}" for s, v in _thin(segment))
            parts.append(f'<polyline points="{xy}" fill="none" stroke="{line.colour}" '
                         f'stroke-width="1.6"><title>{esc(line.label)}</title></polyline>')
    return svg(frame, f"{y_label} by step", "".join(parts))


def arrows_svg(moves: Sequence[RLRun], x_key: str, y_key: str, x_label: str,
               y_label: str) -> str:
    """One arrow per RL run, from (x, y) before RL (hollow circle) to after (filled)."""
    pairs = [((rl.before[x_key], rl.before[y_key]), (rl.after[x_key], rl.after[y_key]), rl)
             for rl in moves]
    frame = Frame.around([p[i][0] for p in pairs for i in (0, 1)],
                         [p[i][1] for p in pairs for i in (0, 1)])
    parts = [axes_svg(frame, x_label, y_label)]
    placed: list[tuple[float, float, float]] = []
    for (x0, y0), (x1, y1), rl in pairs:
        ax, ay, bx, by = frame.px(x0), frame.py(y0), frame.px(x1), frame.py(y1)
        colour, label = rl.source.colour, rl.source.label
        tip = (f"<title>{esc(label)}: {esc(y_label)} {y0:.4g} → {y1:.4g}, {esc(x_label)} "
               f"{x0:.4g} → {x1:.4g}</title>")
        parts.append(f'<line x1="{ax:.1f}" y1="{ay:.1f}" x2="{bx:.1f}" y2="{by:.1f}" '
                     f'stroke="{colour}" stroke-width="1.8">{tip}</line>'
                     f'<circle cx="{ax:.1f}" cy="{ay:.1f}" r="5" fill="#fff" stroke="{colour}" '
                     f'stroke-width="2">{tip}</circle>'
                     f'<circle cx="{bx:.1f}" cy="{by:.1f}" r="6" fill="{colour}" '
                     f'stroke="#fff">{tip}</circle>')
        label_x, label_y, anchor = _label_place(bx, by, len(label), frame, placed)
        parts.append(f'<text x="{label_x:.1f}" y="{label_y:.1f}" text-anchor="{anchor}">'
                     f"{esc(label)}</text>")
    return svg(frame, f"{y_label} vs {x_label}, before → after RL", "".join(parts))


def _marker_svg(frame: Frame, run: RunData, marker: Marker) -> str:
    x, top, bottom = frame.px(marker.step), frame.top, frame.height - frame.bottom
    tip = f"<title>{esc(run.label)}, step {marker.step}: {esc(marker.text)}</title>"
    if marker.change:
        return (f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{bottom}" stroke="{run.colour}" '
                f'stroke-dasharray="5 3" stroke-width="1.2">{tip}</line>')
    return (f'<polygon points="{x - 4:.1f},{top} {x + 4:.1f},{top} {x:.1f},{top + 7}" '
            f'fill="{run.colour}">{tip}</polygon>')


def bars_svg(groups: Sequence[str], series: Sequence[tuple[str, str, list[float | None]]],
             y_label: str) -> str:
    """Grouped bars: one group per benchmark, one bar per run; a missing value has no bar."""
    values = [v for _, _, vs in series for v in vs if v is not None]
    frame = Frame(0, len(groups), 0, max([1.0, *values]) * 1.05)
    x_ticks = [(i + 0.5, name) for i, name in enumerate(groups)]
    parts = [axes_svg(frame, "benchmark", y_label, x_ticks)]
    band = frame.px(1) - frame.px(0)
    width = band * 0.8 / max(1, len(series))
    for j, (label, colour, vs) in enumerate(series):
        for i, value in enumerate(vs):
            if value is None:
                continue
            x, y = frame.px(i) + band * 0.1 + j * width, frame.py(value)
            parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" '
                         f'height="{frame.py(0) - y:.1f}" fill="{colour}"><title>{esc(label)}, '
                         f"{esc(groups[i])}: {value:.3f}</title></rect>")
    return svg(frame, f"{y_label} per benchmark", "".join(parts))


# -- HTML sections ------------------------------------------------------------------------------

def _td(value: float | None, spec: str) -> str:
    if value is None:
        return '<td class="missing" title="not recorded">–</td>'
    return f"<td>{format(value, spec)}</td>"


def _swatch(run: RunData) -> str:
    return f'<span class="swatch" style="background:{run.colour}"></span>{esc(run.label)}'


def figure(plot: str, caption: str, left_out: Sequence[str] = (), why: str = "") -> str:
    """A plot with its caption; runs left out are named in a visible note."""
    note = (f'<p class="note">Not plotted ({esc(why)}): {esc(", ".join(left_out))}.</p>'
            if left_out else "")
    return f"<figure>{plot}<figcaption>{esc(caption)}</figcaption>{note}</figure>"


def no_plot(text: str) -> str:
    return f'<div class="empty-plot"><p class="note">{esc(text)}</p></div>'


def overall_columns(k: int) -> list[tuple[str, str, str]]:
    """(header, metric key, format) of the results table's metric columns."""
    columns = [(f"Avg@{k}", f"eval/overall/avg_at_{k}", ".3f"),
               (f"Pass@{k}", f"eval/overall/pass_at_{k}", ".3f")]
    if k != 1:
        columns.append(("Avg@1", "eval/overall/avg_at_1", ".3f"))
    return columns + [("mean length", "eval/overall/response_length_mean", ".1f"),
                      ("truncated", "eval/overall/truncation_rate", ".1%"),
                      ("entropy", "eval/overall/entropy", ".3f"),
                      ("train FLOPs", FLOPS_KEY, ".2e"),
                      ("wall time (s)", WALL_KEY, ".0f")]


def results_section(study: Study) -> str:
    """The grid as a table, one group of rows per kind of run."""
    columns = overall_columns(study.k)
    heads = ["run", "status", "prefix", "λ", "curriculum",
             *(head for head, _, _ in columns)]
    rows = []
    for group, title in GROUPS.items():
        members = [run for run in study.runs if run.group == group]
        if members:
            rows.append(f'<tr class="group"><th colspan="{len(heads)}">{esc(title)}</th></tr>')
        for run in members:
            setting = [run.tags.get(t, "–") for t in ("prefix_source", "lambda", "curriculum")]
            rows.append(f'<tr class="run"><td>{_swatch(run)}</td><td>{esc(run.status)}</td>'
                        + "".join(f"<td>{esc(s)}</td>" for s in setting)
                        + "".join(_td(run.metric(key), spec) for _, key, spec in columns)
                        + "</tr>")
    head = "".join(f"<th>{esc(h)}</th>" for h in heads)
    return (f"<h2>Results</h2><p>Overall evaluation metrics at each run's last step (Avg@{study.k}"
            f" over the first {study.k} samples, unbiased Pass@{study.k}); prefix: who wrote "
            "the training prefixes; λ: weight on the reverse KL KL(q_student ‖ p_teacher); train "
            "FLOPs: the cumulative total at the last step; wall time: the training loop's.</p>"
            f'<div class="scroll"><table class="results"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def scatter_figure(runs: Sequence[RunData], x_key: str, y_key: str, x_label: str,
                   y_label: str, caption: str) -> str:
    """Avg@k against one metric; runs without either value are left out, by name."""
    points = [Point(r.label, r.metric(x_key), r.metric(y_key), r.colour) for r in runs
              if r.metric(x_key) is not None and r.metric(y_key) is not None]
    left_out = [r.label for r in runs if r.metric(x_key) is None or r.metric(y_key) is None]
    plot = scatter_svg(points, x_label, y_label) if points else no_plot(
        f"No run has both {x_key} and {y_key}.")
    return figure(plot, caption, left_out, f"no {x_key} or {y_key}")


def tradeoff_section(study: Study) -> str:
    """Avg@k against entropy, length and FLOPs, then the matched-FLOPs view."""
    k, avg = study.k, f"eval/overall/avg_at_{study.k}"
    trained = [run for run in study.runs if run.trained]
    figures = [
        scatter_figure(study.runs, "eval/overall/entropy", avg, "token entropy (nats, eval)",
                       f"Avg@{k}", "KL direction: accuracy vs entropy, at matched steps "
                       "(every run's last step)."),
        scatter_figure(study.runs, "eval/overall/response_length_mean", avg,
                       "mean response length (tokens, eval)", f"Avg@{k}",
                       "Accuracy vs mean response length, at matched steps."),
        scatter_figure(trained, FLOPS_KEY, avg, "train FLOPs (cumulative at the last step)",
                       f"Avg@{k}", "Prefix source: quality vs compute at matched steps — the "
                       "FLOPs each cell spent to train the same number of steps (reference "
                       "runs are not trained and are not shown)."),
        matched_flops_figure(study),
    ]
    return (f"<h2>Tradeoffs</h2><div class=\"figures\">{''.join(figures)}</div>"
            + matched_flops_table(study))


def matched_flops_figure(study: Study) -> str:
    """train/loss where every cell has spent the same FLOPs, against the step that took."""
    trained = [run for run in study.runs if run.trained]
    budget = flops_budget(trained)
    if budget is None:
        return figure(no_plot(f"No trained run has a {FLOPS_KEY} history."),
                      "Matched FLOPs: not available.")
    points, left_out = [], []
    for run in trained:
        step = matched_step(run, budget)
        loss = value_at(run.histories.get("train/loss", []), step) if step is not None else None
        if loss is None:
            left_out.append(run.label)
        else:
            points.append(Point(run.label, step, loss, run.colour))
    caption = (f"Matched FLOPs: each cell at the first logged step where its cumulative "
               f"{FLOPS_KEY} reaches {budget:.3g} (the smallest final FLOPs among finished cells)"
               ". x: that step; y: train/loss there — each cell's own objective (forward KL, "
               "reverse KL or a mixture), so compare levels only between cells of one objective. "
               f"Avg@{study.k} is not shown at matched FLOPs: cells are evaluated only at their "
               "last step.")
    plot = scatter_svg(points, "step at which the FLOPs budget is reached",
                       "train/loss at that step") if points else no_plot(
        "No cell has train/loss up to the budget.")
    return figure(plot, caption, left_out, "budget not reached or no train/loss history")


def matched_flops_table(study: Study) -> str:
    """Per-step training metrics of each cell at the matched-FLOPs step."""
    trained = [run for run in study.runs if run.trained]
    budget = flops_budget(trained)
    if budget is None:
        return ""
    rows = []
    for run in trained:
        step = matched_step(run, budget)
        values = [value_at(run.histories.get(key, []), step) if step is not None else None
                  for key in (FLOPS_KEY, *CURVE_KEYS)]
        rows.append(f"<tr><td>{_swatch(run)}</td>{_td(step, 'd')}"
                    + "".join(_td(v, ".3g") for v in values) + "</tr>")
    head = "".join(f"<th>{esc(h)}</th>" for h in ("cell", "step", *("cumulative FLOPs",
                                                                     *CURVE_KEYS)))
    return (f"<h3>At matched FLOPs ({budget:.3g})</h3><table class=\"matched\"><thead><tr>{head}"
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def curves_section(study: Study) -> str:
    """Training curves of every cell, curriculum events marked."""
    trained = [run for run in study.runs if run.trained]
    if not trained:
        return "<h2>Training curves</h2>" + no_plot("No trained runs in this study.")
    markers = [(run, marker) for run in trained for marker in stage_markers(run)]
    figures = []
    for key in CURVE_KEYS:
        lines = [Line(r.label, r.colour, r.histories[key]) for r in trained if r.histories.get(key)]
        left_out = [r.label for r in trained if not r.histories.get(key)]
        plot = lines_svg(lines, markers, "step", key) if lines else no_plot(f"No {key} history.")
        figures.append(figure(plot, f"{key} per logged step.", left_out, f"no {key} history"))
    legend = " ".join(f'<span class="legend">{_swatch(run)}</span>' for run in trained)
    events = (f"Dashed vertical lines: a cell's maximum response length changed "
              f"({LENGTH_CAP_KEY}); triangles: curriculum gate steps ({GATE_KEY}). " if markers
              else "No curriculum events in these runs. ")
    return (f"<h2>Training curves</h2><p>{events}train/loss is each cell's own objective, so "
            f"compare shapes rather than levels across KL directions.</p><p>{legend}</p>"
            f"<div class=\"figures\">{''.join(figures)}</div>")


def benchmark_section(study: Study) -> str:
    """Per-benchmark table (Avg@k, Pass@k, length, entropy) and Avg@k bars."""
    names, k = benchmarks(study.runs), study.k
    if not names:
        return "<h2>Per benchmark</h2>" + no_plot("No run has eval/<benchmark>/… metrics.")
    metrics = [(f"Avg@{k}", f"avg_at_{k}", ".3f"), (f"Pass@{k}", f"pass_at_{k}", ".3f"),
               ("length", "response_length_mean", ".1f"), ("entropy", "entropy", ".3f")]
    top = "".join(f'<th colspan="{len(metrics)}">{esc(b)}</th>' for b in names)
    sub = "".join(f"<th>{esc(h)}</th>" for _ in names for h, _, _ in metrics)
    rows = "".join(f"<tr><td>{_swatch(run)}</td>" + "".join(
        _td(run.metric(f"eval/{b}/{key}"), spec) for b in names for _, key, spec in metrics)
        + "</tr>" for run in study.runs)
    series = [(run.label, run.colour, [run.metric(f"eval/{b}/avg_at_{k}") for b in names])
              for run in study.runs]
    left_out = [run.label for run, (_, _, vs) in zip(study.runs, series, strict=True)
                if all(v is None for v in vs)]
    bars = figure(bars_svg(names, series, f"Avg@{k}"), f"Avg@{k} per benchmark.", left_out,
                  "no per-benchmark metrics")
    return (f'<h2>Per benchmark</h2><table class="benchmarks"><thead><tr><th rowspan="2">run'
            f"</th>{top}</tr><tr>{sub}</tr></thead><tbody>{rows}</tbody></table>"
            f'<div class="figures">{bars}</div>')


def sample_html(sample: Sample) -> str:
    """One response, escaped; very long ones are cut with a note."""
    verdict = {True: "correct", False: "incorrect", None: "ungraded"}[sample.correct]
    text = sample.response
    if len(text) > MAX_RESPONSE_CHARS:
        text = text[:MAX_RESPONSE_CHARS] + f"\n… (cut: {len(sample.response)} characters)"
    meta = [sample.benchmark, f"{sample.prompt_id} #{sample.sample_index}", verdict,
            f"{sample.token_count} tokens"] + (["truncated"] if sample.truncated else []) + (
        [f"entropy {sample.mean_entropy:.3f}"] if sample.mean_entropy is not None else [])
    problem = (f'<p class="problem">{esc(sample.problem)}</p>' if sample.problem else "")
    return (f'<div class="sample {verdict}"><div class="meta">{esc(" · ".join(meta))}</div>'
            f"{problem}<pre>{esc(text)}</pre></div>")


def samples_section(study: Study) -> str:
    """A card per run with a few correct and incorrect responses."""
    if study.store_url is None:
        return "<h2>Sample responses</h2>" + no_plot("No rollout store: no samples to show.")
    cards = []
    for run in study.runs:
        body = "".join(sample_html(s) for s in run.samples) or (
            f'<p class="note">No evaluation samples of run {esc(run.run_id)} in the store.</p>')
        cards.append(f'<div class="card"><h3>{_swatch(run)}</h3>{body}</div>')
    return (f"<h2>Sample responses</h2><p>From the rollout store ({esc(study.store_url)}), the "
            "run's last evaluated step: up to "
            f"{SAMPLES_PER_VERDICT} correct and {SAMPLES_PER_VERDICT} other responses per "
            f"benchmark.</p><div class=\"cards\">{''.join(cards)}</div>")


def rl_columns(k: int) -> list[tuple[str, str, str]]:
    """(header, metric key, format) of the before → after columns."""
    keys = [name.format(k=k) for name in RL_EVAL_NAMES]
    return [(header, f"eval/overall/{key}", spec) for header, key, spec in zip(
        (f"Avg@{k}", f"Pass@{k}", "entropy", "mean length"), keys,
        (".3f", ".3f", ".3f", ".1f"), strict=True)]


def _before_after_td(rl: RLRun, key: str, spec: str) -> str:
    before, after = rl.before.get(key), rl.after.get(key)
    if before is None and after is None:
        return _td(None, spec)
    text = " → ".join("–" if v is None else format(v, spec) for v in (before, after))
    delta = (f' <span class="delta">({after - before:+{spec}})</span>'
             if before is not None and after is not None else "")
    return f"<td>{esc(text)}{delta}</td>"


def rl_section(study: Study) -> str:
    """Before RL → after RL per cell: a table, an accuracy-vs-entropy arrow plot, reward curves.

    The method's second question: is the best distilled student also the best start for RL?"""
    title = "<h2>RL after distillation</h2>"
    if not study.rl:
        return title + ('<p class="note">No GRPO runs start from this study\'s cells yet: run '
                        "<code>distill rl</code> (the rl_after_distill flow) to add them.</p>")
    ks = {rl.k for rl in study.rl}
    k = max(ks)
    columns = rl_columns(k)
    heads = ["source cell", "RL run", "status", "GRPO steps",
             *(f"{head} before → after" for head, _, _ in columns)]
    rows = "".join(
        f'<tr class="rl"><td>{_swatch(rl.source)}</td>'
        f'<td title="{esc(rl.run_id)}">{esc(rl.run_id[:8])}</td>'
        f"<td>{esc(rl.status)}</td>{_td(rl.steps, 'd')}"
        + "".join(_before_after_td(rl, key, spec) for _, key, spec in rl_columns(rl.k))
        + "</tr>" for rl in study.rl)
    table = ('<div class="scroll"><table class="rl"><thead><tr>'
             + "".join(f"<th>{esc(h)}</th>" for h in heads)
             + f"</tr></thead><tbody>{rows}</tbody></table></div>")
    avg, entropy = f"eval/overall/avg_at_{k}", "eval/overall/entropy"
    moves = [rl for rl in study.rl if rl.k == k and all(
        key in values for values in (rl.before, rl.after) for key in (avg, entropy))]
    left_out = [rl.source.label for rl in study.rl if rl not in moves]
    arrows = (arrows_svg(moves, entropy, avg, "token entropy (nats, eval)", f"Avg@{k}")
              if moves else no_plot("No RL run has Avg@k and entropy both before and after."))
    rewards = [Line(rl.source.label, rl.source.colour, rl.reward) for rl in study.rl if rl.reward]
    reward_plot = (lines_svg(rewards, [], "GRPO step", RL_REWARD_KEY) if rewards
                   else no_plot(f"No {RL_REWARD_KEY} history."))
    figures = [
        figure(arrows, f"Each cell's student before RL (hollow) → after RL (filled): Avg@{k} "
               "against token entropy. The method's finding to check: low-entropy (reverse-KL) "
               "students gain less from RL than forward-KL ones.", left_out,
               "not evaluated before and after"),
        figure(reward_plot, "Mean accuracy reward of the GRPO groups per step.",
               [rl.source.label for rl in study.rl if not rl.reward], "no reward history"),
    ]
    mixed = (f'<p class="note">The RL runs report different k ({sorted(ks)}): the plot uses '
             f"k={k}.</p>" if len(ks) > 1 else "")
    legend = " ".join(f'<span class="legend">{_swatch(rl.source)}</span>' for rl in study.rl)
    return (f"{title}<p>The same GRPO budget from each distilled student, evaluated before and "
            f"after (the newest RL run per cell; hover a run id for all of it).</p>{mixed}"
            f"{table}<p>{legend}</p>"
            f'<div class="figures">{"".join(figures)}</div>')


def missing_notes(study: Study) -> list[str]:
    """One sentence per run that lacks evaluation metrics or a training history."""
    notes = list(study.notes)
    for run in study.runs:
        gaps = []
        if run.metric(f"eval/overall/avg_at_{study.k}") is None:
            gaps.append(f"evaluation metrics (eval/overall/avg_at_{study.k})")
        if run.trained and not run.histories.get("train/loss"):
            gaps.append("training history (train/loss)")
        if gaps:
            notes.append(f"{run.label} ({run.status}, run {run.run_id}): no {' and no '.join(gaps)}"
                         " — shown as '–' in the tables and left out of the plots that need it.")
    return notes


def header_html(study: Study) -> str:
    notes = "".join(f'<p class="note">{esc(n)}</p>' for n in missing_notes(study))
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (f"<h1>Tradeoff report: {esc(study.title)}</h1><p class=\"source\">{len(study.runs)} "
            f"runs from {esc(study.tracking_uri)}, generated {generated}.</p>"
            + (f'<div class="notes">{notes}</div>' if notes else ""))


CSS = """
body{font-family:"DejaVu Sans",system-ui,sans-serif;margin:20px auto;max-width:1220px;
 padding:0 12px;color:#1f2937;font-size:14px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:18px;border-bottom:1px solid #e5e7eb;
 padding-bottom:4px;margin-top:28px}h3{font-size:14px;margin:4px 0 8px}
.source{color:#6b7280;margin-top:0}
table{border-collapse:collapse;font-size:12.5px;margin:8px 0}
.scroll{overflow-x:auto}
th,td{padding:3px 7px;border-bottom:1px solid #eef0f3;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}
tr.group th{background:#f3f4f6;text-align:left}th[colspan]{text-align:center}
td.missing{color:#b45309;text-align:center}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px}
.legend{margin-right:14px;white-space:nowrap}
.notes{background:#fff7ed;border:1px solid #fdba74;border-radius:6px;padding:2px 12px}
.note{color:#9a3412;font-size:12.5px}
.figures{display:flex;flex-wrap:wrap;gap:12px 24px}
figure{margin:0;width:570px}figcaption{font-size:12px;color:#4b5563}
.empty-plot{width:560px;height:80px;border:1px dashed #d1d5db;display:flex;align-items:center;
 justify-content:center}
svg.plot text{font-size:11px;fill:#374151}svg.plot .axis-title{font-size:12px;fill:#111827}
.cards{display:grid;grid-template-columns:1fr 1fr;gap:12px}
.card{border:1px solid #e5e7eb;border-radius:6px;padding:8px 10px}
.sample{border-left:3px solid #9ca3af;padding-left:8px;margin:6px 0}
.sample.correct{border-left-color:#16a34a}.sample.incorrect{border-left-color:#dc2626}
.delta{color:#6b7280}code{background:#f3f4f6;padding:0 3px}
.meta{font-size:11.5px;color:#6b7280}.problem{margin:2px 0;font-size:12.5px}
pre{white-space:pre-wrap;word-break:break-word;max-height:9em;overflow:auto;background:#f9fafb;
 margin:2px 0;padding:4px 6px;font-size:11.5px}
"""


def render_page(study: Study) -> str:
    """The whole page: no scripts, no outside references."""
    body = "".join([header_html(study), results_section(study), tradeoff_section(study),
                    curves_section(study), benchmark_section(study), rl_section(study),
                    samples_section(study)])
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>'
            f"{esc(study.title)}</title><style>{CSS}</style></head><body>{body}</body></html>\n")


# -- entry points -------------------------------------------------------------------------------

def _check_database(tracking_uri: str) -> None:
    """Refuse a SQLite path that does not exist (opening it would create an empty database)."""
    database = _sqlite_file(tracking_uri)
    if database is not None and not database.is_file():
        raise FileNotFoundError(f"no MLflow database at {database}: run a flow first (`distill "
                                "grid configs/demo.yaml`) or pass --tracking-uri / set "
                                "MLFLOW_TRACKING_URI")


def _tracker(tracking_uri: str) -> Tracker:
    _check_database(tracking_uri)
    database = _sqlite_file(tracking_uri)
    return Tracker(tracking_uri, artifacts_dir=database.parent if database else None)


def build_report(tracking_uri: str | None = None, experiment: str | None = None,
                 parent_run_id: str | None = None, run_ids: Sequence[str] | None = None,
                 store_url: str | None = None, output: str | Path = Path("report.html")) -> Path:
    """Write the tradeoff report of a study as one self-contained HTML file; returns its path.

    Args:
        tracking_uri: MLflow; default ``$MLFLOW_TRACKING_URI`` or the artifact directory's
            ``mlflow.db``.
        experiment: report its newest grid run (or all its runs if it has no grid run).
        parent_run_id: report this grid run's children instead.
        run_ids: report exactly these runs instead.
        store_url: the rollout store; default ``distill_lab.db`` beside a SQLite MLflow
            database. A default store that does not exist only drops the sample section.
        output: the HTML file to write (its folder is created).
    """
    tracking_uri = tracking_uri or default_tracking_uri()
    with _tracker(tracking_uri) as tracker:
        study = load_study(tracker, experiment, parent_run_id, run_ids)
    attach_samples(study, store_url)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render_page(study), encoding="utf-8")
    return output


def attach_report(tracking_uri: str | None, parent_run_id: str, html_path: str | Path) -> None:
    """Log the page as ``report.html`` of the parent run, so it opens in the MLflow UI."""
    html_path = Path(html_path)
    if not html_path.is_file():
        raise FileNotFoundError(f"attach_report: {html_path} does not exist; build it first "
                                "with build_report")
    with _tracker(tracking_uri or default_tracking_uri()) as tracker, \
            tempfile.TemporaryDirectory() as folder:
        page = Path(folder) / "report.html"
        shutil.copyfile(html_path, page)
        tracker.log_artifact(parent_run_id, page)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dashboards.report``: build the report (and optionally attach it)."""
    parser = argparse.ArgumentParser(prog="python -m dashboards.report",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", help="report this experiment's newest grid run")
    parser.add_argument("--run", dest="parent_run_id", metavar="PARENT_ID",
                        help="report this grid run (its child runs) instead")
    parser.add_argument("--runs", nargs="+", metavar="RUN_ID", help="report exactly these runs")
    parser.add_argument("--tracking-uri", help="MLflow (default: $MLFLOW_TRACKING_URI, else "
                        "sqlite:///<artifacts>/mlflow.db)")
    parser.add_argument("--store", help="rollout store URL (default: distill_lab.db beside the "
                        "MLflow database)")
    parser.add_argument("--output", type=Path, default=Path("report.html"),
                        help="HTML file to write (default: report.html)")
    parser.add_argument("--attach", action="store_true",
                        help="also log the page as report.html of the grid run")
    args = parser.parse_args(argv)
    if not (args.experiment or args.parent_run_id or args.runs):
        parser.error("say which runs to report: --experiment NAME, --run PARENT_ID or --runs ID …")
    tracking_uri = args.tracking_uri or default_tracking_uri()
    try:
        path = build_report(tracking_uri, args.experiment, args.parent_run_id, args.runs,
                            args.store, args.output)
        if args.attach:
            _attach_from_cli(tracking_uri, args, path)
    except (ValueError, FileNotFoundError, ConnectionError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


def _attach_from_cli(tracking_uri: str, args: argparse.Namespace, path: Path) -> None:
    parent = args.parent_run_id
    if parent is None and args.experiment:
        with _tracker(tracking_uri) as tracker:
            parent = newest_grid(tracker, args.experiment)
    if parent is None:
        raise ValueError("--attach needs a grid run: pass --run PARENT_ID or an --experiment "
                         "that has one")
    attach_report(tracking_uri, parent, path)
    print(f"attached as report.html of run {parent}")


if __name__ == "__main__":
    sys.exit(main())
