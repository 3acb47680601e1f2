"""Before a study trains: can it show the effects it asks about?

Measured on what exists before any training — the teacher's and the starting student's
evaluations and the teacher's training rollouts:

- ``teacher_lead``: the teacher's avg@1 minus the starting student's, against min_teacher_lead
  (0.25 by default). A teacher that is not clearly ahead has little to transfer, and where it
  is wrong the student learns its errors: distillation then lowers the student's accuracy and
  every comparison of cells measures which one hurts least. This shortfall is never waived:
  readiness: warn does not train past it (lower min_teacher_lead to study such a pair).
- ``teacher_entropy``: the teacher's mean token entropy on its own answers. A nearly
  deterministic teacher (below 0.05 nats/token) gives forward and reverse KL the same target,
  so the KL-direction claims cannot show.
- ``eval_cap``: the evaluation cap against the teacher's longest evaluation answer (at least
  1.5×, and no teacher answer truncated): otherwise length and truncation effects are cut off.
- ``training_cap``: the share of the teacher's training rollouts the training cap truncates
  (more than a quarter: the student mostly learns cut answers). With a length curriculum, its
  first rung must truncate some of them, or the curriculum cannot change anything.
- ``interval``: the half-width of the 95 % interval of an Avg@k difference between two cells
  that problems × samples × seeds allow, from the variance of the starting student's per-sample
  correctness (tasks.stats), against the smallest effect the study must resolve (min_effect).

Each shortfall is a named warning; the study refuses to train unless asked (readiness: warn),
and then says so at the top of its report — except a blocking one (BLOCKING), which always
refuses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

from tasks.configs import StudyConfig
from tasks.eval_metrics import ENTROPY
from tasks.rollout import Sample
from tasks.stats import expected_half_width, sample_values, variance_components
from tasks.study import EvalSample

MIN_TEACHER_ENTROPY = 0.05
BLOCKING = ("teacher_lead",)  # shortfalls that readiness: warn does not train past
EVAL_CAP_HEADROOM = 1.5
MAX_TRUNCATED_AT_TRAINING = 0.25


@dataclass(frozen=True)
class Readiness:
    """What was measured, and the shortfalls found (name → one line saying what and why)."""

    measured: dict[str, float]
    shortfalls: dict[str, str] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return not self.shortfalls

    @property
    def blocking(self) -> list[str]:
        """The shortfalls no study trains past (BLOCKING)."""
        return [name for name in self.shortfalls if name in BLOCKING]

    def summary(self) -> str:
        if self.ready:
            return "ready"
        return "not ready: " + ", ".join(self.shortfalls)

    def to_dict(self) -> dict:
        return {"ready": self.ready, **asdict(self)}


def assess(config: StudyConfig, teacher_eval: Sequence[EvalSample],
           student_eval: Sequence[EvalSample], teacher_rollouts: Sequence[Sample],
           teacher_entropy: float) -> Readiness:
    """The readiness of a study (see the module docstring). teacher_eval / student_eval: the
    references' graded evaluation samples; teacher_rollouts: the rollouts teacher-prefix runs
    train on (empty when the study has none); teacher_entropy: the teacher evaluation's
    token-weighted entropy."""
    measured: dict[str, float] = {"teacher_entropy": teacher_entropy}
    shortfalls: dict[str, str] = {}
    if teacher_entropy < MIN_TEACHER_ENTROPY:
        shortfalls["teacher_entropy"] = (
            f"the teacher's entropy on its own answers is {teacher_entropy:.3f} nats/token, "
            f"below {MIN_TEACHER_ENTROPY}: forward and reverse KL chase the same target")
    _check_teacher_lead(config, teacher_eval, student_eval, measured, shortfalls)
    _check_eval_cap(config, teacher_eval, measured, shortfalls)
    _check_training_cap(config, teacher_rollouts, measured, shortfalls)
    _check_interval(config, student_eval, measured, shortfalls)
    return Readiness(measured, shortfalls)


def not_ready_line(readiness: Mapping | None) -> str | None:
    """One line for a study that trained although it was not ready (readiness: warn), to put
    at the top of what the user sees of it (its Prefect artifact, the end of its log); None
    for a ready study, or one whose readiness was not checked in this run. readiness: what
    Readiness.to_dict() returned."""
    if not readiness or readiness.get("ready", True):
        return None
    return (f"⚠ NOT READY: {', '.join(readiness['shortfalls'])}. It trained anyway (readiness: "
            "warn): read its findings with that in mind; the readiness warnings in its log and "
            "readiness.json on its MLflow run say why.")


def curriculum_min_entropy(config: StudyConfig, references: Mapping[str, Mapping],
                           measured: dict[str, float],
                           log: Callable[[str], None] = print) -> float:
    """H_min, the entropy the curriculum gate keeps the student above: config.min_entropy as
    given, or, with min_entropy_fraction, that fraction × the starting student's measured
    entropy (eval/overall/entropy of the "student (start)" row of references, label → row with
    its metrics). A derived H_min is recorded in measured (min_entropy_derived) and said."""
    if getattr(config, "min_entropy_fraction", None) is None:
        return config.min_entropy
    start = references["student (start)"]["metrics"][ENTROPY.logged()]
    min_entropy = config.min_entropy_fraction * start
    measured["min_entropy_derived"] = min_entropy
    log(f"curriculum gate: H_min = {config.min_entropy_fraction} × the starting student's "
        f"entropy {start:.4f} = {min_entropy:.4f} nats/token")
    return min_entropy


def _check_teacher_lead(config, teacher_eval, student_eval, measured, shortfalls) -> None:
    graded = {who: [s.correct for s in samples if s.correct is not None]
              for who, samples in (("teacher", teacher_eval), ("student", student_eval))}
    if not graded["teacher"] or not graded["student"]:
        return
    teacher, student = (sum(values) / len(values) for values in graded.values())
    measured.update({"teacher_avg_at_1": teacher, "student_avg_at_1": student,
                     "teacher_lead": teacher - student,
                     "min_teacher_lead": config.min_teacher_lead})
    if teacher - student < config.min_teacher_lead:
        shortfalls["teacher_lead"] = (
            f"the teacher's avg@1 ({teacher:.3f}) is only {teacher - student:+.3f} above the "
            f"starting student's ({student:.3f}), less than min_teacher_lead="
            f"{config.min_teacher_lead}: there is little to distil, and where the teacher is "
            "wrong the student copies it. Use a stronger teacher or a weaker student (or lower "
            "min_teacher_lead to study this pair anyway)")


def _check_eval_cap(config, teacher_eval, measured, shortfalls) -> None:
    longest = max((s.length for s in teacher_eval), default=0)
    truncated = sum(s.truncated for s in teacher_eval) / max(len(teacher_eval), 1)
    measured.update({"teacher_longest_eval_answer": float(longest),
                     "teacher_eval_truncation_rate": truncated,
                     "eval_max_new_tokens": float(config.eval_max_new_tokens)})
    if truncated or config.eval_max_new_tokens < EVAL_CAP_HEADROOM * longest:
        shortfalls["eval_cap"] = (
            f"eval_max_new_tokens={config.eval_max_new_tokens} is below {EVAL_CAP_HEADROOM}× the "
            f"teacher's longest evaluation answer ({longest} tokens; {truncated:.1%} truncated): "
            f"raise it to at least {math.ceil(EVAL_CAP_HEADROOM * longest)}")


def _check_training_cap(config, rollouts, measured, shortfalls) -> None:
    if not rollouts:
        return
    lengths = sorted(s.length for s in rollouts)
    cut = sum(s.truncated for s in rollouts) / len(rollouts)
    measured.update({"teacher_rollout_length_median": float(lengths[len(lengths) // 2]),
                     "teacher_rollout_length_max": float(lengths[-1]),
                     "teacher_rollouts_truncated": cut})
    if cut > MAX_TRUNCATED_AT_TRAINING:
        shortfalls["training_cap"] = (
            f"the training cap truncates {cut:.0%} of the teacher's rollouts (more than "
            f"{MAX_TRUNCATED_AT_TRAINING:.0%}): the student mostly learns cut answers")
    if config.curriculum:
        first = min(config.curriculum)
        below = sum(length > first for length in lengths) / len(lengths)
        measured["teacher_rollouts_longer_than_first_rung"] = below
        if below == 0:
            shortfalls["curriculum_rungs"] = (
                f"no teacher rollout is longer than the curriculum's first rung ({first} "
                "tokens): the curriculum cannot change what is learnt")


def _check_interval(config, student_eval, measured, shortfalls) -> None:
    by_problem = {}
    for sample in student_eval:
        by_problem.setdefault(sample.problem_id, []).append(sample)
    if len(by_problem) < 2:
        return
    variances = variance_components(sample_values({0: student_eval}, "correct"))
    single = expected_half_width(len(by_problem), config.eval_n, len(config.seeds), variances)
    # A paired difference of two cells: both sides' variance, before pairing removes any.
    half_width = math.sqrt(2) * single
    measured.update({"expected_half_width_of_a_difference": half_width,
                     "min_effect": config.min_effect})
    if half_width > config.min_effect:
        shortfalls["interval"] = (
            f"{len(by_problem)} problems × {config.eval_n} samples × {len(config.seeds)} seeds "
            f"give an Avg@k difference a 95 % half-width of about {half_width:.3f}, wider than "
            f"min_effect={config.min_effect}: add problems (eval_limit), samples (eval_n) or "
            "seeds")
