"""A study's plan: which runs it makes, with which configs, under which identity.

Plain functions that turn a flow's config and resolved inputs into the stage configs
(``TrainConfig``, ``EvalConfig``, ``GRPOConfig``) and the tracked runs (``RunSpec``) — every
decision about ML meaning, so the flows stay wiring only:

- ``cells``: the grid's runs (cells, λ mixes per prefix source, curriculum variants);
- ``train_config`` / ``eval_config`` / ``flow_eval_config`` / ``grpo_config``;
- ``teacher_product_configs``: the teacher products teacher-prefix cells share;
- ``*_spec``: each run's MLflow identity and folder (``tasks.runs``), keyed by its configs and
  ``code_identity()`` so a rerun after a kill resumes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import distill_core as dc
from tasks.artifacts import artifact_root, code_version, content_hash, package_modules
from tasks.configs import EvaluateFlowConfig, ExperimentConfig, RLFlowConfig
from tasks.evaluate import EvalConfig
from tasks.inputs import Inputs, RLInputs
from tasks.runs import RunSpec, inside, slug
from tasks.train import TrainConfig


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


def eval_config(config: ExperimentConfig | RLFlowConfig, inputs: Inputs | RLInputs,
                model: str) -> EvalConfig:
    """The one evaluation procedure of a flow's config (the grid's and the RL flow's fields
    share their names)."""
    return EvalConfig(model=model, benchmarks=inputs.benchmarks, n=config.eval_n,
                      ks=tuple(config.eval_ks), temperature=config.eval_temperature,
                      max_new_tokens=config.eval_max_new_tokens, seed=config.seed,
                      prompt_template=config.prompt_template, limit=config.eval_limit)


def flow_eval_config(config: EvaluateFlowConfig, model: str,
                     benchmarks: tuple[str, ...]) -> EvalConfig:
    """The evaluate flow's procedure; benchmarks resolved by tasks.inputs.benchmark_specs."""
    return EvalConfig(model=model, benchmarks=benchmarks, n=config.n,
                      ks=tuple(config.ks), temperature=config.temperature,
                      max_new_tokens=config.max_new_tokens, seed=config.seed,
                      prompt_template=config.prompt_template, limit=config.limit,
                      backend=config.backend)


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
