"""The Markdown tables flows print and attach: a study's results, RL before → after.

Every table shows greedy accuracy beside Avg@k and Pass@k, and the gold-solution NLL split into
answer digits and the rest (``tasks.evaluate``), with ``LEGEND`` under it: a cell that only
sharpens its distribution can raise Avg@k while its greedy accuracy falls and its gold NLL rises.
"""

from __future__ import annotations

import math

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
    head = ["cell", f"avg@{k}", f"pass@{k}", "avg@1", "greedy", "gold NLL digits",
            "gold NLL other", "mean length", "truncated", "entropy", "train FLOPs", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        m, t = row["metrics"], row.get("train", {})
        cells_ = [row["cell"], _fmt(m.get(f"eval/overall/avg_at_{k}")),
                  _fmt(m.get(f"eval/overall/pass_at_{k}")),
                  _fmt(m.get("eval/overall/avg_at_1")),
                  _fmt(m.get("eval/overall/greedy_accuracy")),
                  _fmt(m.get("eval/overall/gold_nll_digits")),
                  _fmt(m.get("eval/overall/gold_nll_other")),
                  _fmt(m.get("eval/overall/response_length_mean"), ".1f"),
                  _fmt(m.get("eval/overall/truncation_rate"), ".1%"),
                  _fmt(m.get("eval/overall/entropy")),
                  _fmt(t.get("train/total_flops"), ".2e"),
                  _fmt(t.get("time/train_total"), ".0f")]
        lines.append("| " + " | ".join(cells_) + " |")
    return "\n".join(lines) + f"\n\n{LEGEND}"


def before_after_table(rows: list[dict], ks: list[int]) -> str:
    """Markdown: per source cell, Avg@k / Pass@k / greedy / entropy / length / gold NLL before
    and after RL, then the legend."""
    k = max(ks)
    keys = [(f"eval/overall/avg_at_{k}", f"avg@{k}", ".3f"),
            (f"eval/overall/pass_at_{k}", f"pass@{k}", ".3f"),
            ("eval/overall/greedy_accuracy", "greedy", ".3f"),
            ("eval/overall/entropy", "entropy", ".3f"),
            ("eval/overall/response_length_mean", "mean length", ".1f"),
            ("eval/overall/gold_nll_digits", "gold NLL digits", ".3f"),
            ("eval/overall/gold_nll_other", "gold NLL other", ".3f")]
    head = ["cell"] + [f"{label} before → after" for _, label, _ in keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        values = [f"{_fmt(row['before'].get(key), spec)} → {_fmt(row['after'].get(key), spec)}"
                  for key, _, spec in keys]
        lines.append("| " + " | ".join([row["label"], *values]) + " |")
    return "\n".join(lines) + f"\n\n{LEGEND}"


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else (
        format(value, spec))


def interval_table(study, baseline: str, k: int) -> str:
    """The study's results as Markdown, every metric from the store's per-problem rows a mean
    over seeds and problems with its 95 % interval (tasks.stats), each cell's Avg@k and greedy
    accuracy differences to the baseline with their intervals, and the gold NLL (the runs'
    logged means: no per-problem rows). Cells are the study's labels (runs of one label are its
    seeds); values are each run's last evaluation. A cell without greedy rows shows "–"."""
    from tasks.study import samples_by_seed

    head = ["cell", "seeds", f"avg@{k} [95 %]", f"pass@{k} [95 %]", "greedy [95 %]",
            "mean length [95 %]", "truncated", "entropy [95 %]", "gold NLL digits",
            "gold NLL other", f"Δ avg@{k} vs {baseline} [95 %]",
            f"Δ greedy vs {baseline} [95 %]", "train FLOPs"]
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
            label, str(len(cell[False])), _measured(cell[False], "avg_at_k", k),
            _measured(cell[False], "pass_at_k", k), _measured(cell[True], "greedy_accuracy", k),
            _measured(cell[False], "response_length_mean", k, ".1f"),
            _measured(cell[False], "truncation_rate", k, ".1%", with_interval=False),
            _measured(cell[False], "entropy", k),
            _mean_metric(cell_runs, "eval/overall/gold_nll_digits", ".3f"),
            _mean_metric(cell_runs, "eval/overall/gold_nll_other", ".3f"),
            _delta(cell[False], against.get(False), "avg_at_k", k),
            _delta(cell[True], against.get(True), "greedy_accuracy", k),
            _mean_metric(cell_runs, "train/total_flops", ".2e")]) + " |")
    return "\n".join(lines) + f"\n\n{LEGEND}"


def _measured(by_seed: dict, metric: str, k: int, spec: str = ".3f",
              with_interval: bool = True) -> str:
    """A cell's metric over its seeds and problems with its 95 % interval; "–" without rows."""
    from tasks.stats import interval, problem_values

    if not by_seed:
        return "–"
    values = problem_values(by_seed, metric, k)
    if not with_interval:
        return f"{values.estimate:{spec}}"
    found = interval(values)
    return f"{found.estimate:{spec}} [{found.low:{spec}}, {found.high:{spec}}]"


def _delta(cell: dict, baseline: dict | None, metric: str, k: int) -> str:
    """cell − baseline, paired by seed and problem, with its 95 % interval; "–" without rows."""
    from tasks.stats import paired_difference, problem_values

    if not cell or not baseline:
        return "–"
    found = paired_difference(problem_values(cell, metric, k), problem_values(baseline, metric, k))
    return f"{found.estimate:+.3f} [{found.low:+.3f}, {found.high:+.3f}]"


def _mean_metric(runs, key: str, spec: str) -> str:
    """The mean over a cell's runs (its seeds) of a logged metric; "–" if none logged it."""
    values = [value for run in runs if (value := run.metric(key)) is not None]
    return format(sum(values) / len(values), spec) if values else "–"
