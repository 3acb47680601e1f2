"""The evaluation metrics as one table: the name ``tasks.evaluate`` returns each under, the label
and number format every table and the report show it with, which tables show it, and — for a
metric a study can put an interval on — its value on one problem.

Everything that names, labels or formats an evaluation metric reads ``EVAL_METRICS``: the study
statistics (``tasks.stats``), the Markdown tables (``tasks.tables``), the HTML report
(``dashboards.report``), the study's MLflow summary and runs-table columns
(``tasks.prefect_tasks``, ``flows.common``) and the claims (``tasks.findings``). Adding a metric
touches this table and the code that computes it, nothing else (docs/design.md, "Adding an
evaluation metric"); ``tests/tasks/test_eval_metrics.py`` checks that the two agree.

Names ending in ``_at_k`` take the evaluation's k (``avg_at_k`` is logged as ``avg_at_4``), and
so do labels holding ``{k}``. A per-problem value is a pair (value, weight): a study's estimate
is Σ values / Σ weights over (seed, problem), which equals the evaluation's own number for the
same samples (weight 1: a mean over problems; the token count: token-weighted, like entropy).

Not to be confused with ``distill_core.metrics``: the Avg@k and Pass@k estimators themselves.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol


class GradedSample(Protocol):
    """What a per-problem value is computed from (``tasks.study.EvalSample`` is one)."""

    problem_id: str
    sample_index: int
    correct: bool | None
    length: int
    truncated: bool
    entropy: float | None


# (value, weight) of one problem from its responses ordered by sample index, at the study's k.
PerProblem = Callable[[Sequence[GradedSample], int], tuple[float, float]]

# Which tables show a metric: "brief" every table, the short ones too (before → after RL, per
# benchmark, the study's MLflow summary); "full" only the full results tables (the study table,
# the results tables, the report's results and differences, the MLflow runs-table columns);
# "logged" none: logged to MLflow and metrics.json, read by no table.
Shown = Literal["brief", "full", "logged"]


@dataclass(frozen=True)
class EvalMetric:
    """One evaluation metric.

    name: as ``tasks.evaluate`` returns it (``eval/<benchmark>/<name>`` in MLflow).
    label: its column head; spec: its number format.
    better: which way is better ("higher", "lower"; None for a count).
    shown: which tables show it (see ``Shown``).
    per_problem: its value on one problem, for intervals and paired differences; None when the
        store keeps no per-sample rows for it (then tables show the runs' logged means).
    greedy: read from each problem's one greedy response, not from its n samples.
    interval: with per_problem, the study table gives its 95 % interval (else the estimate
        alone, as for truncation).
    top: its top-level MLflow key (at the evaluation's k), the study's benchmark: the columns
        and charts MLflow's runs table and compare page show first (``top_level``); None for
        the rest.
    """

    name: str
    label: str
    spec: str = ".3f"
    better: Literal["higher", "lower"] | None = None
    shown: Shown = "brief"
    per_problem: PerProblem | None = None
    greedy: bool = False
    interval: bool = True
    top: str | None = None

    def key(self, k: int = 1) -> str:
        """The name as logged at this k (``avg_at_k`` → ``avg_at_4``)."""
        return self.name.removesuffix("_k") + f"_{k}" if self.name.endswith("_at_k") else self.name

    def logged(self, k: int = 1, benchmark: str = "overall") -> str:
        """Its MLflow key: ``eval/<benchmark>/<name at k>``."""
        return f"eval/{benchmark}/{self.key(k)}"

    def heading(self, k: int = 1) -> str:
        """Its label at this k (``avg@{k}`` → ``avg@4``)."""
        return self.label.format(k=k)


# -- per-problem values -------------------------------------------------------------------------

def _graded(group: Sequence[GradedSample], k: int) -> list[bool]:
    """The correctness of a problem's samples, refusing too few or an ungraded one."""
    problem = group[0].problem_id
    if len(group) < k:
        raise ValueError(f"problem {problem!r} has {len(group)} samples but k={k}: "
                         "sample n >= k responses per problem")
    if any(s.correct is None for s in group):
        raise ValueError(f"problem {problem!r} has an ungraded sample: grade it first")
    return [bool(s.correct) for s in group]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased Pass@k of one problem: 1 − C(n − c, k) / C(n, k) (distill_core's estimator)."""
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def _avg_at_k(group: Sequence[GradedSample], k: int) -> tuple[float, float]:
    return sum(_graded(group, k)[:k]) / k, 1.0


def _pass_at_k(group: Sequence[GradedSample], k: int) -> tuple[float, float]:
    correct = _graded(group, k)
    return pass_at_k(len(correct), sum(correct), k), 1.0


def _greedy_accuracy(group: Sequence[GradedSample], k: int) -> tuple[float, float]:
    if len(group) != 1 or group[0].correct is None:
        raise ValueError(f"problem {group[0].problem_id!r} has {len(group)} responses for "
                         "greedy accuracy: pass its one graded greedy response "
                         "(samples_by_seed(..., greedy=True)), not its samples")
    return float(group[0].correct), 1.0


def _length_mean(group: Sequence[GradedSample], k: int) -> tuple[float, float]:
    return sum(s.length for s in group) / len(group), 1.0


def _truncation_rate(group: Sequence[GradedSample], k: int) -> tuple[float, float]:
    return sum(bool(s.truncated) for s in group) / len(group), 1.0


def _entropy(group: Sequence[GradedSample], k: int) -> tuple[float, float]:
    """Token-weighted, as tasks.evaluate reports it: Σ entropy × length / Σ length."""
    weighted = [(s.entropy * s.length, s.length) for s in group
                if s.entropy is not None and s.length]
    return sum(h for h, _ in weighted), float(sum(n for _, n in weighted))


# -- the table ----------------------------------------------------------------------------------

AVG_AT_K = EvalMetric("avg_at_k", "avg@{k}", better="higher", per_problem=_avg_at_k,
                      top="avg_at_k")
PASS_AT_K = EvalMetric("pass_at_k", "pass@{k}", better="higher", per_problem=_pass_at_k,
                       top="pass_at_k")
GREEDY_ACCURACY = EvalMetric("greedy_accuracy", "greedy", better="higher",
                             per_problem=_greedy_accuracy, greedy=True, top="greedy")
RESPONSE_LENGTH = EvalMetric("response_length_mean", "mean length", ".1f", better="lower",
                             per_problem=_length_mean, top="length")
TRUNCATION_RATE = EvalMetric("truncation_rate", "truncated", ".1%", better="lower",
                             shown="full", per_problem=_truncation_rate, interval=False)
ENTROPY = EvalMetric("entropy", "entropy", better=None, per_problem=_entropy, top="entropy")
GOLD_NLL_DIGITS = EvalMetric("gold_nll_digits", "gold NLL digits", better="lower")
GOLD_NLL_OTHER = EvalMetric("gold_nll_other", "gold NLL other", better="lower")


def _logged(name: str, label: str, better: Literal["higher", "lower"] | None = None
            ) -> EvalMetric:
    return EvalMetric(name, label, better=better, shown="logged")


# In the order tables show them. entropy has no better side: the method reads it as sharpening.
EVAL_METRICS: tuple[EvalMetric, ...] = (
    AVG_AT_K, PASS_AT_K, GREEDY_ACCURACY, RESPONSE_LENGTH, TRUNCATION_RATE, ENTROPY,
    GOLD_NLL_DIGITS, GOLD_NLL_OTHER,
    _logged("strict_accuracy", "accuracy, strict extraction", "higher"),
    _logged("flexible_accuracy", "accuracy, flexible extraction", "higher"),
    _logged("response_length_median", "median length"),
    _logged("empty_responses", "empty responses", "lower"),
    _logged("no_answer", "responses without an answer", "lower"),
    _logged("grader_timeouts", "grader timeouts", "lower"),
    _logged("problems", "problems"),
    _logged("samples", "samples"),
    _logged("gold_nll_problems", "problems with a worked solution"),
    _logged("seconds", "evaluation wall time (s)"),
)
BY_NAME = {metric.name: metric for metric in EVAL_METRICS}
# The two accuracies that tell learning from sharpening: shown with intervals and as paired
# differences wherever a table has room for only a few.
HEADLINE = (AVG_AT_K, GREEDY_ACCURACY)


def shown_in(tables: Literal["brief", "full"]) -> tuple[EvalMetric, ...]:
    """The metrics a brief or a full table shows, in table order."""
    wanted = ("brief",) if tables == "brief" else ("brief", "full")
    return tuple(m for m in EVAL_METRICS if m.shown in wanted)


def top_level() -> tuple[EvalMetric, ...]:
    """The headline metrics logged at the top level, in the order MLflow's views show them."""
    return tuple(m for m in EVAL_METRICS if m.top)


def top_key(metric: EvalMetric, k: int) -> str:
    """A headline's top-level MLflow key at this k (``avg_at_k`` → ``avg_at_4``)."""
    return metric.top.removesuffix("_k") + f"_{k}" if metric.top.endswith("_at_k") else metric.top


def is_top_key(key: str) -> bool:
    """Whether key is a headline's top-level key at some k (``avg_at_4``, ``greedy``)."""
    return any(re.fullmatch(re.escape(m.top.removesuffix("k")) + r"\d+", key)
               if m.top.endswith("_at_k") else key == m.top for m in top_level())


def for_mlflow(metrics: Mapping[str, float], k: int) -> dict[str, float]:
    """An evaluation's metrics as a run logs them: ``eval/<benchmark>/*`` with one benchmark's
    copy left out when it is the only one (``eval/overall/*`` holds the same numbers), plus the
    headline metrics at k at the top level (``top_level``), read from ``eval/overall``."""
    benchmarks = {key.split("/")[1] for key in metrics if key.startswith("eval/")} - {"overall"}
    kept = {key: value for key, value in metrics.items()
            if len(benchmarks) != 1 or not key.startswith(f"eval/{next(iter(benchmarks))}/")}
    for metric in top_level():
        overall = metrics.get(metric.logged(k))
        if overall is not None:
            kept[top_key(metric, k)] = overall
    return kept


def with_rows() -> tuple[EvalMetric, ...]:
    """The shown metrics a study computes per problem (intervals, paired differences)."""
    return tuple(m for m in shown_in("full") if m.per_problem is not None)


def metric_named(name: str) -> EvalMetric:
    """The table's entry of a name (``avg_at_k``, not ``avg_at_4``); raises naming the choices."""
    if name not in BY_NAME:
        raise ValueError(f"metric={name!r}: choose one of {', '.join(BY_NAME)} "
                         "(tasks.eval_metrics.EVAL_METRICS)")
    return BY_NAME[name]
