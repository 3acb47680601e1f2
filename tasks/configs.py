"""The config models flows take as parameters, and YAML files that fill them.

One flat, validated pydantic model per flow, so the Prefect UI renders it as a form with
defaults and rejects a bad value before a run starts, naming the field; YAML files in
``configs/`` fill the same models from the command line (``load_config``), with errors that name
the file, the line or the field. The forms' knobs are not written here: they are generated from
the stage configs' declarations (``tasks.settings``), so a default, a bound or a description has
one home; what is written here is what only a flow has (where models come from, a study's cells,
seeds and analysis). Validating a form builds every stage config it will make.

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
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    create_model,
    field_validator,
    model_validator,
)

import distill_core as dc
from tasks.evaluate import EvalConfig
from tasks.plan import check_evaluate_stage_config, check_rl_stage_configs, check_stage_configs
from tasks.profiles import DEFAULT, DEFAULT_BENCHMARK, PROFILE_HELP, PROFILES, ProfileName
from tasks.rl import GRPOConfig
from tasks.runs import check_name
from tasks.settings import form_fields, profile_defaults
from tasks.train import TrainConfig

REFERENCES = ("teacher", "student (start)")  # the study's untrained reference runs
OBJECTIVE_CHOICES = (*dc.PRESETS, "teacher:λ", "student:λ")
OBJECTIVE_HELP = ("sft, dagger, offline_rl, opd, or teacher:λ / student:λ with λ in [0, 1] the "
                  "weight on reverse KL(q_student ‖ p_teacher)")


def _objective(text: str) -> str:
    """An objective's config text, refused with the choices when it is none of them."""
    try:
        dc.Objective.parse(text)
    except ValueError:
        raise ValueError(f"objective {text!r}: must be {', '.join(OBJECTIVE_CHOICES[:-1])} or "
                         f"{OBJECTIVE_CHOICES[-1]} (λ in [0, 1], e.g. student:0.25)") from None
    return text


# In the Prefect UI an objective is a choice among the four cells, or a λ mix typed in.
_OBJECTIVE_SCHEMA = {"anyOf": [
    {"title": "a cell of the grid", "enum": list(dc.PRESETS)},
    {"title": "a λ mix: teacher:λ or student:λ", "type": "string",
     "pattern": r"^(teacher|student):(0(\.\d+)?|1(\.0+)?)$"}]}
Objective = Annotated[str, AfterValidator(_objective), WithJsonSchema(_OBJECTIVE_SCHEMA)]


# The rules between fields that JSON Schema can state: the Prefect server checks them when a
# form is submitted (a deployment enforces its parameter schema), before a run is queued. The
# others (relative bounds such as batch_size <= train_size) are checked by the model when the
# run starts, before any work.
_SPARSE_NEEDS_CACHE = [
    {"if": {"required": ["loss"], "properties": {"loss": {"const": "sparse"}}},
     "then": {"required": ["cache_k"], "properties": {"cache_k": {"minimum": 1}}}},
    {"if": {"required": ["cache_k"], "properties": {"cache_k": {"minimum": 1}}},
     "then": {"required": ["loss"], "properties": {"loss": {"const": "sparse"}}}},
]


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    @field_validator("name", "study_experiment", check_fields=False)
    @classmethod
    def _safe_name(cls, name: str) -> str:
        return check_name("experiment", name)

    @model_validator(mode="before")
    @classmethod
    def _profile_defaults(cls, data: Any) -> Any:
        """Empty profile knobs (prompt template, caps) take the form's profile's values."""
        if not isinstance(data, dict) or data.get("profile", DEFAULT) not in PROFILES:
            return data
        filled = dict(data)
        for stage, prefix in cls._stages:
            for name, value in profile_defaults(stage, filled.get("profile", DEFAULT),
                                                prefix).items():
                if name in cls.model_fields and filled.get(name) is None:
                    filled[name] = value
        return filled

    # (stage config, field prefix) of the knobs the form holds
    _stages: ClassVar[tuple] = ()


def _knobs(name: str, base: type, *sections: dict) -> type:
    """A form class: base's fields, then each section's generated knobs in order."""
    fields = {k: v for section in sections for k, v in section.items()}
    return create_model(name, __base__=base, **fields)


BENCHMARKS_HELP = ("Evaluation benchmarks: 'default' (the profile's test split), a file, or "
                   "name=path.")
# How the study's and the RL flow's forms hold the stages' knobs: the trainer's unprefixed, the
# evaluation's as eval_*, GRPO's as rl_* (in a study; unprefixed in the RL flow). A study's GRPO
# follows its training cap, sampling temperature, prompt template and seeds.
_TRAIN = form_fields(TrainConfig, group="training")
_EVAL = form_fields(EvalConfig, "eval_", group="evaluation")
_STUDY_RL = form_fields(GRPOConfig, "rl_", group="GRPO after distillation",
                        exclude=("max_new_tokens", "temperature", "prompt_template", "seed"))


class _RunBase(_Config):
    """What one distillation run needs besides its knobs, shared by the distill and study
    forms: where models and problems come from."""

    _stages: ClassVar[tuple] = ((TrainConfig, ""), (EvalConfig, "eval_"))

    name: str = Field("demo", description="Experiment name in MLflow; runs group under it "
                      "(letters, digits, '_', '-', '.').")
    profile: ProfileName = Field(DEFAULT, description=PROFILE_HELP)
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
    benchmarks: list[str] = Field([DEFAULT_BENCHMARK], min_length=1,
                                  description=BENCHMARKS_HELP)
    register_model: bool = Field(True, description="Register each trained student in MLflow's "
                                                   "model registry.")

    @model_validator(mode="after")
    def _stages_accept(self):
        """The form's own rules, then every stage config the plan makes from it, built now:
        each stage's cross-field rules (tasks.train.check_train_rules, EvalConfig's) refuse a
        bad mix here, naming the fields, before a run is queued or any work starts."""
        self._check_own_fields()
        if self.batch_size > self.train_size:
            raise ValueError(f"batch_size={self.batch_size} > train_size={self.train_size}")
        check_stage_configs(self)
        return self

    def _check_own_fields(self) -> None:
        """Rules among the form's fields other than the knobs (a study adds its own)."""


_RunSettings = _knobs("_RunSettings", _RunBase, _TRAIN, _EVAL)


class _ObjectiveFirst(_Config):
    objective: Objective = Field("sft", description=OBJECTIVE_HELP + ".")


class ExperimentConfig(_RunSettings, _ObjectiveFirst):
    """One distillation run (the distill flow): one objective, one seed."""

    model_config = ConfigDict(json_schema_extra={"allOf": _SPARSE_NEEDS_CACHE})

    seed: int = Field(0, description="Training seed: data order and the student's sampling.")


class _StudyBase(_RunSettings):
    """A study's runs and analysis besides the knobs (the grid flow's form)."""

    model_config = ConfigDict(json_schema_extra={"allOf": [*_SPARSE_NEEDS_CACHE, {
        "if": {"required": ["compare_curriculum"],
               "properties": {"compare_curriculum": {"const": True}}},
        "then": {"required": ["curriculum"], "properties": {"curriculum": {"minItems": 1}}}}]})

    cells: list[Objective] = Field(["sft", "dagger", "offline_rl", "opd"], min_length=1,
                                   description="Objectives trained at matched steps (each: "
                                   + OBJECTIVE_HELP + ").")
    lambdas: list[float] = Field([], description="Extra KL mixes λ (weight on reverse KL), "
                                 "each trained on the prefix sources of lambda_prefixes.")
    lambda_prefixes: list[Literal["teacher", "student"]] = Field(
        ["teacher", "student"], description="Prefix sources the λ mixes are trained on.")
    compare_curriculum: bool = Field(False, description="Train each of curriculum_cells with "
                                     "the length curriculum and with a fixed cap equal to its "
                                     "top rung.")
    curriculum_cells: list[Objective] = Field([], description="Cells compared with and "
                                              "without the curriculum (empty: every cell).")
    min_entropy_fraction: float | None = Field(
        None, gt=0, le=10, description="Set H_min to this fraction of the starting student's "
        "measured entropy (needs evaluate_references); empty: min_entropy as given.")
    seeds: list[int] = Field([0], description="Training seeds; every run is "
                             "repeated per seed (evaluation stays paired: eval_seed).")
    baseline: str = Field("student (start)", description="The run every other is compared "
                          "with (paired differences with intervals).")
    evaluate_references: bool = Field(True, description="Also evaluate the teacher and the "
                                      "starting student as they are.")
    eval_every: int | None = Field(None, ge=1, description="Also evaluate every this many "
                                   "steps (Avg@k at matched steps and matched FLOPs).")
    long_steps: int | None = Field(None, ge=1, description="A longer horizon for long_cells "
                                   "(evaluated at steps and at long_steps).")
    long_cells: list[Objective] = Field([], description="Cells trained to long_steps instead "
                                        "of steps.")
    rl_cells: list[Objective] = Field([], description="Cells whose students continue with "
                                      "GRPO (accuracy reward; see the rl_ fields), evaluated "
                                      "before and after.")
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

    @field_validator("lambdas")
    @classmethod
    def _in_unit_interval(cls, lambdas: list[float]) -> list[float]:
        bad = [x for x in lambdas if not (math.isfinite(x) and 0 <= x <= 1)]
        if bad:
            raise ValueError(f"λ must lie in [0, 1]; got {bad}")
        return lambdas

    def _check_own_fields(self) -> None:
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

    def objectives(self) -> list[str]:
        """The study's objectives: cells, then each λ on each of lambda_prefixes."""
        objectives = list(self.cells)
        for lam in self.lambdas:
            objectives += [f"{prefix}:{lam:g}" for prefix in self.lambda_prefixes]
        return list(dict.fromkeys(objectives))


StudyConfig = create_model(
    "StudyConfig", __base__=_StudyBase, __module__=__name__,
    __doc__="A study (the grid flow): the 2×2 grid and more, over several seeds, every run "
    "evaluated on the same paired problems and samples, compared with intervals and summed up "
    "as findings. Its knobs are the trainer's, the evaluation's (eval_*) and GRPO's (rl_*).",
    **_STUDY_RL)


class _EvaluateBase(_Config):
    _stages: ClassVar[tuple] = ((EvalConfig, ""),)

    name: str = Field("nightly-evaluation", description="MLflow experiment for the results: a "
                      "parent run per night (tag night), a child run per model.")
    profile: ProfileName = Field(DEFAULT, description="Whose test split the benchmark "
                                 "'default' is. " + PROFILE_HELP)
    models: list[str] = Field([], description="Model directories or hub ids; empty: the newest "
                              "version of each registered student.")
    registered_prefix: str = Field("distill-", description="When models is empty: evaluate the "
                                   "registered models whose names start with this.")
    benchmarks: list[str] = Field([DEFAULT_BENCHMARK], min_length=1,
                                  description=BENCHMARKS_HELP)

    @model_validator(mode="after")
    def _stage_accepts(self):
        check_evaluate_stage_config(self)
        return self


EvaluateFlowConfig = create_model(
    "EvaluateFlowConfig", __base__=_EvaluateBase, __module__=__name__,
    __doc__="Evaluate models on benchmarks: given paths, or the newest version of each "
    "registered student (the nightly schedule). A registered student is evaluated with its own "
    "study's settings (its run's eval.* params); the knobs here, the evaluation stage's with "
    "the same defaults as a study's eval_* fields, are for given models and students whose run "
    "recorded none.", **form_fields(EvalConfig, group="evaluation"))


class BootstrapFlowConfig(_Config):
    """Build (or reuse) a profile's problems, teacher and student."""

    profile: ProfileName = Field(DEFAULT, description=PROFILE_HELP)


class _RLBase(_Config):
    _stages: ClassVar[tuple] = ((GRPOConfig, ""), (EvalConfig, "eval_"))

    name: str = Field("rl-after-distill", description="MLflow experiment for the RL runs.")
    study_experiment: str = Field("demo", description="Experiment holding the grid study.")
    parent_run_id: str | None = Field(None, description="The grid study's parent run id "
                                      "(empty: the newest study of study_experiment).")
    checkpoints: list[str] = Field([], description="Student directories to start from instead "
                                   "of a study's students.")
    profile: ProfileName = Field(DEFAULT, description=PROFILE_HELP)
    train_problems: str | None = Field(None, description="Problems JSONL of the RL prompts "
                                       "(empty: the profile's train split).")
    train_size: int = Field(512, ge=1, description="RL prompts used, the first ones.")
    benchmarks: list[str] = Field([DEFAULT_BENCHMARK], min_length=1,
                                  description=BENCHMARKS_HELP)

    @model_validator(mode="after")
    def _stages_accept(self):
        check_rl_stage_configs(self)
        return self


RLFlowConfig = create_model(
    "RLFlowConfig", __base__=_RLBase, __module__=__name__,
    __doc__="GRPO with the same budget from each distilled student of a study (or given "
    "checkpoints), evaluated before and after with the study's evaluation procedure: the "
    "knobs are GRPO's and the evaluation stage's (eval_*), with their one set of defaults.",
    **form_fields(GRPOConfig, group="GRPO"), **_EVAL)


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
