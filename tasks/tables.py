"""The Markdown tables flows print and attach: a study's results, RL before → after, a night's
evaluation beside its students' study numbers.

Their metric columns are the entries of ``tasks.eval_metrics`` (labels, formats, which table
shows which, in the table's order). Every table shows greedy accuracy beside Avg@k and Pass@k,
and the gold-solution NLL split into answer digits and the rest (``tasks.evaluate``), with
``LEGEND`` under it: a cell that only sharpens its distribution can raise Avg@k while its greedy
accuracy falls and its gold NLL rises.
"""

from __future__ import annotations

import math

from tasks.eval_metrics import AVG_AT_K, HEADLINE, EvalMetric, shown_in
from tasks.stats import interval, paired_difference, problem_values
from tasks.study import samples_by_seed

# What a reader needs to read the two metrics that tell learning from sharpening; the HTML
# report shows the same words.
GREEDY_LEGEND = ("greedy: accuracy of the single most likely answer (greedy decoding) — "
                 "sharpening alone cannot raise it")
GOLD_NLL_LEGEND = ("gold NLL, digits / other: how surprised the model is by the right digits / "
                   "by the rest of a reference worked solution (mean nats per token); learning "
                   "lowers the first")
LEGEND = f"{GREEDY_LEGEND}. {GOLD_NLL_LEGEND}."


def results_table(rows: list[dict], ks: list[int]) -> str:
    """The study's table as Markdown: one row per cell (or reference model), overall metrics,
    then the legend.

    rows: {"cell": label, "metrics": eval metrics, "train": final train metrics or {}}.
    """
    k = max(ks)
    # avg@1 after avg@k and pass@k: the single-sample accuracy every k shares
    columns = [(m.logged(k), m.heading(k), m.spec) for m in shown_in("full")]
    columns.insert(2, (AVG_AT_K.logged(1), AVG_AT_K.heading(1), AVG_AT_K.spec))
    head = ["cell", *(label for _, label, _ in columns), "train FLOPs", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        m, t = row["metrics"], row.get("train", {})
        cells_ = [row["cell"], *(_fmt(m.get(key), spec) for key, _, spec in columns),
                  _fmt(t.get("train/total_flops"), ".2e"),
                  _fmt(t.get("time/train_total"), ".0f")]
        lines.append("| " + " | ".join(cells_) + " |")
    return "\n".join(lines) + f"\n\n{LEGEND}"


# A night's Avg@k against its study's: with the same procedure (the evaluation identity: grader,
# prompt, sampling settings and seed, problems, benchmark files), the same weights and the same
# machine and backend, tasks.rollout reseeds every batch from (seed, batch index), so the samples
# and the number repeat exactly; the tolerance only absorbs float summation. Any larger
# difference is flagged: other weights, or another machine, torch or backend (whose sampled
# tokens can differ; each flipped sample moves Avg@k by 1 / (problems × k)).
AGREEMENT_TOLERANCE = 1e-9
AGREES, DIFFERS, OTHER_PROCEDURE, NO_STUDY = "=", "⚠ differs", "≠ procedure", "no study number"
NIGHTLY_LEGEND = (
    f"study: the Avg@k its source run logged for the same model; Δ = tonight − study. "
    f"{AGREES}: equal (same procedure, |Δ| ≤ {AGREEMENT_TOLERANCE:g}); {DIFFERS}: same "
    f"procedure, different number — other weights, or another machine, torch or backend; "
    f"{OTHER_PROCEDURE}: evaluated differently from the study (settings, grader, benchmark "
    f"files), Δ is not a discrepancy; {NO_STUDY}: a given model, or its run logged no Avg@k. "
    "settings: where tonight's settings came from (its study's, or the flow's where its run "
    "recorded none)")


def agreement(tonight: float | None, study: float | None, same_procedure: bool
              ) -> tuple[float | None, str]:
    """(tonight − study, its flag; see NIGHTLY_LEGEND)."""
    if tonight is None or study is None:
        return None, NO_STUDY
    delta = tonight - study
    if not same_procedure:
        return delta, OTHER_PROCEDURE
    return delta, AGREES if abs(delta) <= AGREEMENT_TOLERANCE else DIFFERS


def nightly_table(rows: list[dict]) -> str:
    """A night's evaluation as Markdown: a row per model with the settings it was evaluated
    with, its Avg@k beside its study's (Δ and a flag), the brief metrics and the evaluation's
    wall time; then the legends. Each row at its own k (its settings' largest).

    rows: {"model": label, "settings": where they came from, "config": its EvalConfig,
    "metrics": tonight's eval metrics, "study": the source run's {"metrics", "identity"} or {},
    "identity": tonight's evaluation identity hash}."""
    metrics = [m for m in shown_in("brief") if m is not AVG_AT_K]
    head = ["model", "settings", "problems", "samples", "T", "cap", "k", AVG_AT_K.heading("k"),
            "study", "Δ", "agrees", *(m.heading("k") for m in metrics), "eval s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        config, m, study = row["config"], row["metrics"], row["study"]
        k = max(config.ks)
        tonight = m.get(AVG_AT_K.logged(k))
        studied = study.get("metrics", {}).get(AVG_AT_K.logged(k))
        delta, flag = agreement(tonight, studied, study.get("identity") == row["identity"])
        cells_ = [row["model"], row["settings"], _fmt(m.get("eval/overall/problems"), ".0f"),
                  str(config.n), str(config.temperature), str(config.max_new_tokens), str(k),
                  _fmt(tonight, AVG_AT_K.spec), _fmt(studied, AVG_AT_K.spec),
                  _fmt(delta, "+.3f"), flag,
                  *(_fmt(m.get(metric.logged(k)), metric.spec) for metric in metrics),
                  _fmt(m.get("eval/overall/seconds"), ".0f")]
        lines.append("| " + " | ".join(cells_) + " |")
    return "\n".join(lines) + f"\n\n{NIGHTLY_LEGEND}.\n\n{LEGEND}"


def before_after_table(rows: list[dict], ks: list[int]) -> str:
    """Markdown: per source cell, each metric of the brief tables (Avg@k, Pass@k, greedy,
    length, entropy, gold NLL) before and after RL, then the legend."""
    k = max(ks)
    metrics = shown_in("brief")
    head = ["cell"] + [f"{m.heading(k)} before → after" for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        values = [f"{_fmt(row['before'].get(m.logged(k)), m.spec)} → "
                  f"{_fmt(row['after'].get(m.logged(k)), m.spec)}" for m in metrics]
        lines.append("| " + " | ".join([row["label"], *values]) + " |")
    return "\n".join(lines) + f"\n\n{LEGEND}"


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else (
        format(value, spec))


def interval_table(study, baseline: str, k: int) -> str:
    """The study's results as Markdown: every metric with per-problem rows in the store a mean
    over seeds and problems (with its 95 % interval where its entry asks for one,
    tasks.stats), the others (gold NLL) the runs' logged means; then each cell's Avg@k and
    greedy accuracy differences to the baseline with their intervals. Cells are the study's
    labels (runs of one label are its seeds); values are each run's last evaluation. A cell
    without greedy rows shows "–"."""
    metrics = shown_in("full")
    head = ["cell", "seeds", *(_interval_head(m, k) for m in metrics),
            *(f"Δ {m.heading(k)} vs {baseline} [95 %]" for m in HEADLINE), "train FLOPs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    runs = study.cells()
    base = {greedy: samples_by_seed(runs.get(baseline, ()), greedy=greedy)
            for greedy in (False, True)}
    for label, cell_runs in runs.items():
        cell = {greedy: samples_by_seed(cell_runs, greedy=greedy) for greedy in (False, True)}
        if not cell[False]:
            lines.append(f"| {label} | {len(cell_runs)} | – (no evaluation samples) |"
                         + " |" * (len(head) - 3))
            continue
        against = base if label != baseline else {}
        lines.append("| " + " | ".join([
            label, str(len(cell[False])),
            *(_measured(cell[m.greedy], m, k) if m.per_problem
              else _mean_metric(cell_runs, m.logged(k), m.spec) for m in metrics),
            *(_delta(cell[m.greedy], against.get(m.greedy), m, k) for m in HEADLINE),
            _mean_metric(cell_runs, "train/total_flops", ".2e")]) + " |")
    return "\n".join(lines) + f"\n\n{LEGEND}"


def _interval_head(metric: EvalMetric, k: int) -> str:
    shows_interval = metric.per_problem is not None and metric.interval
    return metric.heading(k) + (" [95 %]" if shows_interval else "")


def _measured(by_seed: dict, metric: EvalMetric, k: int) -> str:
    """A cell's metric over its seeds and problems, with its 95 % interval where the metric's
    entry asks for one; "–" without rows."""
    if not by_seed:
        return "–"
    values, spec = problem_values(by_seed, metric.name, k), metric.spec
    if not metric.interval:
        return f"{values.estimate:{spec}}"
    found = interval(values)
    return f"{found.estimate:{spec}} [{found.low:{spec}}, {found.high:{spec}}]"


def _delta(cell: dict, baseline: dict | None, metric: EvalMetric, k: int) -> str:
    """cell − baseline, paired by seed and problem, with its 95 % interval; "–" without rows."""
    if not cell or not baseline:
        return "–"
    found = paired_difference(problem_values(cell, metric.name, k),
                              problem_values(baseline, metric.name, k))
    return f"{found.estimate:+.3f} [{found.low:+.3f}, {found.high:+.3f}]"


def _mean_metric(runs, key: str, spec: str) -> str:
    """The mean over a cell's runs (its seeds) of a logged metric; "–" if none logged it."""
    values = [value for run in runs if (value := run.metric(key)) is not None]
    return format(sum(values) / len(values), spec) if values else "–"
