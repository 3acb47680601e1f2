"""A study read back from MLflow and the rollout store, as frozen values: the one reader behind
``distill report``, the HTML tradeoff report and the RL flow's choice of students.

A study is a grid flow's parent run (tag ``study=grid``) and its child runs, or explicit run ids,
or — for an experiment without a grid — every run of the experiment. Each run carries

- its cell tags: ``cell``, ``objective``, ``prefix_source``, ``lambda``, ``curriculum``,
  ``reference`` (the teacher / starting student evaluated as they are) and ``seed`` (the
  training seed; a run without it is seed 0);
- its params, final metrics, and on request the full history of named metrics;
- with a rollout store, its graded evaluation samples (benchmark, problem id, sample index,
  correct, length, truncated, entropy, step): what ``tasks.stats`` computes intervals from —
  the n samples per problem in ``evaluations``, the one greedy response per problem apart in
  ``greedy`` (``samples_by_seed(..., greedy=True)``), so Avg@k and the rest never see it.

MLflow is reached only through ``tasks.tracking.Tracker``, the store only through
``tasks.store.RolloutStore``. Reading never writes: a missing metric, history or sample is an
empty value, not an error.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from tasks.eval_metrics import AVG_AT_K
from tasks.store import EVAL_STAGE, GREEDY_STAGE, RolloutStore
from tasks.tracking import RunSummary, Tracker

RL_SOURCE_TAG = "source_run"  # set by rl_after_distill on each GRPO run: the run it started from
GROUPS = ("reference", "grid cell", "λ mix", "curriculum")
# eval/overall/avg_at_<k>: the key AVG_AT_K is logged under, its k a group
_HEADLINE_K = re.compile(re.escape(AVG_AT_K.logged(k=0)).removesuffix("0") + r"(\d+)")


def _frozen(mapping: Mapping | None = None) -> Mapping:
    """A read-only view of a copy: a study's values do not change after reading."""
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class EvalSample:
    """One graded evaluation response (its text stays in the store; see ``responses``)."""

    benchmark: str
    problem_id: str  # the store's prompt id, "<benchmark>/<problem id>"
    sample_index: int
    correct: bool | None
    length: int
    truncated: bool
    entropy: float | None
    step: int


@dataclass(frozen=True)
class Response:
    """One evaluation response to show: its text and its problem's."""

    benchmark: str
    step: int
    problem_id: str
    sample_index: int
    problem: str | None
    text: str
    length: int
    truncated: bool
    correct: bool | None
    entropy: float | None


@dataclass(frozen=True)
class StudyRun:
    """One MLflow run of a study (or the study's parent run), read once."""

    run_id: str
    name: str
    status: str  # RUNNING, FINISHED, FAILED or KILLED
    tags: Mapping[str, str] = field(default_factory=_frozen)
    params: Mapping[str, str] = field(default_factory=_frozen)
    metrics: Mapping[str, float] = field(default_factory=_frozen)  # each metric's latest value
    histories: Mapping[str, tuple[tuple[int, float], ...]] = field(  # only the keys asked for
        default_factory=_frozen)
    evaluations: tuple[EvalSample, ...] = ()  # from the store; () without one
    greedy: tuple[EvalSample, ...] = ()  # each problem's greedy response, apart from the above

    @property
    def label(self) -> str:
        """The cell label (tag ``cell``), else the run name."""
        return self.tags.get("cell") or self.name

    @property
    def objective(self) -> str | None:
        return self.tags.get("objective")

    @property
    def prefix_source(self) -> str | None:
        return self.tags.get("prefix_source")

    @property
    def reverse_weight(self) -> float | None:
        """λ, the weight on KL(q_student ‖ p_teacher) (tag ``lambda``); None if not tagged."""
        return float(self.tags["lambda"]) if self.tags.get("lambda") else None

    @property
    def curriculum(self) -> bool:
        return self.tags.get("curriculum") == "true"

    @property
    def reference(self) -> bool:
        return self.tags.get("reference") == "true"

    @property
    def seed(self) -> int:
        """The training seed (tag ``seed``); 0 for a run without it."""
        text = self.tags.get("seed")
        if text is None or text == "":
            return 0
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"run {self.run_id} ({self.label}) has tag seed={text!r}: the "
                             "seed tag must be an integer") from None

    @property
    def group(self) -> str:
        """reference, grid cell, λ mix (a teacher:λ / student:λ objective) or curriculum."""
        if self.reference:
            return "reference"
        if self.curriculum:
            return "curriculum"
        return "λ mix" if ":" in (self.objective or "") else "grid cell"

    @property
    def trained(self) -> bool:
        return not self.reference

    def metric(self, key: str) -> float | None:
        """The latest finite value of a metric; None when absent or NaN/inf."""
        value = self.metrics.get(key)
        return value if value is not None and math.isfinite(value) else None

    def history(self, key: str) -> tuple[tuple[int, float], ...]:
        """(step, value) pairs of a metric read with the study; () if not read or not logged."""
        return self.histories.get(key, ())

    def evaluated_steps(self) -> list[int]:
        return sorted({s.step for s in self.evaluations})

    def samples_at(self, step: int | None = None, benchmark: str | None = None,
                   greedy: bool = False) -> tuple[EvalSample, ...]:
        """The evaluation samples at one step (default: the last evaluated step), optionally
        of one benchmark; greedy: the greedy responses of that evaluation instead."""
        steps = self.evaluated_steps()
        if not steps:
            return ()
        step = steps[-1] if step is None else step
        return tuple(s for s in (self.greedy if greedy else self.evaluations) if s.step == step
                     and (benchmark is None or s.benchmark == benchmark))


@dataclass(frozen=True)
class Study:
    """The runs of one study and where they were read from."""

    title: str
    tracking_uri: str
    parent: StudyRun | None  # the grid's parent run; None for explicit runs or an experiment
    runs: tuple[StudyRun, ...]  # oldest first
    store_url: str | None = None  # where evaluations were read from; None: not read
    notes: tuple[str, ...] = field(default=())

    @property
    def k(self) -> int:
        """The headline k of Avg@k / Pass@k: the largest k any run logged (1 if none)."""
        return headline_k(key for run in self.runs for key in run.metrics)

    @property
    def eval_ks(self) -> list[int]:
        """The study's configured ks (its ``study.eval_ks`` param); [] without a parent."""
        params = self.parent.params if self.parent else {}
        text = params.get("study.eval_ks") or params.get("experiment.eval_ks")
        return [int(k) for k in json.loads(text)] if text else []

    def cells(self) -> dict[str, tuple[StudyRun, ...]]:
        """Runs by cell label (one per training seed), in the order labels first appear."""
        cells: dict[str, list[StudyRun]] = {}
        for run in self.runs:
            cells.setdefault(run.label, []).append(run)
        return {label: tuple(runs) for label, runs in cells.items()}

    def benchmarks(self) -> list[str]:
        """Benchmarks named by any run's ``eval/<benchmark>/…`` metrics (not "overall")."""
        names = {key.split("/")[1] for run in self.runs for key in run.metrics
                 if key.startswith("eval/") and key.count("/") >= 2}
        return sorted(names - {"overall"})


def headline_k(metric_keys: Iterable[str]) -> int:
    """The largest k of any ``eval/overall/avg_at_<k>`` key (1 if none is logged)."""
    return max((int(m.group(1)) for key in metric_keys if (m := _HEADLINE_K.fullmatch(key))),
               default=1)


# -- reading ------------------------------------------------------------------------------------

def newest_grid(tracker: Tracker, experiment: str) -> str | None:
    """The newest grid parent run of an experiment; None if it has none (or does not exist)."""
    return tracker.latest_run(experiment, "study", "grid")


def read_study(tracker: Tracker, *, parent_run_id: str | None = None,
               experiment: str | None = None, run_ids: Sequence[str] | None = None,
               store: RolloutStore | None = None, history_keys: Iterable[str] = ()) -> Study:
    """Read a study: explicit run_ids, else a grid's parent run, else an experiment's newest
    grid (or, if it has none, every run of it except study parents).

    store: also read every run's evaluation samples. history_keys: metrics whose full history
    is read (for the runs that logged them); ``eval/overall/*`` names every key under a prefix.
    Raises ValueError naming what is missing when the selection finds no experiment, or an
    experiment without runs, or a parent run that is not there."""
    parent, summaries, title = _select(tracker, parent_run_id, experiment, run_ids)
    history_keys = tuple(history_keys)
    runs = tuple(read_run(tracker, s, store, history_keys) for s in summaries)
    parent_run = read_run(tracker, tracker.run_summary(parent), None, ()) if parent else None
    if parent_run is not None:
        title = f"{parent_run.name} ({parent_run.run_id})"
    return Study(title, tracker.tracking_uri, parent_run, runs,
                 store.url if store is not None else None)


def _select(tracker: Tracker, parent_run_id: str | None, experiment: str | None,
            run_ids: Sequence[str] | None) -> tuple[str | None, list[RunSummary], str]:
    """(parent run id or None, the runs, a title) of a selection."""
    if run_ids:
        return None, [tracker.run_summary(r) for r in run_ids], f"{len(run_ids)} selected runs"
    if parent_run_id is None:
        if experiment is None:
            raise ValueError("say which study to read: parent_run_id=, experiment= or run_ids=")
        parent_run_id = newest_grid(tracker, experiment)
        if parent_run_id is None:
            runs = tracker.experiment_runs(experiment, without_tag="study")
            if runs is None:
                raise ValueError(f"no MLflow experiment {experiment!r} at {tracker.tracking_uri}:"
                                 " check the name (`mlflow experiments search`) or the "
                                 "tracking URI")
            if not runs:
                raise ValueError(f"experiment {experiment!r} at {tracker.tracking_uri} has no "
                                 "runs: run `distill grid CONFIG` first")
            return None, runs, f"experiment {experiment} (no grid run: all its runs)"
    tracker.run_summary(parent_run_id)  # a ValueError naming the run if it is not there
    return parent_run_id, tracker.child_runs(parent_run_id), parent_run_id


def read_run(tracker: Tracker, summary: RunSummary, store: RolloutStore | None = None,
             history_keys: Iterable[str] = ()) -> StudyRun:
    """One run: tags, params, final metrics, the histories asked for that it logged (exact keys
    or ``prefix/*`` patterns), and its evaluation samples when a store is given."""
    metrics = tracker.run_metrics(summary.run_id)
    histories = {key: tuple(tracker.metric_history(summary.run_id, key))
                 for key in metrics if _wanted(key, history_keys)}
    sampled, greedy = _evaluations(store, summary.run_id) if store is not None else ((), ())
    return StudyRun(summary.run_id, summary.run_name, summary.status,
                    _frozen(tracker.run_tags(summary.run_id)),
                    _frozen(tracker.run_params(summary.run_id)), _frozen(metrics),
                    _frozen(histories), sampled, greedy)


def _wanted(key: str, history_keys: Iterable[str]) -> bool:
    """A key named exactly, or matching a ``prefix/*`` pattern."""
    return any(key == h or (h.endswith("*") and key.startswith(h[:-1])) for h in history_keys)


def read_evaluations(store: RolloutStore, run_id: str,
                     greedy: bool = False) -> tuple[EvalSample, ...]:
    """Every graded evaluation sample of a run (stages ``eval/<benchmark>``), by step; greedy:
    its greedy responses instead (stages ``eval_greedy/<benchmark>``)."""
    sampled, greedy_responses = _evaluations(store, run_id)
    return greedy_responses if greedy else sampled


def _evaluations(store: RolloutStore, run_id: str
                 ) -> tuple[tuple[EvalSample, ...], tuple[EvalSample, ...]]:
    """(sampled, greedy) evaluation rows of a run, from one read of the store."""
    found: dict[str, list[EvalSample]] = {EVAL_STAGE: [], GREEDY_STAGE: []}
    for row in store.samples(run_id):
        for stage, rows in found.items():
            if row.stage.startswith(stage):
                rows.append(EvalSample(row.stage.removeprefix(stage), row.prompt_id,
                                       row.sample_index, row.correct, row.token_count,
                                       row.truncated, row.mean_entropy, row.step))
    return tuple(found[EVAL_STAGE]), tuple(found[GREEDY_STAGE])


def followups(tracker: Tracker, run: StudyRun, store: RolloutStore | None = None,
              history_keys: Iterable[str] = ()) -> tuple[StudyRun, ...]:
    """The runs that started from this one (e.g. GRPO runs tagged ``source_run=<its id>``),
    oldest first, read like the study's runs."""
    history_keys = tuple(history_keys)
    return tuple(read_run(tracker, summary, store, history_keys)
                 for summary in tracker.tagged_runs(RL_SOURCE_TAG, run.run_id))


def responses(store: RolloutStore, run: StudyRun, per_verdict: int) -> tuple[Response, ...]:
    """Up to per_verdict correct and as many other responses per benchmark, from the run's last
    evaluated step, with their problem text."""
    picked = []
    for benchmark in sorted({s.benchmark for s in run.evaluations}):
        rows = store.samples(run.run_id, f"{EVAL_STAGE}{benchmark}")
        last = max(row.step for row in rows)
        rows = [row for row in rows if row.step == last]
        picked += ([row for row in rows if row.correct][:per_verdict]
                   + [row for row in rows if not row.correct][:per_verdict])
    problems = store.problems(run.run_id) if picked else {}
    return tuple(Response(row.stage.removeprefix(EVAL_STAGE), row.step, row.prompt_id,
                          row.sample_index, problems.get(row.prompt_id), row.response,
                          row.token_count, row.truncated, row.correct, row.mean_entropy)
                 for row in picked)


def samples_by_seed(runs: Iterable[StudyRun], benchmark: str | None = None,
                    step: int | None = None, greedy: bool = False
                    ) -> dict[int, tuple[EvalSample, ...]]:
    """The evaluation samples of a cell's runs keyed by training seed (each run's last
    evaluated step unless step is given); runs without samples are left out. Two runs with one
    seed: the later one counts. greedy: each problem's greedy response instead (what
    ``tasks.stats``' greedy_accuracy reads)."""
    by_seed = {}
    for run in runs:
        samples = run.samples_at(step, benchmark, greedy)
        if samples:
            by_seed[run.seed] = samples
    return by_seed
