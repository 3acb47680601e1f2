"""The Markdown tables flows print and attach: a study's results, RL before → after."""

from __future__ import annotations

import math


def results_table(rows: list[dict], ks: list[int]) -> str:
    """The study's table as Markdown: one row per cell (or reference model), overall metrics.

    rows: {"cell": label, "metrics": eval metrics, "train": final train metrics or {}}.
    """
    k = max(ks)
    head = ["cell", f"avg@{k}", f"pass@{k}", "avg@1", "mean length", "truncated", "entropy",
            "train FLOPs", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        m, t = row["metrics"], row.get("train", {})
        cells_ = [row["cell"], _fmt(m.get(f"eval/overall/avg_at_{k}")),
                  _fmt(m.get(f"eval/overall/pass_at_{k}")),
                  _fmt(m.get("eval/overall/avg_at_1")),
                  _fmt(m.get("eval/overall/response_length_mean"), ".1f"),
                  _fmt(m.get("eval/overall/truncation_rate"), ".1%"),
                  _fmt(m.get("eval/overall/entropy")),
                  _fmt(t.get("train/total_flops"), ".2e"),
                  _fmt(t.get("time/train_total"), ".0f")]
        lines.append("| " + " | ".join(cells_) + " |")
    return "\n".join(lines)


def before_after_table(rows: list[dict], ks: list[int]) -> str:
    """Markdown: per source cell, Avg@k / Pass@k / entropy / length before and after RL."""
    k = max(ks)
    keys = [(f"eval/overall/avg_at_{k}", f"avg@{k}", ".3f"),
            (f"eval/overall/pass_at_{k}", f"pass@{k}", ".3f"),
            ("eval/overall/entropy", "entropy", ".3f"),
            ("eval/overall/response_length_mean", "mean length", ".1f")]
    head = ["cell"] + [f"{label} before → after" for _, label, _ in keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        values = [f"{_fmt(row['before'].get(key), spec)} → {_fmt(row['after'].get(key), spec)}"
                  for key, _, spec in keys]
        lines.append("| " + " | ".join([row["label"], *values]) + " |")
    return "\n".join(lines)


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else (
        format(value, spec))


def interval_table(study, baseline: str, k: int) -> str:
    """The study's results as Markdown, every metric a mean over seeds and problems with its
    95 % interval (tasks.stats), and each cell's Avg@k difference to the baseline with its
    interval. Cells are the study's labels (runs of one label are its seeds); values are
    each run's last evaluation."""
    from tasks.stats import interval, paired_difference, problem_values
    from tasks.study import samples_by_seed

    head = ["cell", "seeds", f"avg@{k} [95 %]", f"pass@{k} [95 %]", "mean length [95 %]",
            "truncated", "entropy [95 %]", f"Δ avg@{k} vs {baseline} [95 %]", "train FLOPs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    runs = study.cells()
    base = samples_by_seed(runs.get(baseline, ()))
    for label, cell_runs in runs.items():
        by_seed = samples_by_seed(cell_runs)
        if not by_seed:
            lines.append(f"| {label} | {len(cell_runs)} | – (no evaluation samples) |"
                         + " |" * (len(head) - 3))
            continue

        def shown(metric: str, spec: str = ".3f", by_seed=by_seed) -> str:
            measured = interval(problem_values(by_seed, metric, k))
            return (f"{measured.estimate:{spec}} [{measured.low:{spec}}, "
                    f"{measured.high:{spec}}]")

        delta = "–"
        if base and label != baseline:
            d = paired_difference(problem_values(by_seed, "avg_at_k", k),
                                  problem_values(base, "avg_at_k", k))
            delta = f"{d.estimate:+.3f} [{d.low:+.3f}, {d.high:+.3f}]"
        truncated = problem_values(by_seed, "truncation_rate", k).estimate
        flops = [r.metric("train/total_flops") for r in cell_runs if r.metric("train/total_flops")]
        lines.append("| " + " | ".join([
            label, str(len(by_seed)), shown("avg_at_k"), shown("pass_at_k"),
            shown("response_length_mean", ".1f"), f"{truncated:.1%}", shown("entropy"), delta,
            f"{sum(flops) / len(flops):.2e}" if flops else "–"]) + " |")
    return "\n".join(lines)
