"""Study-grade comparisons (shared/DESIGN.md §4): paired per-problem values, a two-level
percentile bootstrap, verdicts computed from intervals, and the interval a study can reach.

A cell's metric is held as a grid of per-problem values, one row per training seed and one
column per problem (``ProblemValues``). The metric is the ratio of two sums over the grid,
Σ values / Σ weights, each problem's (value, weight) given by the metric's entry in
``tasks.eval_metrics`` (weight 1 for a plain mean over problems, the token count for entropy), so
every estimate equals the number ``tasks.evaluate`` reports for the same samples. Greedy accuracy
reads each problem's one greedy response, which the study keeps apart from the n samples
(``tasks.study.samples_by_seed(..., greedy=True)``).

- **Pairing.** Cells are compared on the problems both have and on the seeds both have; a side
  evaluated with a single seed (an untrained reference) is paired with every seed of the other.
  Sample seeds are the evaluation's and are shared by every cell, so (seed, problem) pairs match.
- **Interval.** Each resample draws the seeds with replacement and, independently, the problems
  with replacement (a crossed two-level bootstrap), and recomputes the ratio over the drawn
  sub-grid; a paired difference applies the *same* draw to both cells. The 95 % interval is the
  2.5th and 97.5th percentile of the resampled statistic. With one seed the seed level is
  trivially constant and the interval comes from the problems alone. The generator is seeded, so
  an interval is repeatable.
- **Verdict.** ``verdict`` reads an effect's interval against the side a claim predicts;
  ``claim_verdict`` combines the verdicts of a claim that needs several effects (see there).
- **Readiness.** ``variance_components`` splits a pilot's (or the reference evaluation's)
  per-sample values into between-problem, between-seed, seed × problem and within-problem
  variance; ``expected_half_width`` turns them into the half-width reachable with given numbers
  of problems, samples and seeds. An effect smaller than that cannot be resolved.

Pure Python and numpy; no torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Literal

import numpy as np

from tasks.eval_metrics import GradedSample, PerProblem, metric_named

RESAMPLES = 2000
LEVEL = 0.95
SEED = 0
SAMPLE_FIELDS = ("correct", "length", "truncated", "entropy")
Verdict = Literal["reproduced", "opposite", "inconclusive"]
Direction = Literal["higher", "lower"]


# -- per-problem values -------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class ProblemValues:
    """One cell's metric per (seed, problem): the estimate is values.sum() / weights.sum().

    values, weights: float arrays of shape (len(seeds), len(problems)).
    dropped: problems some seed of the cell lacks, left out so that the grid is complete.
    """

    metric: str
    seeds: tuple[int, ...]
    problems: tuple[str, ...]
    values: np.ndarray
    weights: np.ndarray
    dropped: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        shape = (len(self.seeds), len(self.problems))
        if self.values.shape != shape or self.weights.shape != shape:
            raise ValueError(f"{self.metric}: values {self.values.shape} and weights "
                             f"{self.weights.shape} must both be (seeds, problems) = {shape}")
        if not self.problems or not self.seeds:
            raise ValueError(f"{self.metric}: no (seed, problem) values to estimate from")

    @classmethod
    def from_array(cls, values: Sequence | np.ndarray, weights: Sequence | np.ndarray | None = None,
                   metric: str = "value") -> ProblemValues:
        """A grid given directly: values[seed][problem] (1-D: one seed); seeds 0.., problems
        "0", "1", …"""
        values = np.atleast_2d(np.asarray(values, dtype=float))
        weights = (np.ones_like(values) if weights is None
                   else np.atleast_2d(np.asarray(weights, dtype=float)))
        return cls(metric, tuple(range(values.shape[0])),
                   tuple(str(p) for p in range(values.shape[1])), values, weights)

    @property
    def estimate(self) -> float:
        return _ratio(self.values.sum(), self.weights.sum())

    def select(self, seeds: Sequence[int], problems: Sequence[str]) -> ProblemValues:
        """The sub-grid of these seeds and problems; a single-seed grid is repeated for every
        seed asked for."""
        missing = [s for s in seeds if s not in self.seeds]
        if missing and len(self.seeds) > 1:
            raise ValueError(f"{self.metric}: no values for seeds {missing} (has {self.seeds})")
        rows = [0 if missing else self.seeds.index(s) for s in seeds]
        index = {p: i for i, p in enumerate(self.problems)}
        columns = [index[p] for p in problems]
        return ProblemValues(self.metric, tuple(seeds), tuple(problems),
                             self.values[np.ix_(rows, columns)],
                             self.weights[np.ix_(rows, columns)], self.dropped)


def problem_values(samples_by_seed: Mapping[int, Iterable[GradedSample]], metric: str,
                   k: int = 1) -> ProblemValues:
    """A cell's per-problem values of one metric from its graded samples, per training seed.

    metric: the name of a ``tasks.eval_metrics`` entry with a per-problem value (``avg_at_k``,
    ``pass_at_k``, ``greedy_accuracy``, ``response_length_mean``, ``truncation_rate``,
    ``entropy``); greedy accuracy reads each problem's one greedy response: pass those
    (``samples_by_seed(..., greedy=True)``).
    Problems that not every seed has are dropped (and listed in ``dropped``).
    """
    entry = metric_named(metric)
    if entry.per_problem is None:
        raise ValueError(f"metric={metric!r} has no per-problem values (the store keeps no "
                         "rows for it): choose one of the tasks.eval_metrics entries with "
                         "per_problem")
    if not samples_by_seed:
        raise ValueError(f"{metric}: no seeds with samples")
    per_seed = {seed: _per_problem(samples, entry.per_problem, k)
                for seed, samples in sorted(samples_by_seed.items())}
    everywhere = set.intersection(*(set(v) for v in per_seed.values()))
    problems = tuple(sorted(everywhere))
    dropped = tuple(sorted(set().union(*per_seed.values()) - everywhere))
    values = np.array([[per_seed[s][p][0] for p in problems] for s in per_seed], dtype=float)
    weights = np.array([[per_seed[s][p][1] for p in problems] for s in per_seed], dtype=float)
    return ProblemValues(entry.key(k), tuple(per_seed), problems,
                         values.reshape(len(per_seed), -1), weights.reshape(len(per_seed), -1),
                         dropped)


def _per_problem(samples: Iterable[GradedSample], value_of: PerProblem, k: int
                 ) -> dict[str, tuple[float, float]]:
    """{problem id: (value, weight)} of one seed's samples, each problem's in sample order."""
    by_problem: dict[str, list[GradedSample]] = {}
    for sample in samples:
        by_problem.setdefault(sample.problem_id, []).append(sample)
    return {problem: value_of(sorted(group, key=lambda s: s.sample_index), k)
            for problem, group in by_problem.items()}


def pair(cell: ProblemValues, baseline: ProblemValues) -> tuple[ProblemValues, ProblemValues]:
    """Both grids cut to the problems they share and aligned seed by seed.

    Seeds: the seeds both have; a side with a single seed (e.g. an untrained reference
    evaluated once) is repeated for every seed of the other side."""
    problems = tuple(p for p in cell.problems if p in set(baseline.problems))
    if len(baseline.seeds) == 1:
        seeds = cell.seeds
    elif len(cell.seeds) == 1:
        seeds = baseline.seeds
    else:
        seeds = tuple(s for s in cell.seeds if s in baseline.seeds)
    if not problems or not seeds:
        raise ValueError(
            f"{cell.metric}: nothing to pair — {len(problems)} shared problems, seeds "
            f"{list(cell.seeds)} vs {list(baseline.seeds)}. A paired comparison needs both cells "
            "evaluated on the same problems with the same seeds")
    return cell.select(seeds, problems), baseline.select(seeds, problems)


# -- the bootstrap ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile-bootstrap interval at ``level``."""

    estimate: float
    low: float
    high: float
    level: float = LEVEL
    seeds: int = 1
    problems: int = 0
    resamples: int = RESAMPLES
    dropped: tuple[str, ...] = field(default=(), repr=False)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def interval(values: ProblemValues, *, level: float = LEVEL, resamples: int = RESAMPLES,
             seed: int = SEED) -> Interval:
    """The percentile-bootstrap interval of one cell's metric (seeds, then problems)."""
    (replicates,) = _replicates([values], resamples, seed)
    return _interval(values.estimate, replicates, values, level, resamples)


def paired_difference(cell: ProblemValues, baseline: ProblemValues, *, level: float = LEVEL,
                      resamples: int = RESAMPLES, seed: int = SEED) -> Interval:
    """The interval of cell − baseline, both recomputed on the same resampled seeds and
    problems (see ``pair`` for which seeds and problems are compared)."""
    cell, baseline = pair(cell, baseline)
    on_cell, on_baseline = _replicates([cell, baseline], resamples, seed)
    return _interval(cell.estimate - baseline.estimate, on_cell - on_baseline, cell, level,
                     resamples)


def align(grids: Sequence[ProblemValues]) -> list[ProblemValues]:
    """Several grids cut to the problems all share and aligned seed by seed (``pair`` for more
    than two: single-seed grids are repeated for every seed the others share)."""
    problems = [p for p in grids[0].problems if all(p in set(g.problems) for g in grids[1:])]
    multi = [set(g.seeds) for g in grids if len(g.seeds) > 1]
    seeds = (sorted(set.intersection(*multi)) if multi else list(grids[0].seeds))
    if not problems or not seeds:
        raise ValueError(f"{grids[0].metric}: nothing to compare — {len(problems)} shared "
                         f"problems, seeds {[list(g.seeds) for g in grids]}; every grid must be "
                         "evaluated on the same problems with the same seeds")
    return [g.select(seeds, problems) for g in grids]


def contrast(terms: Sequence[tuple[float, ProblemValues]], *, level: float = LEVEL,
             resamples: int = RESAMPLES, seed: int = SEED) -> Interval:
    """The interval of Σ coefficient · estimate over several aligned grids, every grid
    recomputed on the same resampled seeds and problems: a paired difference is
    [(1, a), (−1, b)]; a pooled comparison [(½, a), (½, b), (−½, c), (−½, d)]; a difference of
    differences [(1, a′), (−1, a), (−1, b′), (1, b)]; a share [(1, a), (−0.75, b)]."""
    grids = align([grid for _, grid in terms])
    replicates = _replicates(grids, resamples, seed)
    estimate = sum(c * g.estimate for (c, _), g in zip(terms, grids, strict=True))
    combined = sum(c * r for (c, _), r in zip(terms, replicates, strict=True))
    return _interval(estimate, combined, grids[0], level, resamples)


def _replicates(grids: Sequence[ProblemValues], resamples: int, seed: int) -> list[np.ndarray]:
    """Each grid's ratio under the same ``resamples`` draws of seeds and problems."""
    if resamples < 1000:
        raise ValueError(f"resamples={resamples}: use at least 1,000 for a 95 % interval")
    seeds, problems = grids[0].values.shape
    rng = np.random.default_rng(seed)
    seed_counts = rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=resamples)
    problem_counts = rng.multinomial(problems, np.full(problems, 1 / problems), size=resamples)
    out = []
    for grid in grids:  # Σ over drawn (seed, problem) cells = seed_counts · grid · problem_counts
        numerator = ((seed_counts @ grid.values) * problem_counts).sum(axis=1)
        denominator = ((seed_counts @ grid.weights) * problem_counts).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(numerator / denominator)
    return out


def _interval(estimate: float, replicates: np.ndarray, grid: ProblemValues, level: float,
              resamples: int) -> Interval:
    if not 0 < level < 1:
        raise ValueError(f"level={level} must lie strictly between 0 and 1")
    finite = replicates[np.isfinite(replicates)]
    if finite.size < 0.99 * resamples:  # only a ratio with (nearly) no weight gets here
        raise ValueError(f"{grid.metric}: the statistic is undefined in {resamples - finite.size}"
                         f" of {resamples} resamples (almost no weight, e.g. empty responses)")
    low, high = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(estimate), float(low), float(high), level, len(set(grid.seeds)),
                    len(grid.problems), resamples, grid.dropped)


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else float("nan")


# -- verdicts -----------------------------------------------------------------------------------

def verdict(effect: Interval, predicted: Direction) -> Verdict:
    """``reproduced`` when the effect's interval lies entirely on the predicted side of 0,
    ``opposite`` when entirely on the other side, ``inconclusive`` when it holds 0."""
    if predicted not in ("higher", "lower"):
        raise ValueError(f"predicted={predicted!r}: a claim predicts 'higher' or 'lower'")
    sign = 1 if predicted == "higher" else -1
    if min(sign * effect.low, sign * effect.high) > 0:
        return "reproduced"
    if max(sign * effect.low, sign * effect.high) < 0:
        return "opposite"
    return "inconclusive"


def claim_verdict(verdicts: Iterable[Verdict]) -> Verdict:
    """The verdict of a claim that needs every one of several effects (e.g. higher Avg@k *and*
    lower entropy): the logical AND of the parts, with inconclusive as "unknown".

    - ``reproduced`` only when every effect is reproduced;
    - ``opposite`` as soon as one effect is opposite — the claim as stated is then contradicted,
      whatever the other effects show (report the per-effect verdicts beside it);
    - ``inconclusive`` otherwise (no part contradicted, at least one part unresolved).
    """
    verdicts = list(verdicts)
    if not verdicts:
        raise ValueError("claim_verdict needs the verdict of at least one effect")
    if "opposite" in verdicts:
        return "opposite"
    return "reproduced" if all(v == "reproduced" for v in verdicts) else "inconclusive"


# -- readiness ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class VarianceComponents:
    """How a metric's per-sample values vary (method-of-moments estimates, each >= 0).

    problem: between problems (how much problems differ in their mean value);
    seed: between training seeds (how much a cell's overall level moves with the seed);
    interaction: seed × problem (a seed helps some problems more than others);
    sample: one sample around its (seed, problem) mean (p(1 − p) on average for correctness).
    """

    problem: float
    seed: float = 0.0
    interaction: float = 0.0
    sample: float = 0.0


def sample_values(samples_by_seed: Mapping[int, Iterable[GradedSample]],
                  field_name: str = "correct") -> np.ndarray:
    """Per-sample values of one field as an array (seeds, problems, samples), for
    ``variance_components``: problems every seed has, the samples every problem has."""
    if field_name not in SAMPLE_FIELDS:
        raise ValueError(f"field_name={field_name!r}: choose one of {', '.join(SAMPLE_FIELDS)}")
    grids = {}
    for seed, samples in sorted(samples_by_seed.items()):
        by_problem: dict[str, dict[int, float]] = {}
        for s in samples:
            value = getattr(s, field_name)
            by_problem.setdefault(s.problem_id, {})[s.sample_index] = (
                float("nan") if value is None else float(value))
        grids[seed] = by_problem
    problems = sorted(set.intersection(*(set(g) for g in grids.values())))
    n = min(len(g[p]) for g in grids.values() for p in problems)
    return np.array([[[g[p][i] for i in sorted(g[p])[:n]] for p in problems]
                     for g in grids.values()], dtype=float)


def variance_components(values: np.ndarray) -> VarianceComponents:
    """Variance components of per-sample values shaped (seeds, problems, samples).

    For the effect of one cell over another, pass the per-sample differences of a paired pilot
    (cell − baseline, same seeds, problems and sample indices). With one seed, the seed and
    interaction terms cannot be told apart from the rest: seed is 0 and the interaction is
    counted with the problems. With one sample per problem, sampling noise is counted with the
    interaction (or the problems): predictions for more samples are then pessimistic.
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 3 or values.shape[1] < 2:
        raise ValueError(f"values of shape {values.shape}: pass (seeds, problems >= 2, samples)")
    seeds, problems, samples = values.shape
    within = float(np.nanmean(np.nanvar(values, axis=2, ddof=1))) if samples > 1 else 0.0
    means = np.nanmean(values, axis=2)  # (seeds, problems)
    if seeds == 1:
        between = float(np.var(means[0], ddof=1))
        return VarianceComponents(max(0.0, between - within / samples), 0.0, 0.0, within)
    grand = means.mean()
    by_seed, by_problem = means.mean(axis=1), means.mean(axis=0)
    residual = means - by_seed[:, None] - by_problem[None, :] + grand
    ms_residual = float((residual ** 2).sum() / ((seeds - 1) * (problems - 1)))
    ms_seed = float(problems * ((by_seed - grand) ** 2).sum() / (seeds - 1))
    ms_problem = float(seeds * ((by_problem - grand) ** 2).sum() / (problems - 1))
    return VarianceComponents(problem=max(0.0, (ms_problem - ms_residual) / seeds),
                              seed=max(0.0, (ms_seed - ms_residual) / problems),
                              interaction=max(0.0, ms_residual - within / samples),
                              sample=within)


def expected_half_width(problems: int, samples: int, seeds: int,
                        variances: VarianceComponents, level: float = LEVEL) -> float:
    """The half-width of the ``level`` interval of a mean over problems × seeds, each problem
    with ``samples`` samples: z · √(σ²_problem / P + σ²_seed / S + (σ²_interaction +
    σ²_sample / n) / (S · P)).

    More problems shrink every term, more seeds all but the problem term, more samples only the
    sampling noise. A paired effect smaller than this (with the effect's own variances) cannot
    give a verdict, whatever the training does."""
    for name, count in (("problems", problems), ("samples", samples), ("seeds", seeds)):
        if count < 1:
            raise ValueError(f"{name}={count} must be >= 1")
    variance = (variances.problem / problems + variances.seed / seeds
                + (variances.interaction + variances.sample / samples) / (seeds * problems))
    return NormalDist().inv_cdf(0.5 + level / 2) * math.sqrt(variance)
