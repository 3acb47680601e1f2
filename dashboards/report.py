"""The tradeoff report of a study: one self-contained HTML page, readable offline and in MLflow.

The study is read by ``tasks.study``, its 95 % intervals come from ``tasks.stats`` (a bootstrap
over problems and seeds of the store's per-sample rows), and its plots are matplotlib figures
inlined as SVG by ``dashboards.charts``, every mark carrying hover text that names its run. No
JavaScript, no outside references. Sections: results (a row per run, grouped as references, grid
cells, λ mixes and curriculum runs); paired differences of every cell against a baseline cell;
tradeoffs at matched steps (Avg@k against entropy, length and train FLOPs) and at matched FLOPs;
training curves with curriculum events; per benchmark; RL after distillation (GRPO runs tagged
``source_run``: before → after, with the paired change); escaped example responses.

A run without some metric reads "–" and is named in a note; a cell without store rows is drawn
without an interval, saying so: missing data never raises. With ``attach`` every figure is also
logged (PNG) to the study's parent run, beside ``report.html``.

    python -m dashboards.report --experiment demo [--run PARENT_ID] [--output report.html]
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import math
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from matplotlib.ticker import MaxNLocator

from dashboards import charts
from dashboards.charts import Chart
from tasks import stats
from tasks.artifacts import artifact_root
from tasks.eval_metrics import (
    AVG_AT_K,
    ENTROPY,
    HEADLINE,
    RESPONSE_LENGTH,
    EvalMetric,
    shown_in,
    with_rows,
)
from tasks.files import atomic_write_text
from tasks.store import RolloutStore, default_url
from tasks.study import (
    GROUPS,
    Response,
    Study,
    StudyRun,
    followups,
    headline_k,
    read_study,
    responses,
    samples_by_seed,
)
from tasks.tables import GOLD_NLL_LEGEND, GREEDY_LEGEND
from tasks.tracking import Tracker, default_tracking_uri

CURVE_KEYS = ("train/loss", "train/entropy", "train/response_length")
PRODUCTS_FLOPS_KEY = "train/total_flops_with_products"
FLOPS_KEY = "train/total_flops"  # cumulative: the history at step s is the FLOPs spent so far
WALL_KEY = "time/train_total"
LENGTH_CAP_KEY = "train/max_response_length"  # changes where the curriculum moves a rung
GATE_KEY = "curriculum/length_after"  # logged only at curriculum gate steps
HISTORY_KEYS = (*CURVE_KEYS, FLOPS_KEY, PRODUCTS_FLOPS_KEY, LENGTH_CAP_KEY, GATE_KEY)
RL_REWARD_KEY = "rl/reward_mean"
GROUP_TITLES = dict(zip(GROUPS, ("references", "grid cells", "λ mixes", "curriculum runs"),
                        strict=True))
STARTING_STUDENT = "student (start)"  # the grid flow's reference run of the untrained student
SAMPLES_PER_VERDICT = 2  # correct and incorrect responses shown per run and benchmark
MAX_RESPONSE_CHARS = 1200
MAX_LABELLED = 12  # more cells than this: points are identified by hovering only
CELL_COLOURS = ("#4e79a7", "#f28e2b", "#e15759", "#59a14f", "#b07aa1", "#76b7b2", "#edc948",
                "#ff9da7", "#9c755f", "#17becf")
REFERENCE_COLOURS = ("#222222", "#8c8c8c", "#555555", "#b0b0b0")
esc = html.escape


@dataclass(frozen=True)
class Metric:
    """A plotted or tabled quantity: its MLflow key, its tasks.stats metric (None: no
    per-problem rows, e.g. FLOPs), its label and number format; greedy: its rows are each
    problem's greedy response, kept apart from the samples."""

    key: str
    name: str | None
    label: str
    spec: str = ".3f"
    k: int = 1
    greedy: bool = False


def eval_metric(entry: EvalMetric, k: int, benchmark: str = "overall") -> Metric:
    """An evaluation metric of tasks.eval_metrics as the page shows it, at k, on a benchmark."""
    return Metric(entry.logged(k, benchmark), entry.name if entry.per_problem else None,
                  entry.heading(k), entry.spec, k, entry.greedy)


def eval_metrics(k: int, benchmark: str = "overall", tables: str = "full") -> list[Metric]:
    """The evaluation metrics a full (or a brief) table shows, in table order."""
    return [eval_metric(entry, k, benchmark) for entry in shown_in(tables)]


# -- what the page shows: read once, then rendered ---------------------------------------------

@dataclass
class Report:
    """The study as the page shows it, and what rendering accumulates: the charts drawn,
    notes, and per-problem values (each computed once)."""

    study: Study  # runs ordered by group
    colours: dict[str, str]  # cell label -> colour
    baseline: str | None  # the cell label differences are taken against
    rl: list[tuple[StudyRun, StudyRun]]  # (source run, its newest GRPO run)
    examples: dict[str, tuple[Response, ...]]  # run id -> responses to show
    notes: list[str]  # shown at the top of the page
    charts: list[Chart] = field(default_factory=list)
    cache: dict[tuple, stats.ProblemValues | None] = field(default_factory=dict)  # values()
    findings: dict | None = None  # the parent run's findings.json (the grid flow's conclusion)
    readiness: dict | None = None  # the parent run's readiness.json (checked before training)

    @property
    def k(self) -> int:
        return self.study.k


def read_report(tracker: Tracker, experiment: str | None, parent_run_id: str | None,
                run_ids: Sequence[str] | None, store_url: str | None,
                baseline: str | None = None) -> Report:
    """The study (histories and store rows), the newest RL run of each cell, example responses."""
    url, notes = resolve_store(tracker.tracking_uri, store_url)
    store = RolloutStore(url) if url else None
    try:
        study = read_study(tracker, parent_run_id=parent_run_id, experiment=experiment,
                           run_ids=run_ids, store=store, history_keys=HISTORY_KEYS)
        if not study.runs:
            raise ValueError(f"run {parent_run_id} has no child runs: pass the parent run of a "
                             "grid study (tag study=grid), or --runs ID … for single runs")
        study = dataclasses.replace(study, runs=tuple(sorted(
            study.runs, key=lambda run: GROUPS.index(run.group))))  # stable within a group
        rl = []
        for run in (r for r in study.runs if r.trained):
            found = followups(tracker, run, store, (RL_REWARD_KEY, "eval/overall/*"))
            if len(found) > 1:
                notes.append(f"{run.label}: {len(found)} RL runs started from it; the RL section "
                             f"shows the newest ({found[-1].run_id}).")
            rl += [(run, found[-1])] if found else []
        examples = ({run.run_id: responses(store, run, SAMPLES_PER_VERDICT)
                     for run in study.runs} if store else {})
        parent = study.parent.run_id if study.parent else None
        findings = tracker.read_json(parent, "findings.json") if parent else None
        readiness = tracker.read_json(parent, "readiness.json") if parent else None
    finally:
        if store is not None:
            store.close()
    if readiness and not readiness.get("ready", True):
        notes.insert(0, "Readiness check before training: NOT READY — " + "; ".join(
            f"{name}: {text}" for name, text in readiness["shortfalls"].items())
            + ". The study ran anyway (readiness: warn); read its verdicts with that in mind.")
    return Report(study, colours(study), choose_baseline(study, baseline), rl, examples, notes,
                  findings=findings, readiness=readiness)


def _sqlite_file(url: str) -> Path | None:
    if not url.startswith("sqlite:///"):
        return None
    return Path(url.removeprefix("sqlite:///").split("?")[0]).resolve()


def resolve_store(tracking_uri: str, store_url: str | None) -> tuple[str | None, list[str]]:
    """(the store URL to read or None, notes): by default ``distill_lab.db`` beside a SQLite
    MLflow database (else in the artifact directory); a missing default is a note, a missing
    explicit one an error."""
    database = _sqlite_file(tracking_uri)
    url = store_url or default_url(database.parent if database else artifact_root())
    path = _sqlite_file(url)
    if path is not None and not path.is_file():
        if store_url:
            raise FileNotFoundError(f"no rollout store at {url} ({path} does not exist): pass "
                                    "the distill_lab.db the flows wrote (--store sqlite:///PATH)")
        return None, [f"No rollout store at {url}: no intervals and no sample responses "
                      "(pass --store URL)."]
    return url, []


def colours(study: Study) -> dict[str, str]:
    """A colour per cell label: greys for references, the palette for trained cells."""
    cells = study.cells()
    references = [label for label, runs in cells.items() if runs[0].reference]
    trained = [label for label in cells if label not in references]
    return ({label: REFERENCE_COLOURS[i % len(REFERENCE_COLOURS)]
             for i, label in enumerate(references)}
            | {label: CELL_COLOURS[i % len(CELL_COLOURS)] for i, label in enumerate(trained)})


def choose_baseline(study: Study, baseline: str | None) -> str | None:
    """The named cell, else the starting student if the study has it, else the first trained
    cell (else the first cell)."""
    cells = study.cells()
    if baseline is not None:
        if baseline not in cells:
            raise ValueError(f"baseline {baseline!r} is not a cell of this study; its cells: "
                             f"{', '.join(cells)}")
        return baseline
    if STARTING_STUDENT in cells:
        return STARTING_STUDENT
    return next((label for label, runs in cells.items() if runs[0].trained),
                next(iter(cells), None))


# -- intervals and charts, shared by the sections -----------------------------------------------

def values(report: Report, runs: Sequence[StudyRun], metric: Metric,
           step: int | None = None) -> stats.ProblemValues | None:
    """Per-problem values of the runs' stored samples (seeds pooled; each run's last evaluated
    step unless step is given); None without rows, or with rows that cannot give them (noted)."""
    key = (tuple(r.run_id for r in runs), metric.key, step)
    if key not in report.cache:
        report.cache[key] = None
        benchmark = metric.key.split("/")[1]
        by_seed = samples_by_seed(runs, None if benchmark == "overall" else benchmark, step,
                                  greedy=metric.greedy)
        try:
            if by_seed and metric.name:
                report.cache[key] = stats.problem_values(by_seed, metric.name, metric.k)
        except ValueError as error:
            report.notes.append(f"{runs[0].label}: no interval for {metric.key} ({error}).")
    return report.cache[key]


def interval(report: Report, runs: Sequence[StudyRun], metric: Metric,
             step: int | None = None) -> stats.Interval | None:
    """The 95 % interval of the runs' metric; a note when one run's stored samples do not give
    the number it logged to MLflow (pooled seeds need not: entropy weighs their tokens)."""
    found = values(report, runs, metric, step)
    if found is None:
        return None
    logged = runs[0].metric(metric.key)
    if len(runs) == 1 and step is None and logged is not None and not math.isclose(
            found.estimate, logged, rel_tol=1e-6, abs_tol=1e-9):
        report.notes.append(f"{who(runs[0])}: the store's samples give {metric.key} = "
                            f"{found.estimate:.4g}, MLflow has {logged:.4g}; the interval is of "
                            "the stored samples.")
    return stats.interval(found)


def difference(report: Report, runs: Sequence[StudyRun], baseline: Sequence[StudyRun],
               metric: Metric, steps: tuple[int | None, int | None] = (None, None)
               ) -> stats.Interval | None:
    """The paired interval of runs − baseline (each at its step), None without rows."""
    cell, base = values(report, runs, metric, steps[0]), values(report, baseline, metric, steps[1])
    try:
        return None if cell is None or base is None else stats.paired_difference(cell, base)
    except ValueError as error:
        report.notes.append(f"{runs[0].label} − {baseline[0].label}: {error}.")
        return None


def figure_html(report: Report, chart: Chart | None, title: str, caption: str,
                left_out: Sequence[str] = (), why: str = "", empty: str = "") -> str:
    """A chart (or, without one, the empty text) with its caption and who was left out."""
    if chart is not None:
        report.charts.append(chart)
    plot = chart.svg(title) if chart is not None else no_plot(empty)
    note = (f'<p class="note">Not plotted ({esc(why)}): {esc(", ".join(left_out))}.</p>'
            if left_out else "")
    return f"<figure>{plot}<figcaption>{esc(caption)}</figcaption>{note}</figure>"


def who(run: StudyRun) -> str:
    """A run as notes name it: its label, and its seed when not 0."""
    return run.label + (f" (seed {run.seed})" if run.seed else "")


def fmt_interval(interval: stats.Interval | None, spec: str, signed: bool = False) -> str:
    sign = "+" if signed else ""
    return f"[{interval.low:{sign}{spec}}, {interval.high:{sign}{spec}}]" if interval else ""


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def no_plot(text: str) -> str:
    return f'<div class="empty-plot"><p class="note">{esc(text)}</p></div>'


def _td(value: float | None, spec: str, interval: stats.Interval | None = None) -> str:
    if value is None:
        return '<td class="missing" title="not recorded">–</td>'
    bounds = f'<br><span class="ci">{fmt_interval(interval, spec)}</span>' if interval else ""
    return f"<td>{format(value, spec)}{bounds}</td>"


def swatch(report: Report, label: str) -> str:
    return (f'<span class="swatch" style="background:{report.colours[label]}"></span>'
            f"{esc(label)}")


def legend(report: Report, runs: Sequence[StudyRun]) -> str:
    return "<p>" + " ".join(f'<span class="legend">{swatch(report, label)}</span>'
                            for label in dict.fromkeys(run.label for run in runs)) + "</p>"


# -- the results table and paired differences ---------------------------------------------------

def overall_columns(k: int) -> list[Metric]:
    """The results table's metric columns: the Markdown results table's (tasks.tables)."""
    columns = eval_metrics(k)
    if k != 1:  # avg@1 after avg@k and pass@k: the single-sample accuracy every k shares
        columns.insert(2, eval_metric(AVG_AT_K, 1))
    return [*columns, Metric(FLOPS_KEY, None, "train FLOPs", ".2e"),
            Metric(WALL_KEY, None, "wall time (s)", ".0f")]


def legend_html() -> str:
    """What greedy accuracy and the gold NLL split tell (the tables' legend, tasks.tables)."""
    return (f'<p class="legend-text"><b>{esc(GREEDY_LEGEND)}.</b> '
            f"<b>{esc(GOLD_NLL_LEGEND)}.</b> A cell that only sharpens (lower entropy) can "
            "raise Avg@k at temperature 1 while its greedy accuracy falls and its gold NLL "
            "rises; one that learnt raises greedy accuracy and lowers the gold NLL of the "
            "digits.</p>")


def results_section(report: Report) -> str:
    """One row per run, grouped; Avg@k and greedy accuracy with their 95 % intervals over the
    run's problems; the legend of greedy and gold NLL."""
    columns, k = overall_columns(report.k), report.k
    with_interval = {entry.logged(k) for entry in HEADLINE}
    heads = ["run", "status", "seed", "prefix", "λ", "curriculum", *(c.label for c in columns)]
    rows = []
    for group, title in GROUP_TITLES.items():
        members = [run for run in report.study.runs if run.group == group]
        if members:
            rows.append(f'<tr class="group"><th colspan="{len(heads)}">{esc(title)}</th></tr>')
        for run in members:
            setting = [run.tags.get(t, "–") for t in ("prefix_source", "lambda", "curriculum")]
            tds = [_td(run.metric(c.key), c.spec, interval(report, [run], c)
                       if c.key in with_interval else None) for c in columns]
            rows.append(f'<tr class="run"><td>{swatch(report, run.label)}</td><td>'
                        f"{esc(run.status)}</td><td>{run.seed}</td>"
                        + "".join(f"<td>{esc(s)}</td>" for s in setting) + "".join(tds)
                        + "</tr>")
    return (f"<h2>Results</h2><p>Overall evaluation metrics at each run's last step (Avg@{k} "
            f"over the first {k} samples, unbiased Pass@{k}, greedy accuracy), with Avg@{k}'s "
            "and greedy accuracy's 95 % intervals over the run's problems where the store has "
            "its responses; gold NLL in nats per token; prefix: who wrote the training "
            "prefixes; λ: weight on the reverse KL KL(q_student ‖ p_teacher); train FLOPs: the "
            "cumulative total at the last step; wall time: the training loop's.</p>"
            + legend_html() + table("results", heads, rows))


def table(name: str, heads: Sequence[str], rows: Sequence[str]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in heads)
    return (f'<div class="scroll"><table class="{name}"><thead><tr>{head}</tr></thead><tbody>'
            f'{"".join(rows)}</tbody></table></div>')


SIDES = {"reproduced": "above", "opposite": "below", "inconclusive": "holds"}


def difference_td(found: stats.Interval | None, spec: str) -> str:
    """Δ and its interval, shaded by where the interval lies (verdict for "higher")."""
    if found is None:
        return '<td class="missing" title="no per-problem rows to pair">–</td>'
    side = SIDES[stats.verdict(found, "higher")]
    return (f'<td class="{side}" title="the interval {side} 0">{found.estimate:+{spec}}<br>'
            f'<span class="ci">{fmt_interval(found, spec, signed=True)}</span></td>')


def differences_section(report: Report) -> str:
    """Each cell minus the baseline, paired by seed and problem, with 95 % intervals; a forest
    plot of the Avg@k, greedy accuracy and entropy differences."""
    title, base = "<h2>Paired differences vs baseline</h2>", report.baseline
    cells = report.study.cells()
    if base is None or len(cells) < 2:
        return title + no_plot("Fewer than two cells: nothing to compare.")
    metrics = [eval_metric(entry, report.k) for entry in with_rows()]
    found = {label: [difference(report, runs, cells[base], m) for m in metrics]
             for label, runs in cells.items() if label != base}
    rows = [f'<tr class="difference"><td>{swatch(report, label)}</td><td>{len(cells[label])}'
            "</td>" + "".join(difference_td(d, m.spec) for d, m in zip(
                intervals, metrics, strict=True)) + "</tr>" for label, intervals in found.items()]
    count = len(found) * len(metrics)
    missing = [label for label, intervals in found.items() if not any(intervals)]
    return (f"{title}<p>Each cell minus <b>{esc(base)}</b>, per (seed, problem) pair, with the "
            "95 % interval of a bootstrap over problems and seeds. Green: the interval lies above"
            f" 0; red: below; white: it holds 0. This table makes {count} comparisons at 95 % "
            f"each: about {count / 20:.1f} intervals may exclude 0 by chance alone, so a claim "
            "names its comparison before looking.</p>"
            + table("differences", ["cell", "runs", *(f"Δ {m.label}" for m in metrics)], rows)
            + (f'<p class="note">No paired rows in the store (no interval): '
               f'{esc(", ".join(missing))}.</p>' if missing else "")
            + f'<div class="figures">{forest_figure(report, found, metrics)}</div>')


def forest_figure(report: Report, found: dict[str, list], metrics: list[Metric]) -> str:
    """Δ Avg@k, Δ greedy accuracy and Δ entropy per cell with their intervals, 0 marked: side
    by side, sharpening (Avg@k up, entropy down, greedy not up) reads apart from learning."""
    panels = {entry.name for entry in (*HEADLINE, ENTROPY)}
    shown = [(i, m) for i, m in enumerate(metrics) if m.name in panels]
    drawn = [label for label, intervals in found.items() if any(intervals[i] for i, _ in shown)]
    caption = (f"Difference to {report.baseline} with its 95 % interval; the dashed line is no "
               "difference. A bar that crosses it is no evidence either way.")
    if not drawn:
        return figure_html(report, None, "", caption,
                           empty="No cell has paired per-problem rows with the baseline.")
    chart = Chart.new("differences", len(shown), (3.6 * len(shown), 1.0 + 0.35 * len(drawn)),
                      fit=True)
    for ax, (i, metric) in zip(chart.axes, shown, strict=True):
        for y, label in enumerate(reversed(drawn)):
            if (d := found[label][i]) is not None:
                charts.point(chart, ax, d.estimate, y, report.colours[label],
                             f"{label} − {report.baseline}: Δ {metric.label} {d.estimate:+.4g} "
                             f"{fmt_interval(d, '.4g', signed=True)}", x_interval=d)
        ax.axvline(0, color="#6b7280", linestyle="--", linewidth=1)
        ax.set(yticks=range(len(drawn)), yticklabels=drawn[::-1], ylim=(-0.6, len(drawn) - 0.4))
        ax.xaxis.set_major_locator(MaxNLocator(5))
        charts.style(ax, f"Δ {metric.label} vs {report.baseline}", "")
    return figure_html(report, chart, "paired differences vs baseline", caption)


# -- tradeoffs at matched steps and matched FLOPs -----------------------------------------------

def scatter_figure(report: Report, name: str, runs: Sequence[StudyRun], x: Metric, y: Metric,
                   caption: str) -> str:
    """y against x, a point per cell (pooled over its seeds) with its 95 % intervals, and each
    seed's own point when a cell has several; runs without either value are named."""
    cells: dict[str, list[StudyRun]] = {}
    for run in runs:
        if run.metric(x.key) is not None and run.metric(y.key) is not None:
            cells.setdefault(run.label, []).append(run)
    left_out = [who(run) for run in runs if run.label not in cells or run not in cells[run.label]]
    why = f"no {x.key} or {y.key}"
    if not cells:
        return figure_html(report, None, name, caption, left_out, why,
                           f"No run has both {x.key} and {y.key}.")
    chart = Chart.new(name)
    ax = chart.axes[0]
    without, placed = [], []
    for label, members in cells.items():
        xi, yi = interval(report, members, x), interval(report, members, y)
        cx = xi.estimate if xi else _mean([r.metric(x.key) for r in members])
        cy = yi.estimate if yi else _mean([r.metric(y.key) for r in members])
        for run in members if len(members) > 1 else []:
            charts.point(chart, ax, run.metric(x.key), run.metric(y.key), report.colours[label],
                         f"{who(run)} [{run.run_id}]: {y.label} {run.metric(y.key):.4g}, "
                         f"{x.label} {run.metric(x.key):.4g}", kind="seed-point")
        without += [label] if (x.name and not xi) or (y.name and not yi) else []
        runs_text = f"{len(members)} run{'s' * (len(members) > 1)}: " + ", ".join(
            r.run_id[:8] for r in members)
        tip = (f"{label} ({runs_text}): {y.label} {cy:.4g} {fmt_interval(yi, '.4g')}, "
               f"{x.label} {cx:.4g} {fmt_interval(xi, '.4g')}")
        charts.point(chart, ax, cx, cy, report.colours[label], " ".join(tip.split()),
                     x_interval=xi, y_interval=yi)
        placed.append((cx, cy, label))
    charts.labels(ax, placed if len(placed) <= MAX_LABELLED else [])
    charts.style(ax, x.label, y.label)
    no_bar = (f" No interval (no per-problem rows in the store): {', '.join(without)}."
              if without else "")
    return figure_html(report, chart, f"{y.label} vs {x.label}", caption + no_bar, left_out, why)


def flops_budget(runs: Sequence[StudyRun]) -> float | None:
    """The smallest final cumulative FLOPs among finished trained runs (among all trained runs
    if none finished: a cell that failed early would otherwise set a tiny budget)."""
    finals = [(run, run.history(FLOPS_KEY)[-1][1]) for run in runs
              if run.trained and run.history(FLOPS_KEY)]
    pool = [flops for run, flops in finals if run.status == "FINISHED"] or [
        flops for _, flops in finals]
    return min(pool) if pool else None


def matched_step(run: StudyRun, budget: float) -> int | None:
    """The first step at which the run's cumulative FLOPs reach the budget (None: never)."""
    return next((step for step, flops in run.history(FLOPS_KEY) if flops >= budget * (1 - 1e-9)),
                None)


def value_at(history: Sequence[tuple[int, float]], step: int | None) -> float | None:
    """The last value logged at or before step (None if there is none)."""
    before = [value for s, value in history if step is not None and s <= step]
    return before[-1] if before else None


def tradeoff_section(report: Report) -> str:
    """Avg@k against entropy, length and FLOPs, then the matched-FLOPs view."""
    runs, avg = report.study.runs, eval_metric(AVG_AT_K, report.k)
    entropy = dataclasses.replace(eval_metric(ENTROPY, report.k),
                                  label="token entropy (nats, eval)")
    length = dataclasses.replace(eval_metric(RESPONSE_LENGTH, report.k),
                                 label="mean response length (tokens, eval)")
    flops = Metric(FLOPS_KEY, None, "train FLOPs (cumulative at the last step)")
    figures = [
        scatter_figure(report, "avg_vs_entropy", runs, entropy, avg, "KL direction: accuracy vs "
                       "entropy, at matched steps (every run's last step); bars: 95 % intervals."),
        scatter_figure(report, "avg_vs_length", runs, length, avg,
                       "Accuracy vs mean response length, at matched steps."),
        scatter_figure(report, "avg_vs_flops", [r for r in runs if r.trained], flops, avg,
                       "Prefix source: quality vs compute at matched steps — the FLOPs each cell "
                       "spent to train the same number of steps (reference runs are not trained "
                       "and are not shown)."),
        matched_flops_figure(report),
    ]
    return (f"<h2>Tradeoffs</h2><div class=\"figures\">{''.join(figures)}</div>"
            + matched_flops_table(report))


def flops_at(run: StudyRun, step: int) -> float | None:
    """The run's cumulative FLOPs at a step, its share of the teacher products included when it
    logged one (train/total_flops_with_products), else training alone."""
    return (value_at(run.history(PRODUCTS_FLOPS_KEY), step)
            or value_at(run.history(FLOPS_KEY), step))


def _curves(report: Report) -> dict[str, list[tuple[float, int, stats.Interval]]]:
    """Per trained cell: (mean FLOPs over its seeds, step, Avg@k interval) at every step it was
    evaluated at."""
    avg = eval_metric(AVG_AT_K, report.k)
    curves: dict[str, list] = {}
    for label, runs in report.study.cells().items():
        if not runs[0].trained or runs[0].tags.get("stage") == "rl":
            continue
        for step in sorted(set.intersection(*(set(r.evaluated_steps()) for r in runs))):
            flops = [f for r in runs if (f := flops_at(r, step)) is not None]
            found = values(report, runs, avg, step)
            if flops and found is not None:
                curves.setdefault(label, []).append(
                    (sum(flops) / len(flops), step, stats.interval(found)))
    return curves


def matched_flops_figure(report: Report) -> str:
    """Avg@k against cumulative FLOPs (teacher products shared out) at every evaluated step."""
    curves = _curves(report)
    if not curves:
        return figure_html(report, None, "", "Matched FLOPs: not available.",
                           empty="No trained cell has evaluations with a FLOPs history.")
    chart = Chart.new("avg_vs_flops_curve")
    ax = chart.axes[0]
    for label, points in curves.items():
        colour = report.colours[label]
        charts.line(chart, ax, [(f, i.estimate) for f, _, i in points], colour, label)
        for flops, step, found in points:
            charts.point(chart, ax, flops, found.estimate, colour,
                         f"{label}: step {step}, {flops:.3g} FLOPs, {AVG_AT_K.heading(report.k)} "
                         f"{found.estimate:.3f} [{found.low:.3f}, {found.high:.3f}]",
                         y_interval=found)
    charts.style(ax, "cumulative FLOPs (training + share of teacher rollouts)",
                 f"{AVG_AT_K.heading(report.k)} (95 % interval)")
    caption = (f"Avg@{report.k} at every evaluated step against the FLOPs spent by then: "
               "training (student generation, teacher scoring, student updates) plus each "
               "teacher-prefix run's share of the teacher rollouts it trains on. Compare cells at "
               "one x: matched FLOPs; at one step: matched steps.")
    return figure_html(report, chart, "Avg@k at matched FLOPs", caption)


def matched_flops_table(report: Report) -> str:
    """Each cell at the largest evaluated step within the smallest final budget of any cell."""
    curves = _curves(report)
    if not curves:
        return ""
    budget = min(points[-1][0] for points in curves.values())
    rows = []
    for label, points in curves.items():
        within = [p for p in points if p[0] <= budget * (1 + 1e-9)]
        if not within:
            rows.append(f"<tr><td>{swatch(report, label)}</td>" + _td(None, "d") * 3 + "</tr>")
            continue
        flops, step, found = within[-1]
        rows.append(f"<tr><td>{swatch(report, label)}</td>{_td(step, 'd')}{_td(flops, '.3g')}"
                    f"{_td(found.estimate, '.3f', found)}</tr>")
    return (f"<h3>At matched FLOPs (budget {budget:.3g}: the smallest final spend of any cell)"
            "</h3>" + table("matched", ["cell", "evaluated step", "FLOPs by then",
                                        f"{AVG_AT_K.heading(report.k)} [95 %]"], rows))


# -- training curves and per benchmark ----------------------------------------------------------

def stage_markers(run: StudyRun) -> list[tuple[int, str, bool]]:
    """(step, text, length changed?) where the maximum response length changes, and at every
    curriculum gate."""
    caps = run.history(LENGTH_CAP_KEY)
    markers = [(step, f"max length {before:g} → {after:g}", True)
               for (_, before), (step, after) in zip(caps, caps[1:], strict=False)
               if after != before]
    markers += [(step, f"gate: max length {after:g} next", False)
                for step, after in run.history(GATE_KEY)]
    return sorted(markers)


def lines_chart(report: Report, name: str, series: Sequence[tuple[StudyRun, Sequence]],
                y_label: str, x_label: str = "step") -> Chart:
    """One line per run (hover names it), with each run's curriculum events."""
    chart = Chart.new(name)
    ax = chart.axes[0]
    for run, points in series:
        colour = report.colours[run.label]
        charts.line(chart, ax, points, colour, f"{who(run)} [{run.run_id}]")
        for step, text, change in stage_markers(run):
            mark = (ax.axvline(step, color=colour, linestyle="--", linewidth=1.1) if change else
                    ax.plot([step], [1.0], marker="v", color=colour, markersize=6, clip_on=False,
                            transform=ax.get_xaxis_transform())[0])
            chart.mark(mark, "marker", f"{who(run)}, step {step}: {text}")
    charts.style(ax, x_label, y_label)
    return chart


def curves_section(report: Report) -> str:
    """Training curves of every trained run, curriculum events marked."""
    trained = [run for run in report.study.runs if run.trained]
    if not trained:
        return "<h2>Training curves</h2>" + no_plot("No trained runs in this study.")
    figures = []
    for key in CURVE_KEYS:
        series = [(run, run.history(key)) for run in trained if run.history(key)]
        chart = lines_chart(report, key.replace("/", "_"), series, key) if series else None
        figures.append(figure_html(report, chart, f"{key} by step", f"{key} per logged step.",
                                   [who(r) for r in trained if not r.history(key)],
                                   f"no {key} history", f"No {key} history."))
    events = (f"Dashed vertical lines: a cell's maximum response length changed "
              f"({LENGTH_CAP_KEY}); triangles: curriculum gate steps ({GATE_KEY}). "
              if any(map(stage_markers, trained)) else "No curriculum events in these runs. ")
    return (f"<h2>Training curves</h2><p>{events}train/loss is each cell's own objective, so "
            "compare shapes rather than levels across KL directions. Hover a line for its run."
            f"</p>{legend(report, trained)}<div class=\"figures\">{''.join(figures)}</div>")


def benchmark_section(report: Report) -> str:
    """Per-benchmark table (the brief tables' metrics: Avg@k, Pass@k, greedy, length, entropy,
    gold NLL) and Avg@k bars with intervals."""
    names, k = report.study.benchmarks(), report.k
    shown = eval_metrics(k, tables="brief")
    if not names:  # runs log eval/<benchmark>/… only beside another benchmark
        return ("<h2>Per benchmark</h2>" + no_plot(
            "One benchmark: its numbers are the results table's (eval/overall/…)."))
    top = "".join(f'<th colspan="{len(shown)}">{esc(b)}</th>' for b in names)
    sub = "".join(f"<th>{esc(m.label)}</th>" for _ in names for m in shown)
    rows = "".join(f"<tr><td>{swatch(report, run.label)}</td>" + "".join(
        _td(run.metric(metric.key), metric.spec) for b in names
        for metric in eval_metrics(k, b, tables="brief")) + "</tr>"
        for run in report.study.runs)
    return (f'<h2>Per benchmark</h2><div class="scroll"><table class="benchmarks"><thead><tr>'
            f'<th rowspan="2">run</th>{top}</tr><tr>{sub}</tr></thead><tbody>{rows}</tbody>'
            "</table></div>"
            f'<div class="figures">{benchmark_bars(report, names)}</div>')


def benchmark_bars(report: Report, names: list[str]) -> str:
    """Grouped bars: a group per benchmark, a bar per cell (its seeds pooled)."""
    k = report.k
    cells = {label: runs for label, runs in report.study.cells().items()
             if any(r.metric(AVG_AT_K.logged(k, b)) is not None
                    for r in runs for b in names)}
    left_out = [label for label in report.study.cells() if label not in cells]
    chart = Chart.new("avg_per_benchmark")
    ax = chart.axes[0]
    width = 0.8 / max(1, len(cells))
    for j, (label, runs) in enumerate(cells.items()):
        for i, benchmark in enumerate(names):
            metric = eval_metric(AVG_AT_K, k, benchmark)
            have = [r for r in runs if r.metric(metric.key) is not None]
            if not have:
                continue
            found, x = interval(report, have, metric), i - 0.4 + (j + 0.5) * width
            value = found.estimate if found else _mean([r.metric(metric.key) for r in have])
            tip = f"{label}, {benchmark}: {metric.label} {value:.3f} {fmt_interval(found, '.3f')}"
            charts.bar(chart, ax, x, value, width * 0.95, report.colours[label], tip.strip(), found)
    ax.set(xticks=range(len(names)), xticklabels=names, ylim=(0, 1.05))
    charts.style(ax, "benchmark", AVG_AT_K.heading(k))
    return figure_html(report, chart, f"Avg@{k} per benchmark", f"Avg@{k} per benchmark and "
                       "cell, with 95 % intervals where the store has the cell's samples.",
                       left_out, "no per-benchmark metrics")


# -- RL after distillation ----------------------------------------------------------------------

def before_after(rl: StudyRun, key: str) -> tuple[float | None, float | None, int | None]:
    """(before, after, GRPO steps) of an RL run's evaluation metric: the first logged value
    (step 0) and the last, with its step; after is None with a single evaluation."""
    history = rl.history(key)
    if len(history) < 2:
        return (history[0][1] if history else None), None, None
    return history[0][1], history[-1][1], history[-1][0]


def before_after_td(rl: StudyRun, metric: Metric) -> str:
    before, after, _ = before_after(rl, metric.key)
    if before is None and after is None:
        return _td(None, metric.spec)
    text = " → ".join("–" if v is None else format(v, metric.spec) for v in (before, after))
    delta = (f' <span class="delta">({after - before:+{metric.spec}})</span>'
             if before is not None and after is not None else "")
    return f"<td>{esc(text)}{delta}</td>"


def rl_section(report: Report) -> str:
    """Before RL → after RL per cell: a table with the paired change, arrows, reward curves.

    The method's second question: is the best distilled student also the best start for RL?"""
    title = "<h2>RL after distillation</h2>"
    if not report.rl:
        return title + ('<p class="note">No GRPO runs start from this study\'s cells yet: run '
                        "<code>distill rl</code> (the rl_after_distill flow) to add them.</p>")
    ks = {headline_k(rl.metrics) for _, rl in report.rl}
    rows = []
    for source, rl in report.rl:
        k = headline_k(rl.metrics)
        steps = rl.evaluated_steps()  # the store's: Δ pairs the last evaluation with the first
        change = (difference(report, [rl], [rl], eval_metric(AVG_AT_K, k), (steps[-1], steps[0]))
                  if len(steps) > 1 else None)
        rows.append(f'<tr class="rl"><td>{swatch(report, source.label)}</td>'
                    f'<td title="{esc(rl.run_id)}">{esc(rl.run_id[:8])}</td>'
                    f"<td>{esc(rl.status)}</td>{_td(before_after(rl, AVG_AT_K.logged(k))[2], 'd')}"
                    + "".join(before_after_td(rl, m) for m in eval_metrics(k, tables="brief"))
                    + difference_td(change, ".3f") + "</tr>")
    heads = ["source cell", "RL run", "status", "GRPO steps",
             *(f"{m.label} before → after" for m in eval_metrics(max(ks), tables="brief")),
             f"Δ {AVG_AT_K.heading(max(ks))}"]
    mixed = (f'<p class="note">The RL runs report different k ({sorted(ks)}): the plot uses '
             f"k={max(ks)}.</p>" if len(ks) > 1 else "")
    return (f"{title}<p>The same GRPO budget from each distilled student, evaluated before and "
            "after on the same problems and sample seeds (the newest RL run per cell; hover a "
            "run id for all of it). Δ: after − before, paired per problem, with its 95 % "
            f"interval.</p>{mixed}{table('rl', heads, rows)}"
            f"{legend(report, [source for source, _ in report.rl])}"
            f'<div class="figures">{rl_arrows(report, max(ks))}{rl_rewards(report)}</div>')


def rl_arrows(report: Report, k: int) -> str:
    """Avg@k against entropy, an arrow per RL run from before (hollow) to after (filled)."""
    avg, entropy = eval_metric(AVG_AT_K, k), eval_metric(ENTROPY, k)
    moves = [(source, rl, [before_after(rl, m.key)[:2] for m in (entropy, avg)])
             for source, rl in report.rl]
    left_out = [who(source) for source, rl, ends in moves
                if headline_k(rl.metrics) != k or None in ends[0] + ends[1]]
    moves = [move for move in moves if who(move[0]) not in left_out]
    caption = (f"Each cell's student before RL (hollow) → after RL (filled): Avg@{k} against "
               "token entropy, with 95 % intervals where the store has the samples. The method's "
               "finding to check: low-entropy (reverse-KL) students gain less from RL than "
               "forward-KL ones.")
    if not moves:
        return figure_html(report, None, "", caption, left_out, "not evaluated before and after",
                           "No RL run has Avg@k and entropy both before and after.")
    chart = Chart.new("rl_arrows")
    ax = chart.axes[0]
    for source, rl, ((x0, x1), (y0, y1)) in moves:
        colour, steps = report.colours[source.label], rl.evaluated_steps()
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops={"arrowstyle": "->", "color": colour, "linewidth": 1.6})
        for x, y, at, when in ((x0, y0, 0, "before"), (x1, y1, -1, "after")):
            stored = len(steps) > 1  # the store has both evaluations: intervals at each end
            charts.point(chart, ax, x, y, colour, f"{who(source)} {when} RL [{rl.run_id}]: "
                         f"{avg.label} {y:.4g}, {entropy.label} {x:.4g}",
                         hollow=when == "before",
                         x_interval=interval(report, [rl], entropy, steps[at]) if stored else None,
                         y_interval=interval(report, [rl], avg, steps[at]) if stored else None)
    charts.labels(ax, [(ends[0][1], ends[1][1], who(source)) for source, _, ends in moves])
    charts.style(ax, "token entropy (nats, eval)", avg.label)
    return figure_html(report, chart, f"Avg@{k} vs entropy, before → after RL", caption,
                       left_out, "not evaluated before and after")


def rl_rewards(report: Report) -> str:
    series = [(source, rl.history(RL_REWARD_KEY)) for source, rl in report.rl
              if rl.history(RL_REWARD_KEY)]
    chart = lines_chart(report, "rl_reward", series, RL_REWARD_KEY, "GRPO step") if series else None
    return figure_html(report, chart, "RL reward", "Mean accuracy reward of the GRPO groups per "
                       "step.", [who(s) for s, rl in report.rl if not rl.history(RL_REWARD_KEY)],
                       "no reward history", f"No {RL_REWARD_KEY} history.")


# -- responses, notes, the page -----------------------------------------------------------------

def response_html(response: Response) -> str:
    """One response, escaped; very long ones are cut with a note."""
    verdict = {True: "correct", False: "incorrect", None: "ungraded"}[response.correct]
    text = response.text
    if len(text) > MAX_RESPONSE_CHARS:
        text = text[:MAX_RESPONSE_CHARS] + f"\n… (cut: {len(response.text)} characters)"
    meta = [response.benchmark, f"{response.problem_id} #{response.sample_index}", verdict,
            f"{response.length} tokens"] + (["truncated"] if response.truncated else []) + (
        [f"entropy {response.entropy:.3f}"] if response.entropy is not None else [])
    problem = f'<p class="problem">{esc(response.problem)}</p>' if response.problem else ""
    return (f'<div class="sample {verdict}"><div class="meta">{esc(" · ".join(meta))}</div>'
            f"{problem}<pre>{esc(text)}</pre></div>")


def samples_section(report: Report) -> str:
    """A card per run with a few correct and incorrect responses."""
    store = report.study.store_url
    if store is None:
        return "<h2>Sample responses</h2>" + no_plot("No rollout store: no samples to show.")
    cards = [f'<div class="card"><h3>{swatch(report, run.label)}</h3>'
             + ("".join(map(response_html, report.examples.get(run.run_id, ()))) or
                f'<p class="note">No evaluation samples of run {esc(run.run_id)} in the store.</p>')
             + "</div>" for run in report.study.runs]
    return (f"<h2>Sample responses</h2><p>From the rollout store ({esc(store)}), the run's last "
            f"evaluated step: up to {SAMPLES_PER_VERDICT} correct and {SAMPLES_PER_VERDICT} "
            f"other responses per benchmark.</p><div class=\"cards\">{''.join(cards)}</div>")


def missing_notes(report: Report) -> list[str]:
    """One sentence per run that lacks evaluation metrics or a training history."""
    notes = []
    for run in report.study.runs:
        gaps = ([f"evaluation metrics (eval/overall/avg_at_{report.k})"]
                if run.metric(f"eval/overall/avg_at_{report.k}") is None else [])
        gaps += ["training history (train/loss)"] if run.trained and not run.history(
            "train/loss") else []
        if gaps:
            notes.append(f"{who(run)} ({run.status}, run {run.run_id}): no "
                         f"{' and no '.join(gaps)} — shown as '–' in the tables and left out of "
                         "the plots that need it.")
    return notes


def header_html(report: Report) -> str:
    notes = dict.fromkeys([*missing_notes(report), *report.notes])  # once each, in order
    seeds = ", ".join(map(str, sorted({run.seed for run in report.study.runs})))
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (f"<h1>Tradeoff report: {esc(report.study.title)}</h1><p class=\"source\">"
            f"{len(report.study.runs)} runs ({len(report.study.cells())} cells, training seeds "
            f"{seeds}) from {esc(report.study.tracking_uri)}, generated {generated}. Intervals: "
            f"95 % percentile bootstrap over problems and seeds ({stats.RESAMPLES:,} resamples, "
            f"seed {stats.SEED}); hover a mark for its run.</p>"
            + (f'<div class="notes">{"".join(f"<p class=note>{esc(n)}</p>" for n in notes)}</div>'
               if notes else ""))


CSS = """
body{font-family:"DejaVu Sans",system-ui,sans-serif;margin:20px auto;max-width:1220px;
 padding:0 12px;color:#1f2937;font-size:14px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:18px;border-bottom:1px solid #e5e7eb;
 padding-bottom:4px;margin-top:28px}h3{font-size:14px;margin:4px 0 8px}
.source{color:#6b7280;margin-top:0}table{border-collapse:collapse;font-size:12.5px;margin:8px 0}
.scroll{overflow-x:auto}
th,td{padding:3px 7px;border-bottom:1px solid #eef0f3;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}
tr.group th{background:#f3f4f6;text-align:left}th[colspan]{text-align:center}
td.missing{color:#b45309;text-align:center}.ci{color:#6b7280;font-size:11px}
td.above{background:#ecfdf5}td.below{background:#fef2f2}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px}
.legend{margin-right:14px;white-space:nowrap}
.notes{background:#fff7ed;border:1px solid #fdba74;border-radius:6px;padding:2px 12px}
.note{color:#9a3412;font-size:12.5px}.figures{display:flex;flex-wrap:wrap;gap:12px 24px}
figure{margin:0;max-width:780px}figcaption{font-size:12px;color:#4b5563;max-width:560px}
svg.plot{height:auto;max-width:100%}
.empty-plot{width:560px;height:80px;border:1px dashed #d1d5db;display:flex;align-items:center;
 justify-content:center}
.cards{display:grid;grid-template-columns:1fr 1fr;gap:12px}
.card{border:1px solid #e5e7eb;border-radius:6px;padding:8px 10px}
.sample{border-left:3px solid #9ca3af;padding-left:8px;margin:6px 0}
.sample.correct{border-left-color:#16a34a}.sample.incorrect{border-left-color:#dc2626}
.delta{color:#6b7280}code{background:#f3f4f6;padding:0 3px}
.legend-text{font-size:12.5px;color:#374151}
.meta{font-size:11.5px;color:#6b7280}.problem{margin:2px 0;font-size:12.5px}
pre{white-space:pre-wrap;word-break:break-word;max-height:9em;overflow:auto;background:#f9fafb;
 margin:2px 0;padding:4px 6px;font-size:11.5px}
"""


def findings_section(report: Report) -> str:
    """The study's claims (C0–C5): each effect with its 95 % interval and verdict, as the grid
    flow computed them (findings.json of the parent run); nothing for a study without them."""
    if not report.findings:
        return ""
    rows = []
    for claim in report.findings["claims"]:
        verdict = claim["verdict"] or "not tested"
        rows.append(f'<tr class="group"><th colspan="4">{esc(claim["id"])}: '
                    f'{esc(claim["claim"])} — <b>{esc(verdict)}</b>'
                    f'{" (" + esc(claim["note"]) + ")" if claim["note"] else ""}</th></tr>')
        for effect in claim["effects"]:
            cls = {"reproduced": "above", "opposite": "below"}.get(effect["verdict"] or "", "")
            rows.append(f"<tr><td>{esc(effect['name'])}</td><td>{effect['estimate']:+.3f}</td>"
                        f'<td class="ci">[{effect["low"]:+.3f}, {effect["high"]:+.3f}]</td>'
                        f'<td class="{cls}">{esc(effect["verdict"] or "reported")}</td></tr>')
    return ("<h2>Findings</h2><p>Each effect is a paired contrast over the same problems and "
            "sample seeds with the training seeds resampled too; its verdict is read from the "
            "95 % interval (reproduced: entirely on the claimed side; opposite: entirely on the "
            "other; inconclusive: it holds 0). A claim is reproduced only if all its judged "
            "effects are.</p>"
            + table("findings", ["effect", "estimate", "95 % interval", "verdict"], rows))


def render_page(report: Report) -> str:
    """The whole page: no scripts, no outside references; the charts drawn go to report.charts."""
    with charts.drawing():
        sections = [findings_section(report), results_section(report),
                    differences_section(report),
                    tradeoff_section(report), curves_section(report), benchmark_section(report),
                    rl_section(report), samples_section(report)]
    body = header_html(report) + "".join(sections)  # the header last: sections add notes
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>'
            f"{esc(report.study.title)}</title><style>{CSS}</style></head><body>{body}</body>"
            "</html>\n")


# -- entry points -------------------------------------------------------------------------------

def _tracker(tracking_uri: str) -> Tracker:
    """A tracker on an existing MLflow; a SQLite path that does not exist is refused (opening
    it would create an empty database)."""
    database = _sqlite_file(tracking_uri)
    if database is not None and not database.is_file():
        raise FileNotFoundError(f"no MLflow database at {database}: run a flow first (`distill "
                                "grid configs/demo.yaml`) or pass --tracking-uri / set "
                                "MLFLOW_TRACKING_URI")
    return Tracker(tracking_uri, artifacts_dir=database.parent if database else None)


def build_report(tracking_uri: str | None = None, experiment: str | None = None,
                 parent_run_id: str | None = None, run_ids: Sequence[str] | None = None,
                 store_url: str | None = None, output: str | Path = Path("report.html"),
                 baseline: str | None = None, attach: bool = False) -> Path:
    """Write the tradeoff report of a study as one self-contained HTML file; returns its path.

    The study: run_ids, else parent_run_id's children, else experiment's newest grid (or all
    its runs). tracking_uri: default ``$MLFLOW_TRACKING_URI`` or the artifact directory's
    ``mlflow.db``. store_url: default ``distill_lab.db`` beside a SQLite MLflow database; a
    default store that does not exist only drops intervals and samples. baseline: the cell the
    paired differences are taken against (default: the starting student, else the first
    trained cell). attach: also log every figure (``report/<name>.png``) and the page
    (``report.html``) to the study's parent run.
    """
    with _tracker(tracking_uri or default_tracking_uri()) as tracker:
        report = read_report(tracker, experiment, parent_run_id, run_ids, store_url, baseline)
        parent = report.study.parent
        if attach and parent is None:
            raise ValueError("--attach needs a grid run: pass --run PARENT_ID or an "
                             "--experiment that has one")
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output, render_page(report))
        for chart in report.charts if attach else []:
            tracker.log_figure(parent.run_id, chart.figure, f"report/{chart.name}.png")
        if attach:
            _log_page(tracker, parent.run_id, output)
    return output


def _log_page(tracker: Tracker, run_id: str, html_path: Path) -> None:
    with tempfile.TemporaryDirectory() as folder:
        page = Path(folder) / "report.html"
        shutil.copyfile(html_path, page)
        tracker.log_artifact(run_id, page)


def attach_report(tracking_uri: str | None, parent_run_id: str, html_path: str | Path) -> None:
    """Log an already built page as ``report.html`` of the parent run (its figures: build with
    ``attach=True`` instead)."""
    html_path = Path(html_path)
    if not html_path.is_file():
        raise FileNotFoundError(f"attach_report: {html_path} does not exist; build it first "
                                "with build_report")
    with _tracker(tracking_uri or default_tracking_uri()) as tracker:
        _log_page(tracker, parent_run_id, html_path)


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
    parser.add_argument("--baseline", metavar="CELL", help="the cell paired differences are "
                        f"taken against (default: {STARTING_STUDENT!r}, else the first cell)")
    parser.add_argument("--output", type=Path, default=Path("report.html"),
                        help="HTML file to write (default: report.html)")
    parser.add_argument("--attach", action="store_true", help="also log the page and its "
                        "figures to the grid run (report.html, report/*.png)")
    args = parser.parse_args(argv)
    if not (args.experiment or args.parent_run_id or args.runs):
        parser.error("say which runs to report: --experiment NAME, --run PARENT_ID or --runs ID …")
    try:
        path = build_report(args.tracking_uri, args.experiment, args.parent_run_id, args.runs,
                            args.store, args.output, args.baseline, args.attach)
    except (ValueError, FileNotFoundError, ConnectionError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{path}{' (attached to the grid run with its figures)' * args.attach}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
