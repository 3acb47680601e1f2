"""The config models flows take as parameters, and YAML files that fill them.

One flat, validated pydantic model per flow, so the Prefect UI renders it as a form with
defaults and rejects a bad value before a run starts, naming the field; YAML files in
``configs/`` fill the same models from the command line (``load_config``), with errors that name
the file, the line or the field.

- ``ExperimentConfig``: one distillation run (the ``distill`` flow's form).
- ``StudyConfig``: a study (the ``grid`` flow's form): cells × seeds, λ mixes, a long horizon,
  the curriculum against a fixed cap, GRPO afterwards, intervals and findings.
- ``EvaluateFlowConfig``: evaluate given models or the newest registered students.
- ``BootstrapFlowConfig``: build the embedded default or the real-weights profile.
- ``RLFlowConfig``: GRPO from every distilled student of a study.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

import distill_core as dc
from tasks.evaluate import DEFAULT_BENCHMARK
from tasks.runs import check_name

DEFAULT = "default"  # the embedded default's teacher / student / problems

REAL_WEIGHTS = "real-weights"  # the SmolLM2-135M profile
# Each profile's prompt: the default models learnt the bare problem; SmolLM2-Instruct is asked to
# box its answer, since the grader's strict rule (the one accuracy counts) reads the box. A bare
# prompt leaves SmolLM2 writing unboxed prose: every answer graded wrong, the study says nothing.
PROFILE_TEMPLATES = {DEFAULT: "bare", REAL_WEIGHTS: "boxed"}
# Response caps, measured against the embedded default's worked solutions (5,000 train and
# the 500 test problems): the training cap truncates 9 % of them (a measurable share, the
# length curriculum's room), the evaluation cap holds 1.5× the longest (170 tokens, a 4-step
# problem with every optional line).
TRAIN_CAP = 128
EVAL_CAP = 256


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    @field_validator("name", "study_experiment", check_fields=False)
    @classmethod
    def _safe_name(cls, name: str) -> str:
        return check_name("experiment", name)

    @field_validator("prompt_template", check_fields=False)
    @classmethod
    def _template_or_the_profiles(cls, template: str | None, info: ValidationInfo) -> str:
        """The prompt template as given, else the profile's (the profile field comes first)."""
        return template or PROFILE_TEMPLATES[info.data.get("profile", DEFAULT)]


def _check_ks(field: str, ks: list[int], n: int) -> None:
    if not ks:
        raise ValueError(f"{field} is empty: give the k of Avg@k / Pass@k, e.g. [1, 4]")
    if min(ks) < 1 or max(ks) > n:
        raise ValueError(f"{field}={ks}: every k must lie in 1..{n} (the samples per problem)")


OBJECTIVE_PATTERN = r"^(sft|dagger|offline_rl|opd|(teacher|student):(0(\.\d+)?|1(\.0+)?))$"
OBJECTIVE_HELP = ("sft, dagger, offline_rl, opd, or teacher:λ / student:λ with λ in [0, 1] the "
                  "weight on reverse KL(q_student ‖ p_teacher)")
REFERENCES = ("teacher", "student (start)")
TEMPLATE_HELP = ("bare: the default task's prompt; boxed: asks instruction-tuned models to box "
                 "their answer; empty: the profile's (bare for default, boxed for real-weights)")


def _check_objective(objective: str) -> str:
    dc.Objective.parse(objective)
    return objective


class _RunSettings(_Config):
    """What one distillation run needs, shared by the distill form and the study form."""

    name: str = Field("demo", description="Experiment name in MLflow; runs group under it "
                      "(letters, digits, '_', '-', '.').")
    profile: Literal["default", "real-weights"] = Field(
        DEFAULT, description="Where teacher, student and problems come from unless given.")
    teacher: str | None = Field(None, description="Teacher directory or hub id (empty: the "
                                                  "profile's).")
    student: str | None = Field(None, description="Student directory or hub id (empty: the "
                                                  "profile's); training starts from it.")
    train_problems: str | None = Field(None, description="Problems JSONL to train on (empty: "
                                                         "the profile's train split).")
    held_out_problems: str | None = Field(None, description="Held-out problems JSONL for the "
                                          "curriculum gate's entropy (empty: the profile's).")
    train_size: int = Field(512, ge=1, description="Train problems used; teacher rollouts "
                                                   "cover exactly these.")
    steps: int = Field(60, ge=1, le=10_000_000, description="Optimiser steps per run.")
    checkpoint_every: int = Field(10, ge=1, description="Steps between checkpoints; the same "
                                  "command after a kill resumes from the newest.")
    batch_size: int = Field(16, ge=1, description="Prompts per optimiser step.")
    learning_rate: float = Field(5e-4, gt=0, le=1, description="AdamW learning rate (5e-4: the "
                                 "validation pilot's best on the embedded default).")
    max_new_tokens: int = Field(TRAIN_CAP, ge=1, le=1_000_000,
                                description="Response cap while training (no curriculum).")
    curriculum: list[int] = Field([], description="Increasing response caps of the length "
                                  "curriculum, e.g. [32, 64, 128] (empty: none).")
    min_entropy: float = Field(0.0, ge=0, description="The curriculum gate's H_min in nats: a "
                               "rung is climbed only while held-out entropy is at least this.")
    stage_steps: int = Field(10, ge=1, description="Steps between curriculum gate decisions.")
    loss: Literal["exact", "sparse", "sampled"] = Field(
        "exact", description="exact: full-vocabulary KL; sparse: against the top-k score "
        "cache (needs cache_k); sampled: REINFORCE reverse KL on student samples.")
    cache_k: int = Field(0, ge=0, description="Top-k of the teacher score cache that "
                         "teacher-prefix runs train from (0: live teacher; needs loss sparse).")
    rollout_temperature: float = Field(1.0, ge=0, description="Sampling temperature of the "
                                       "teacher's and the student's training responses.")
    prompt_template: Literal["bare", "boxed"] | None = Field(
        None, validate_default=True, description=TEMPLATE_HELP + ".")
    benchmarks: list[str] = Field([DEFAULT_BENCHMARK], description="Evaluation benchmarks: "
                                  "'default' (the profile's test split), a file, or name=path.")
    eval_n: int = Field(4, ge=1, description="Samples per evaluation problem.")
    eval_ks: list[int] = Field([1, 4], description="The k of Avg@k and Pass@k (each at most "
                                                   "eval_n).")
    eval_limit: int | None = Field(50, ge=1, description="Problems per benchmark (empty: all).")
    eval_temperature: float = Field(1.0, ge=0, description="Evaluation sampling temperature.")
    eval_max_new_tokens: int = Field(EVAL_CAP, ge=1, description="Evaluation response cap.")
    eval_seed: int = Field(0, description="Evaluation sampling seed, the same for every run "
                           "so that runs are compared on paired samples.")
    register_model: bool = Field(True, description="Register each trained student in MLflow's "
                                                   "model registry.")

    @model_validator(mode="after")
    def _consistent(self):
        _check_ks("eval_ks", self.eval_ks, self.eval_n)
        if (self.loss == "sparse") != (self.cache_k > 0):
            raise ValueError("loss: sparse and cache_k > 0 go together (the sparse loss reads "
                             "the top-k cache)")
        if self.batch_size > self.train_size:
            raise ValueError(f"batch_size={self.batch_size} > train_size={self.train_size}")
        if self.curriculum:
            dc.EntropyGatedLengthCurriculum(tuple(self.curriculum), self.min_entropy)
        return self


class ExperimentConfig(_RunSettings):
    """One distillation run (the distill flow): one objective, one seed."""

    objective: str = Field("sft", pattern=OBJECTIVE_PATTERN, description=OBJECTIVE_HELP + ".")
    seed: int = Field(0, description="Training seed: data order and the student's sampling.")

    @field_validator("objective")
    @classmethod
    def _known_objective(cls, objective: str) -> str:
        return _check_objective(objective)


class StudyConfig(_RunSettings):
    """A study (the grid flow): the 2×2 grid and more, over several seeds, every run evaluated
    on the same paired problems and samples, compared with intervals and summed up as findings.
    """

    cells: list[str] = Field(["sft", "dagger", "offline_rl", "opd"],
                             description="Objectives trained at matched steps (each: "
                             + OBJECTIVE_HELP + ").")
    lambdas: list[float] = Field([], description="Extra KL mixes λ (weight on reverse KL), "
                                 "each trained on the prefix sources of lambda_prefixes.")
    lambda_prefixes: list[Literal["teacher", "student"]] = Field(
        ["teacher", "student"], description="Prefix sources the λ mixes are trained on.")
    compare_curriculum: bool = Field(False, description="Train each of curriculum_cells with "
                                     "the length curriculum and with a fixed cap equal to its "
                                     "top rung.")
    curriculum_cells: list[str] = Field([], description="Cells compared with and without the "
                                        "curriculum (empty: every cell).")
    min_entropy_fraction: float | None = Field(
        None, gt=0, le=10, description="Set H_min to this fraction of the starting student's "
        "measured entropy (needs evaluate_references); empty: min_entropy as given.")
    seeds: list[int] = Field([0], description="Training seeds; every run is repeated per seed "
                             "(evaluation stays paired: eval_seed).")
    baseline: str = Field("student (start)", description="The run every other is compared "
                          "with (paired differences with intervals).")
    evaluate_references: bool = Field(True, description="Also evaluate the teacher and the "
                                      "starting student as they are.")
    eval_every: int | None = Field(None, ge=1, description="Also evaluate every this many "
                                   "steps (Avg@k at matched steps and matched FLOPs).")
    long_steps: int | None = Field(None, ge=1, description="A longer horizon for long_cells "
                                   "(evaluated at steps and at long_steps).")
    long_cells: list[str] = Field([], description="Cells trained to long_steps instead of "
                                  "steps.")
    rl_cells: list[str] = Field([], description="Cells whose students continue with GRPO "
                                "(accuracy reward), evaluated before and after.")
    rl_steps: int = Field(20, ge=1, description="GRPO steps per student.")
    rl_prompts_per_step: int = Field(8, ge=1, description="GRPO prompts per step.")
    rl_group_size: int = Field(4, ge=2, description="GRPO samples per prompt (G >= 2).")
    rl_learning_rate: float = Field(1e-5, gt=0, le=1, description="GRPO learning rate.")
    min_effect: float = Field(0.05, gt=0, le=1, description="The smallest Avg@k difference "
                              "the study must be able to resolve (readiness check).")
    min_teacher_lead: float = Field(0.25, ge=0, le=1, description="How far the teacher's "
                                    "avg@1 must be above the starting student's before "
                                    "training (readiness check; never waived by readiness: "
                                    "warn): a teacher not clearly ahead has little to teach.")
    readiness: Literal["refuse", "warn"] = Field(
        "refuse", description="When the readiness check finds a shortfall before training: "
        "refuse to train, or warn and train anyway (said at the top of the report).")
    executor: Literal["local", "pool"] = Field(
        "local", description="Where the cells' training runs go: local: one after another in "
        "the study's own process; pool: each (cell, seed) as its own flow run of the study-run "
        "deployment on work_pool, so that its workers train them at the same time.")
    work_pool: str = Field("distill-pool", min_length=1, description="With executor pool: the "
                           "Prefect work pool whose workers run the study's runs (it needs a "
                           "study-run deployment and a live worker).")
    max_concurrent_runs: int = Field(4, ge=1, le=1000, description="With executor pool: at "
                                     "most this many of the study's runs submitted at once.")

    @field_validator("cells", "long_cells", "rl_cells", "curriculum_cells")
    @classmethod
    def _known_cells(cls, cells: list[str]) -> list[str]:
        for cell in cells:
            _check_objective(cell)
        return cells

    @field_validator("lambdas")
    @classmethod
    def _in_unit_interval(cls, lambdas: list[float]) -> list[float]:
        bad = [x for x in lambdas if not (math.isfinite(x) and 0 <= x <= 1)]
        if bad:
            raise ValueError(f"λ must lie in [0, 1]; got {bad}")
        return lambdas

    @model_validator(mode="after")
    def _study_consistent(self) -> StudyConfig:
        if not self.cells:
            raise ValueError("cells is empty: name at least one objective")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds={self.seeds}: give distinct training seeds, e.g. [0, 1, 2]")
        for field_name in ("long_cells", "rl_cells", "curriculum_cells"):
            unknown = [c for c in getattr(self, field_name) if c not in self.objectives()]
            if unknown:
                raise ValueError(f"{field_name}={unknown}: not among the study's cells "
                                 f"{self.objectives()}")
        if self.baseline not in (*REFERENCES, *self.objectives()):
            raise ValueError(f"baseline={self.baseline!r} is not a run of this study: use one "
                             f"of {[*REFERENCES, *self.objectives()]}")
        if self.baseline in REFERENCES and not self.evaluate_references:
            raise ValueError(f"baseline={self.baseline!r} needs evaluate_references: true")
        if self.long_cells and (self.long_steps is None or self.long_steps <= self.steps):
            raise ValueError(f"long_cells need long_steps > steps={self.steps}")
        if self.eval_every is not None and self.eval_every > self.steps:
            raise ValueError(f"eval_every={self.eval_every} is longer than the run (steps="
                             f"{self.steps}): evaluate at most every {self.steps} steps")
        if self.compare_curriculum and not self.curriculum:
            raise ValueError("compare_curriculum needs a curriculum, e.g. [32, 64, 128]")
        if self.min_entropy_fraction is not None and not self.evaluate_references:
            raise ValueError("min_entropy_fraction needs evaluate_references: true (it is a "
                             "fraction of the starting student's measured entropy)")
        return self

    def objectives(self) -> list[str]:
        """The study's objectives: cells, then each λ on each of lambda_prefixes."""
        objectives = list(self.cells)
        for lam in self.lambdas:
            objectives += [f"{prefix}:{lam:g}" for prefix in self.lambda_prefixes]
        return list(dict.fromkeys(objectives))


def _study(field_name: str):
    """The study form's default of field_name: the nightly evaluation and the RL flow evaluate
    with the study's procedure, so their numbers line up with the study's."""
    return _RunSettings.model_fields[field_name].default


PROFILE_HELP = "Where models and problems come from: default (the embedded arithmetic task) or " \
    "real-weights (the SmolLM2-135M profile)."


class EvaluateFlowConfig(_Config):
    """Evaluate models on benchmarks: given paths, or the newest version of each registered
    student (the nightly schedule). The evaluation defaults are the study's (eval_n, eval_ks,
    eval_temperature, eval_max_new_tokens, eval_limit, eval_seed, prompt_template), so a
    student's nightly numbers equal its study's."""

    name: str = Field("nightly-evaluation", description="MLflow experiment for the results: a "
                      "parent run per night (tag night), a child run per model.")
    profile: Literal["default", "real-weights"] = Field(
        _study("profile"), description="Whose test split the benchmark 'default' is.")
    models: list[str] = Field([], description="Model directories or hub ids; empty: the newest "
                              "version of each registered student.")
    registered_prefix: str = Field("distill-", description="When models is empty: evaluate the "
                                   "registered models whose names start with this.")
    benchmarks: list[str] = Field(_study("benchmarks"), description="Evaluation benchmarks: "
                                  "'default' (the profile's test split), a file, or name=path.")
    n: int = Field(_study("eval_n"), ge=1, description="Samples per problem (the study's "
                   "eval_n).")
    ks: list[int] = Field(_study("eval_ks"), description="The k of Avg@k and Pass@k, each at "
                          "most n (the study's eval_ks).")
    temperature: float = Field(_study("eval_temperature"), ge=0, description="Sampling "
                               "temperature (the study's eval_temperature).")
    max_new_tokens: int = Field(_study("eval_max_new_tokens"), ge=1, description="Response cap "
                                "(the study's eval_max_new_tokens).")
    limit: int | None = Field(_study("eval_limit"), ge=1, description="Problems per benchmark, "
                              "the first ones (empty: all; the study's eval_limit).")
    prompt_template: Literal["bare", "boxed"] | None = Field(
        _study("prompt_template"), validate_default=True,
        description=TEMPLATE_HELP + " (the study's prompt_template).")
    seed: int = Field(_study("eval_seed"), description="Sampling seed, the same for every model "
                      "and night: paired samples (the study's eval_seed).")
    backend: Literal["hf", "vllm"] = Field("hf", description="hf: transformers' generate; vllm: "
                                           "vLLM in its own environment (tasks/vllm_backend.py).")

    @model_validator(mode="after")
    def _ks_within_n(self) -> EvaluateFlowConfig:
        _check_ks("ks", self.ks, self.n)
        return self


class BootstrapFlowConfig(_Config):
    """Build (or reuse) a profile's problems, teacher and student."""

    profile: Literal["default", "real-weights"] = Field(DEFAULT, description=PROFILE_HELP)


class RLFlowConfig(_Config):
    """GRPO with the same budget from each distilled student of a study (or given checkpoints),
    evaluated before and after with the study's evaluation procedure."""

    name: str = Field("rl-after-distill", description="MLflow experiment for the RL runs.")
    study_experiment: str = Field("demo", description="Experiment holding the grid study.")
    parent_run_id: str | None = Field(None, description="The grid study's parent run id "
                                      "(empty: the newest study of study_experiment).")
    checkpoints: list[str] = Field([], description="Student directories to start from instead "
                                   "of a study's students.")
    profile: Literal["default", "real-weights"] = Field(DEFAULT, description=PROFILE_HELP)
    train_problems: str | None = Field(None, description="Problems JSONL of the RL prompts "
                                       "(empty: the profile's train split).")
    train_size: int = Field(512, ge=1, description="RL prompts used, the first ones.")
    steps: int = Field(20, ge=1, description="GRPO steps per student.")
    prompts_per_step: int = Field(8, ge=1, description="Prompts per GRPO step.")
    group_size: int = Field(4, ge=2, description="Samples per prompt (GRPO's group G, at "
                            "least 2).")
    learning_rate: float = Field(1e-5, gt=0, le=1, description="AdamW learning rate.")
    max_new_tokens: int = Field(_study("max_new_tokens"), ge=1, description="Response cap "
                                "while training (the study's max_new_tokens).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the training "
                               "responses.")
    kl_coef: float = Field(0.0, ge=0, description="Weight of the KL penalty (k3) to the student "
                           "the run starts from (0: none, the accuracy reward alone).")
    prompt_template: Literal["bare", "boxed"] | None = Field(
        _study("prompt_template"), validate_default=True, description=TEMPLATE_HELP + ".")
    seed: int = Field(0, description="Seed of the prompt order and the sampling.")
    benchmarks: list[str] = Field(_study("benchmarks"), description="Evaluation benchmarks: "
                                  "'default' (the profile's test split), a file, or name=path.")
    eval_n: int = Field(_study("eval_n"), ge=1, description="Samples per evaluation problem.")
    eval_ks: list[int] = Field(_study("eval_ks"), description="The k of Avg@k and Pass@k (each "
                               "at most eval_n).")
    eval_limit: int | None = Field(_study("eval_limit"), ge=1, description="Problems per "
                                   "benchmark (empty: all).")
    eval_max_new_tokens: int = Field(_study("eval_max_new_tokens"), ge=1,
                                     description="Evaluation response cap.")
    eval_temperature: float = Field(_study("eval_temperature"), gt=0,
                                    description="Evaluation sampling temperature.")

    @model_validator(mode="after")
    def _ks_within_n(self) -> RLFlowConfig:
        _check_ks("eval_ks", self.eval_ks, self.eval_n)
        return self


def load_config(path: str | Path, model: type[_Config] = ExperimentConfig) -> _Config:
    """A config model from a YAML file; every error is one line naming the file and the line
    or field: not UTF-8 text, a duplicate key, invalid YAML, an unknown or invalid field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a BOM from an editor is harmless
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text (byte {error.start}: {error.reason}); save "
                         "the config as UTF-8 YAML") from None
    if "\x00" in text:
        raise ValueError(f"{path}: holds NUL bytes — a binary file, not a YAML config")
    try:
        fields = yaml.load(text, Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({_yaml_problem(error)})") from None
    if not isinstance(fields, dict):
        raise ValueError(f"{path}: expected a mapping of {model.__name__} fields at the top")
    try:
        return model(**fields)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(config)'}: {e['msg']}"
                             for e in error.errors())
        raise ValueError(f"{path}: invalid {model.__name__}: {problems}") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice is an error, not a silent
    overwrite (the second `steps:` would otherwise win unnoticed)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's message on one line, with the line number it points at."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    return where + " ".join(str(problem).split())
