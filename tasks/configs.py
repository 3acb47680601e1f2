"""The config models flows take as parameters, and YAML files that fill them.

One flat, validated pydantic model per flow, so the Prefect UI renders it as a form with
defaults and rejects a bad value before a run starts, naming the field; YAML files in
``configs/`` fill the same models from the command line (``load_config``), with errors that name
the file, the line or the field.

- ``ExperimentConfig``: one distillation experiment (``distill``) or a study over several
  objective cells (``grid``): inputs, training, the length curriculum, evaluation, tracking.
- ``EvaluateFlowConfig``: evaluate given models or the newest registered students.
- ``BootstrapFlowConfig``: build the embedded default or the real-weights profile.
- ``RLFlowConfig``: GRPO from every distilled student of a study.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

import distill_core as dc
from tasks.evaluate import DEFAULT_BENCHMARK
from tasks.runs import check_name

DEFAULT = "default"  # the embedded default's teacher / student / problems

REAL_WEIGHTS = "real-weights"  # the SmolLM2-135M profile


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    @field_validator("name", "study_experiment", check_fields=False)
    @classmethod
    def _safe_name(cls, name: str) -> str:
        return check_name("experiment", name)


def _check_ks(field: str, ks: list[int], n: int) -> None:
    if not ks:
        raise ValueError(f"{field} is empty: give the k of Avg@k / Pass@k, e.g. [1, 4]")
    if min(ks) < 1 or max(ks) > n:
        raise ValueError(f"{field}={ks}: every k must lie in 1..{n} (the samples per problem)")


class ExperimentConfig(_Config):
    """One distillation experiment, or (with several cells) a study run by the grid flow."""

    name: str = Field("demo", description="Experiment name in MLflow (runs group under it).")
    profile: Literal["default", "real-weights"] = Field(
        DEFAULT, description="Where teacher, student and problems come from unless given.")
    teacher: str | None = Field(None, description="Teacher directory or hub id (None: profile).")
    student: str | None = Field(None, description="Student directory or hub id (None: profile).")
    train_problems: str | None = Field(None, description="Problems JSONL (None: profile's).")
    held_out_problems: str | None = Field(None, description="Held-out JSONL for the gate.")
    train_size: int = Field(512, ge=1, description="Train problems used (teacher rollouts "
                                                   "cover exactly these).")
    objective: str = Field("sft", description="The distill flow's cell: sft, dagger, "
                                              "offline_rl, opd, or teacher:λ / student:λ.")
    cells: list[str] = Field(["sft", "dagger", "offline_rl", "opd"],
                             description="The grid flow's cells, trained at matched steps.")
    lambdas: list[float] = Field([], description="Grid: extra KL mixes λ (reverse weight) per "
                                                 "prefix source, e.g. [0.5].")
    compare_curriculum: bool = Field(False, description="Grid: also train every cell with the "
                                                        "length curriculum.")
    steps: int = Field(40, ge=1, le=10_000_000, description="Optimiser steps per cell.")
    checkpoint_every: int = Field(10, ge=1, description="Steps between checkpoints; a rerun "
                                  "after a kill resumes from the newest.")
    batch_size: int = Field(16, ge=1, description="Prompts per step.")
    learning_rate: float = Field(1e-3, gt=0, le=1, description="AdamW learning rate.")
    max_new_tokens: int = Field(64, ge=1, le=1_000_000,
                                description="Response cap (no curriculum).")
    curriculum: list[int] = Field([], description="Increasing max lengths, e.g. [16, 32, 64].")
    min_entropy: float = Field(0.0, ge=0, description="The curriculum gate's H_min (nats).")
    stage_steps: int = Field(10, ge=1, description="Steps between curriculum gates.")
    loss: Literal["exact", "sparse", "sampled"] = "exact"
    cache_k: int = Field(0, ge=0, description="> 0: teacher-prefix cells train from a top-k "
                                              "score cache (needs loss: sparse).")
    rollout_temperature: float = Field(1.0, ge=0)
    prompt_template: str = Field("bare", description="bare (default task) or boxed.")
    seed: int = 0
    benchmarks: list[str] = Field([DEFAULT_BENCHMARK], description="Evaluation benchmarks: "
                                  "'default', a file, or name=path.")
    eval_n: int = Field(4, ge=1, description="Samples per evaluation problem.")
    eval_ks: list[int] = Field([1, 4], description="k of Avg@k / Pass@k (each <= eval_n).")
    eval_limit: int | None = Field(100, ge=1, description="Problems per benchmark (None: all).")
    eval_temperature: float = Field(1.0, ge=0)
    eval_max_new_tokens: int = Field(64, ge=1)
    evaluate_references: bool = Field(True, description="Grid: also evaluate the teacher and "
                                                        "the starting student.")
    register_model: bool = Field(True, description="Register each trained student in MLflow.")

    @field_validator("cells")
    @classmethod
    def _known_cells(cls, cells: list[str]) -> list[str]:
        if not cells:
            raise ValueError("cells is empty: name at least one objective")
        for cell in cells:
            dc.Objective.parse(cell)
        return cells

    @field_validator("objective")
    @classmethod
    def _known_objective(cls, objective: str) -> str:
        dc.Objective.parse(objective)
        return objective

    @field_validator("lambdas")
    @classmethod
    def _in_unit_interval(cls, lambdas: list[float]) -> list[float]:
        bad = [x for x in lambdas if not (math.isfinite(x) and 0 <= x <= 1)]
        if bad:
            raise ValueError(f"λ must lie in [0, 1]; got {bad}")
        return lambdas

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentConfig:
        _check_ks("eval_ks", self.eval_ks, self.eval_n)
        if (self.loss == "sparse") != (self.cache_k > 0):
            raise ValueError("loss: sparse and cache_k > 0 go together (the sparse loss reads "
                             "the top-k cache)")
        if self.batch_size > self.train_size:
            raise ValueError(f"batch_size={self.batch_size} > train_size={self.train_size}")
        if self.curriculum or self.compare_curriculum:
            dc.EntropyGatedLengthCurriculum(tuple(self.curriculum or (self.max_new_tokens,)),
                                            self.min_entropy)
        if self.compare_curriculum and not self.curriculum:
            raise ValueError("compare_curriculum needs a curriculum, e.g. [16, 32, 64]")
        return self


class EvaluateFlowConfig(_Config):
    """Evaluate models on benchmarks: given paths, or the newest version of each registered
    student (the nightly schedule)."""

    name: str = Field("nightly-evaluation", description="MLflow experiment for the results.")
    profile: Literal["default", "real-weights"] = Field(
        DEFAULT, description="Whose test split the benchmark 'default' is.")
    models: list[str] = Field([], description="Model directories / hub ids; empty: the newest "
                                              "version of each registered student.")
    registered_prefix: str = Field("distill-", description="Registered models to evaluate "
                                                           "when models is empty.")
    benchmarks: list[str] = Field([DEFAULT_BENCHMARK])
    n: int = Field(4, ge=1)
    ks: list[int] = Field([1, 4])
    temperature: float = Field(1.0, ge=0)
    max_new_tokens: int = Field(64, ge=1)
    limit: int | None = Field(100, ge=1)
    prompt_template: str = "bare"
    seed: int = 0
    backend: Literal["hf", "vllm"] = "hf"

    @model_validator(mode="after")
    def _ks_within_n(self) -> EvaluateFlowConfig:
        _check_ks("ks", self.ks, self.n)
        return self


class BootstrapFlowConfig(_Config):
    profile: Literal["default", "real-weights"] = DEFAULT


class RLFlowConfig(_Config):
    """GRPO with the same budget from each distilled student of a study (or given checkpoints),
    evaluated before and after."""

    name: str = Field("rl-after-distill", description="MLflow experiment for the RL runs.")
    study_experiment: str = Field("demo", description="Experiment holding the grid study.")
    parent_run_id: str | None = Field(None, description="The grid's parent run (None: newest).")
    checkpoints: list[str] = Field([], description="Student directories instead of a study.")
    profile: Literal["default", "real-weights"] = DEFAULT
    train_problems: str | None = Field(None, description="RL prompts (None: profile's train).")
    train_size: int = Field(512, ge=1)
    steps: int = Field(20, ge=1)
    prompts_per_step: int = Field(8, ge=1)
    group_size: int = Field(4, ge=2, description="Samples per prompt (GRPO's group, G >= 2).")
    learning_rate: float = Field(1e-5, gt=0, le=1)
    max_new_tokens: int = Field(96, ge=1)
    temperature: float = Field(1.0, gt=0)
    kl_coef: float = Field(0.0, ge=0)
    prompt_template: str = "bare"
    seed: int = 0
    benchmarks: list[str] = Field([DEFAULT_BENCHMARK])
    eval_n: int = Field(4, ge=1)
    eval_ks: list[int] = Field([1, 4])
    eval_limit: int | None = Field(50, ge=1)
    eval_max_new_tokens: int = Field(96, ge=1)
    eval_temperature: float = Field(1.0, gt=0)

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
