"""The experiment configs flows take as parameters, and the plain steps that turn them into work.

One flat, validated pydantic model per flow, so the Prefect UI renders it as a form with
defaults and rejects a bad value before a run starts, naming the field; YAML files in
``configs/`` fill the same models from the command line (``load_config``).

- ``ExperimentConfig``: one distillation experiment (``distill``) or a study over several
  objective cells (``grid``): inputs, training, the length curriculum, evaluation, tracking.
- ``EvaluateFlowConfig``: evaluate given models or the newest registered students.
- ``BootstrapFlowConfig``: build the embedded default or the real-weights profile.

The steps here (``resolve_inputs``, ``cells``, ``train_config``, ``eval_config``,
``results_table``) hold every decision about ML meaning, so the flows stay wiring only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

import distill_core as dc
from tasks.artifacts import (
    artifact_root,
    cached_build,
    code_version,
    content_hash,
    file_hash,
    package_modules,
)
from tasks.data import read_problems, write_problems
from tasks.evaluate import DEFAULT_BENCHMARK, EvalConfig
from tasks.runs import RunSpec, inside, slug
from tasks.train import TrainConfig

DEFAULT = "default"  # the embedded default's teacher / student / problems
REAL_WEIGHTS = "real-weights"  # the SmolLM2-135M profile


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


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
    learning_rate: float = Field(1e-3, gt=0)
    max_new_tokens: int = Field(64, ge=1, description="Response cap (no curriculum).")
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
        if self.eval_ks and max(self.eval_ks) > self.eval_n:
            raise ValueError(f"eval_ks={self.eval_ks} has k > eval_n={self.eval_n}")
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
        if not self.ks or max(self.ks) > self.n or min(self.ks) < 1:
            raise ValueError(f"ks={self.ks} must be 1..n (n={self.n})")
        return self


class BootstrapFlowConfig(_Config):
    profile: Literal["default", "real-weights"] = DEFAULT


def load_config(path: str | Path, model: type[_Config] = ExperimentConfig) -> _Config:
    """A config model from a YAML file; errors name the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        fields = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(fields, dict):
        raise ValueError(f"{path}: expected a mapping of {model.__name__} fields at the top")
    try:
        return model(**fields)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(config)'}: {e['msg']}"
                             for e in error.errors())
        raise ValueError(f"{path}: invalid {model.__name__}: {problems}") from error


# ----------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class Inputs:
    """Resolved paths of one experiment: every later step takes these, never the profile."""

    teacher: str
    student: str
    train_problems: str
    held_out_problems: str
    benchmarks: tuple[str, ...]


def bootstrap(profile: str, root: str | Path | None = None, log=print):
    """The profile's data and models (built once, then reused from the artifact directory)."""
    from tasks.bootstrap import bootstrap_default, bootstrap_real_weights

    if profile == REAL_WEIGHTS:
        return bootstrap_real_weights(root=root, log=log)
    return bootstrap_default(root=root, log=log)


def resolve_inputs(config: ExperimentConfig, root: str | Path | None = None,
                   log=print) -> Inputs:
    """Teacher, student and problem files: the config's, else the profile's (bootstrapped when
    needed). The train problems are cut to train_size into a content-addressed file, so teacher
    rollouts cover exactly the problems training draws."""
    needs_profile = None in (config.teacher, config.student, config.train_problems,
                             config.held_out_problems) or DEFAULT_BENCHMARK in config.benchmarks
    profile = bootstrap(config.profile, root, log) if needs_profile else None
    train_source = config.train_problems or str(profile.split("train"))
    held_out = config.held_out_problems or str(profile.split("held_out"))
    benchmarks = _benchmark_specs(config.benchmarks, profile)
    return Inputs(
        teacher=config.teacher or str(profile.teacher_dir),
        student=config.student or str(profile.student_dir),
        train_problems=str(subset(train_source, config.train_size, root)),
        held_out_problems=held_out,
        benchmarks=benchmarks,
    )


def _benchmark_specs(benchmarks: list[str], profile) -> tuple[str, ...]:
    """The config's benchmark specs with "default" pointing at the profile's test split."""
    return tuple(f"{DEFAULT_BENCHMARK}={_default_test_split(profile)}"
                 if spec == DEFAULT_BENCHMARK else spec for spec in benchmarks)


def _default_test_split(profile) -> Path:
    test = profile.split("test")
    if not test.exists():  # the real-weights profile has train and held-out only
        return profile.split("held_out")
    return test


def subset(problems_file: str | Path, size: int, root: str | Path | None = None) -> Path:
    """The first size problems of a file, as a cached problems JSONL."""
    problems = read_problems(problems_file)
    if size > len(problems):
        raise ValueError(f"train_size={size} but {problems_file} has {len(problems)} problems")

    def build(out: Path) -> None:
        write_problems(problems[:size], out / "problems.jsonl")

    key = content_hash(file_hash(problems_file), size)
    directory, _ = cached_build("data/subsets", key, build, root=root,
                                describe={"source": str(problems_file), "size": size})
    return directory / "problems.jsonl"


@dataclass(frozen=True)
class Cell:
    """One training run of a study: its objective and whether it uses the curriculum."""

    objective: str
    curriculum: bool = False

    @property
    def label(self) -> str:
        return self.objective + (" +curriculum" if self.curriculum else "")

    @property
    def slug(self) -> str:
        return self.label.replace(":", "-").replace(" +", "-")


def cells(config: ExperimentConfig) -> list[Cell]:
    """The grid's runs: the configured cells, each λ for both prefix sources, and (optionally)
    each of those again with the length curriculum."""
    objectives = list(config.cells)
    for lam in config.lambdas:
        objectives += [f"teacher:{lam:g}", f"student:{lam:g}"]
    objectives = list(dict.fromkeys(objectives))
    plain = [Cell(o, curriculum=bool(config.curriculum) and not config.compare_curriculum)
             for o in objectives]
    if config.compare_curriculum:
        plain += [Cell(o, curriculum=True) for o in objectives]
    return plain


def train_config(config: ExperimentConfig, inputs: Inputs, cell: Cell,
                 output_dir: str | Path, root: str | Path | None = None) -> TrainConfig:
    objective = dc.Objective.parse(cell.objective)
    sparse = config.cache_k > 0 and not objective.on_policy
    return TrainConfig(
        objective=cell.objective, teacher=inputs.teacher, student=inputs.student,
        train_problems=inputs.train_problems, held_out_problems=inputs.held_out_problems,
        output_dir=str(output_dir), steps=config.steps, batch_size=config.batch_size,
        learning_rate=config.learning_rate, max_new_tokens=config.max_new_tokens,
        curriculum=tuple(config.curriculum) if cell.curriculum else (),
        min_entropy=config.min_entropy, stage_steps=config.stage_steps,
        loss="sparse" if sparse else ("exact" if config.loss == "sparse" else config.loss),
        cache_k=config.cache_k if sparse else 0,
        rollout_temperature=config.rollout_temperature, prompt_template=config.prompt_template,
        seed=config.seed, checkpoint_every=min(config.checkpoint_every, config.steps),
        artifacts_root=str(artifact_root(root)),
    )


# The code whose change can change a run's result: part of every run's identity, so a rerun after
# a code change trains anew instead of resuming a checkpoint the old code wrote.
RUN_CODE = ("tasks.train", "tasks.loop", "tasks.checkpoints", "tasks.rollout", "tasks.scoring",
            "tasks.models", "tasks.evaluate", "tasks.grader", "tasks.compute", "tasks.data",
            "tasks.rl")


def code_identity() -> str:
    return code_version([*package_modules("distill_core"), *RUN_CODE])


def study_directory(config: ExperimentConfig, inputs: Inputs, root: str | Path,
                    kind: str = "grid") -> tuple[Path, str]:
    """(folder, identity key) of a study or single experiment: the same config, inputs and code
    give the same folder, so a rerun after a kill finds its checkpoints there."""
    key = content_hash(kind, config.model_dump(), inputs, code_identity())
    return inside(root, "runs", config.name, f"{kind}-{key[:12]}"), key


def cell_tags(cell: Cell, seed: int) -> dict[str, str]:
    """The MLflow tags a cell's run carries (what the report and MLflow's UI group by)."""
    objective = dc.Objective.parse(cell.objective)
    return {"cell": cell.label, "objective": cell.objective, "seed": str(seed),
            "prefix_source": objective.prefix_source, "lambda": f"{objective.reverse_weight:g}",
            "curriculum": str(cell.curriculum).lower()}


def cell_spec(config: ExperimentConfig, inputs: Inputs, cell: Cell, train: TrainConfig,
              run_dir: Path, parent_run_id: str | None) -> RunSpec:
    """The tracked run of one cell: its identity is its training and evaluation settings."""
    evaluation = eval_config(config, inputs, "<the trained student>")
    key = content_hash(config.name, cell.label, train.fingerprint(), evaluation,
                       code_identity())
    return RunSpec(config.name, cell.label, cell_tags(cell, config.seed),
                   {"experiment": config.model_dump(), "train": train}, run_dir, key,
                   parent_run_id)


def reference_spec(config: ExperimentConfig, inputs: Inputs, label: str, model: str,
                   run_dir: Path, parent_run_id: str | None) -> RunSpec:
    """The tracked run of an untrained reference model (the teacher, the starting student)."""
    key = content_hash(config.name, label, model, eval_config(config, inputs, model),
                       code_identity())
    return RunSpec(config.name, label, {"cell": label, "reference": "true",
                                        "seed": str(config.seed)},
                   {"experiment": config.model_dump(), "model": model}, run_dir, key,
                   parent_run_id)


def grid_spec(config: ExperimentConfig, inputs: Inputs, study: list[Cell],
              root: str | Path) -> RunSpec:
    """The tracked parent run of a grid study (its children are cell_spec / reference_spec)."""
    run_dir, key = study_directory(config, inputs, root)
    return RunSpec(config.name, f"{config.name} grid",
                   {"study": "grid", "cells": ",".join(c.label for c in study)},
                   {"experiment": config.model_dump()}, run_dir, key)


def cell_directory(study_dir: Path, label: str) -> Path:
    return inside(study_dir, slug(label))


def eval_config(config: ExperimentConfig | RLFlowConfig, inputs: Inputs | RLInputs,
                model: str) -> EvalConfig:
    """The one evaluation procedure of a flow's config (the grid's and the RL flow's fields
    share their names)."""
    return EvalConfig(model=model, benchmarks=inputs.benchmarks, n=config.eval_n,
                      ks=tuple(config.eval_ks), temperature=config.eval_temperature,
                      max_new_tokens=config.eval_max_new_tokens, seed=config.seed,
                      prompt_template=config.prompt_template, limit=config.eval_limit)


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


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else (
        format(value, spec))


def teacher_product_configs(config: ExperimentConfig, inputs: Inputs, cells_: list[Cell],
                            root: str | Path | None = None) -> list[TrainConfig]:
    """One TrainConfig per distinct set of teacher products (rollouts, score cache) the
    teacher-prefix cells need; student-prefix cells need none. Priming these before training
    lets every cell share them."""
    needed: dict[tuple, TrainConfig] = {}
    for cell in cells_:
        train = train_config(config, inputs, cell, Path(artifact_root(root)) / "unused", root)
        if not train.parsed_objective.on_policy:
            needed.setdefault((train.longest_response, train.cache_k), train)
    return list(needed.values())


def flow_eval_config(config: EvaluateFlowConfig, model: str) -> EvalConfig:
    return EvalConfig(model=model, benchmarks=tuple(config.benchmarks), n=config.n,
                      ks=tuple(config.ks), temperature=config.temperature,
                      max_new_tokens=config.max_new_tokens, seed=config.seed,
                      prompt_template=config.prompt_template, limit=config.limit,
                      backend=config.backend)


def grid_report(tracking_uri: str, experiment: str, parent_run_id: str | None = None) -> str:
    """The results table of a grid study, read back from MLflow (the newest, unless given)."""
    from tasks.study import newest_grid, read_study
    from tasks.tracking import Tracker

    with Tracker(tracking_uri) as tracker:
        parent = parent_run_id or newest_grid(tracker, experiment)
        if parent is None:
            raise ValueError(f"no grid run in experiment {experiment!r} at {tracking_uri}; "
                             "run `distill grid CONFIG` first")
        study = read_study(tracker, parent_run_id=parent)
    rows = [{"cell": run.name, "metrics": dict(run.metrics), "train": dict(run.metrics)}
            for run in study.runs]
    return f"grid run {parent}\n" + results_table(rows, study.eval_ks or [1])


def json_list(text: str | None) -> list:
    import json

    return json.loads(text) if text else []


# ----------------------------------------------------------------------- RL after distillation


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
    learning_rate: float = Field(1e-5, gt=0)
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
        if not self.eval_ks or max(self.eval_ks) > self.eval_n:
            raise ValueError(f"eval_ks={self.eval_ks} must be <= eval_n={self.eval_n}")
        return self


@dataclass(frozen=True)
class RLInputs:
    """Resolved paths of an RL flow: its prompts and benchmarks (the sources are the models)."""

    train_problems: str
    benchmarks: tuple[str, ...]


def resolve_rl_inputs(config: RLFlowConfig, root: str | Path | None = None,
                      log=print) -> RLInputs:
    """The RL prompts (cut to train_size) and benchmarks; the profile is bootstrapped (or found
    in the artifact directory) only when its problems are asked for."""
    needs_profile = config.train_problems is None or DEFAULT_BENCHMARK in config.benchmarks
    profile = bootstrap(config.profile, root, log) if needs_profile else None
    train_source = config.train_problems or str(profile.split("train"))
    return RLInputs(str(subset(train_source, config.train_size, root)),
                    _benchmark_specs(config.benchmarks, profile))


def rl_sources(config: RLFlowConfig, tracking_uri: str,
               log=print) -> tuple[str | None, list[dict]]:
    """(grid parent run id or None, the students to start GRPO from): config.checkpoints, else
    every trained cell of the grid study (its final checkpoint, from the run's train.output_dir).
    Each source names a reference model whose tokenizer it must share (GRPO checks it before
    sampling): the study's starting student, or the first of config.checkpoints. Cells whose run
    did not finish (a failed cell) are skipped and named through log."""
    if config.checkpoints:  # all must share the first one's tokenizer
        return None, [{"label": Path(c).name, "checkpoint": c, "source_run": "",
                       "reference": config.checkpoints[0]} for c in config.checkpoints]
    from tasks.checkpoints import latest_checkpoint
    from tasks.study import newest_grid, read_study
    from tasks.tracking import Tracker

    with Tracker(tracking_uri) as tracker:
        parent = config.parent_run_id or newest_grid(tracker, config.study_experiment)
        if parent is None:
            raise ValueError(f"no grid study in experiment {config.study_experiment!r} at "
                             f"{tracking_uri}; run `distill grid` first or pass checkpoints")
        study = read_study(tracker, parent_run_id=parent)
    sources = []
    for run in study.runs:
        if run.reference:
            continue
        if run.status != "FINISHED":
            log(f"skipping cell {run.name!r} (run {run.run_id}): its run is {run.status}, "
                "not FINISHED")
            continue
        output_dir = run.params.get("train.output_dir")
        checkpoint = latest_checkpoint(output_dir) if output_dir else None
        if checkpoint is None:
            raise FileNotFoundError(f"cell {run.name!r} (run {run.run_id}) has no checkpoint "
                                    f"under {output_dir}; was it trained on this machine and "
                                    "artifact directory?")
        sources.append({"label": run.name, "checkpoint": str(checkpoint),
                        "source_run": run.run_id,  # its tokenizer: the study's student's
                        "reference": run.params.get("train.student")})
    if not sources:
        raise ValueError(f"grid run {parent} has no finished trained cell to start RL from")
    return parent, sources


def rl_spec(config: RLFlowConfig, inputs: RLInputs, root: str | Path) -> RunSpec:
    """The tracked parent run of an RL-after-distillation study."""
    key = content_hash("rl", config.model_dump(), inputs, code_identity())
    return RunSpec(config.name, f"{config.name} study", {"study": "rl_after_distill"},
                   {"rl": config.model_dump()}, inside(root, "runs", config.name,
                                                       f"rl-{key[:12]}"), key)


def rl_source_spec(config: RLFlowConfig, inputs: RLInputs, source: dict, study_dir: Path,
                   parent_run_id: str) -> RunSpec:
    """The tracked run of GRPO from one source student, evaluated before and after."""
    key = content_hash(config.model_dump(), inputs, source, code_identity())
    return RunSpec(config.name, f"grpo {source['label']}",
                   {"cell": source["label"], "source_run": source["source_run"], "stage": "rl",
                    "seed": str(config.seed)},
                   {"rl": config.model_dump(), **source}, inside(study_dir, slug(source["label"])),
                   key, parent_run_id)


def evaluation_spec(config: EvaluateFlowConfig, label: str, model: str, tags: dict,
                    root: str | Path) -> RunSpec:
    """A nightly or on-demand evaluation: always a new run (no identity to resume)."""
    from datetime import UTC, datetime

    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
    return RunSpec(config.name, f"eval {label}", tags,
                   {"evaluate": config.model_dump(), "model": model},
                   inside(root, "runs", config.name, f"eval-{stamp}", slug(label)))


def grpo_config(config: RLFlowConfig, inputs: RLInputs, source: dict, output_dir: str):
    """The GRPO run of one source student (tasks.rl.GRPOConfig)."""
    from tasks.rl import GRPOConfig

    return GRPOConfig(policy=source["checkpoint"], train_problems=inputs.train_problems,
                      output_dir=output_dir, steps=config.steps,
                      prompts_per_step=config.prompts_per_step, group_size=config.group_size,
                      learning_rate=config.learning_rate, max_new_tokens=config.max_new_tokens,
                      temperature=config.temperature, kl_coef=config.kl_coef,
                      prompt_template=config.prompt_template, seed=config.seed,
                      reference=source["reference"])


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
