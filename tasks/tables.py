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
