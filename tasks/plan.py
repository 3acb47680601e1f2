"""A study's plan: which runs it makes, with which configs, under which identity.

Plain functions that turn a flow's config and resolved inputs into the stage configs
(``TrainConfig``, ``EvalConfig``, ``GRPOConfig``) and the tracked runs (``RunSpec``) — every
decision about ML meaning, so the flows stay wiring only:

- ``cells``: the grid's runs (cells, λ mixes per prefix source, curriculum variants);
- ``train_config`` / ``eval_config`` / ``flow_eval_config`` / ``grpo_config``;
- ``nightly_eval_config``: the nightly's procedure for one registered student, its study's own
  (``recorded_eval_knobs``) where its run recorded one;
- ``teacher_product_configs``: the teacher products teacher-prefix cells share;
- ``*_spec``: each run's MLflow identity and folder (``tasks.runs``), keyed by its configs and
  ``code_identity()`` so a rerun after a kill resumes it.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import distill_core as dc
from tasks.artifacts import artifact_root, code_version, content_hash, package_modules
from tasks.evaluate import EvalConfig
from tasks.inputs import Inputs, RLInputs
from tasks.rl import GRPOConfig
from tasks.runs import RunSpec, inside, slug
from tasks.settings import built_for_form, stage_values
from tasks.train import TrainConfig

if TYPE_CHECKING:  # the forms build their stage configs through this module: annotations only
    from tasks.configs import EvaluateFlowConfig, ExperimentConfig, RLFlowConfig, StudyConfig


@dataclass(frozen=True)
class Cell:
    """One kind of training run in a study: its objective, whether it climbs the length
    curriculum, and where it departs from the study's cap and horizon. Each runs once per
    seed. The objective may be given as its config string ('opd', 'student:0.25'): it is
    parsed here, once, and the typed value travels on to the loss."""

    objective: dc.Objective
    curriculum: bool = False
    max_new_tokens: int | None = None  # a fixed cap other than the study's max_new_tokens
    steps: int | None = None  # a horizon other than the study's steps

    def __post_init__(self) -> None:
        if not isinstance(self.objective, dc.Objective):
            object.__setattr__(self, "objective", dc.Objective.parse(self.objective))

    @property
    def label(self) -> str:
        label = self.objective.name + (" +curriculum" if self.curriculum else "")
        label += f" cap {self.max_new_tokens}" if self.max_new_tokens else ""
        return label + (f" {self.steps} steps" if self.steps else "")

    @property
    def slug(self) -> str:
        return slug(self.label)


def cells(config: StudyConfig | ExperimentConfig) -> list[Cell]:
    """The study's runs (before seeds): each objective at the study's horizon, long_cells at
    long_steps instead, and with compare_curriculum each curriculum cell twice more — with the
    curriculum and with a fixed cap equal to its top rung. A distill config is one cell."""
    if not hasattr(config, "cells"):  # a distill form: one objective
        return [Cell(config.objective, curriculum=bool(config.curriculum))]
    horizon = {c: config.long_steps for c in config.long_cells}
    plain = [Cell(o, curriculum=bool(config.curriculum) and not config.compare_curriculum,
                  steps=horizon.get(o)) for o in config.objectives()]
    if config.compare_curriculum:
        for objective in config.curriculum_cells or config.objectives():
            plain += [Cell(objective, curriculum=True),
                      Cell(objective, max_new_tokens=max(config.curriculum))]
    return plain


def cell_steps(config: StudyConfig | ExperimentConfig, cell: Cell) -> int:
    return cell.steps or config.steps


def eval_steps(config: StudyConfig | ExperimentConfig, cell: Cell) -> list[int]:
    """The training steps a cell is evaluated at: every eval_every steps, the study's horizon
    (also for long cells, so short and long horizons compare within one run) and the last."""
    last = cell_steps(config, cell)
    every = getattr(config, "eval_every", None)
    steps = set(range(every, last + 1, every)) if every else set()
    return sorted(steps | {min(config.steps, last), last})


def train_config(config: StudyConfig | ExperimentConfig, inputs: Inputs, cell: Cell, seed: int,
                 output_dir: str | Path, root: str | Path | None = None,
                 min_entropy: float | None = None) -> TrainConfig:
    """The TrainConfig of one cell and seed: the form's training knobs as they are, but for
    what the cell changes (its horizon, cap and curriculum; a study's sparse loss serves its
    teacher-prefix cells, while its student-prefix cells, which sample their own prefixes and
    so have no teacher cache, train exact). min_entropy overrides the
    config's H_min (a study derives it from the starting student's measured entropy)."""
    knobs = stage_values(config, TrainConfig)
    steps = cell_steps(config, cell)
    knobs.update(steps=steps, max_new_tokens=cell.max_new_tokens or config.max_new_tokens,
                 curriculum=tuple(config.curriculum) if cell.curriculum else (),
                 checkpoint_every=min(config.checkpoint_every, steps))
    if cell.objective.on_policy and config.loss == "sparse":  # no teacher cache to read
        knobs.update(loss="exact", cache_k=0)
    if min_entropy is not None:
        knobs["min_entropy"] = min_entropy
    return TrainConfig(
        objective=cell.objective, teacher=inputs.teacher, student=inputs.student,
        train_problems=inputs.train_problems, held_out_problems=inputs.held_out_problems,
        output_dir=str(output_dir), seed=seed, keep_steps=tuple(eval_steps(config, cell)),
        artifacts_root=str(artifact_root(root)), **knobs)


def eval_config(config: ExperimentConfig | RLFlowConfig, inputs: Inputs | RLInputs,
                model: str) -> EvalConfig:
    """The one evaluation procedure of a flow's config: its eval_* knobs."""
    return EvalConfig(model, inputs.benchmarks, **stage_values(config, EvalConfig, "eval_"))


def flow_eval_config(config: EvaluateFlowConfig, model: str,
                     benchmarks: tuple[str, ...]) -> EvalConfig:
    """The evaluate flow's procedure; benchmarks resolved by tasks.inputs.benchmark_specs."""
    return EvalConfig(model, benchmarks, **stage_values(config, EvalConfig))


def recorded_eval_knobs(params: Mapping[str, str]) -> dict[str, Any]:
    """The evaluation procedure a run recorded, typed back from its ``eval.*`` params (an
    EvalConfig as ``tasks.tracking.flatten_config`` writes it: "4", "[1,4]", "None", "True"):
    {knob: value}, benchmarks included, model left out. Empty if the run recorded none (a run
    from before runs logged their evaluation, a run of another flow)."""
    hints = typing.get_type_hints(EvalConfig)
    return {f.name: _typed(params[f"eval.{f.name}"], hints[f.name])
            for f in dataclasses.fields(EvalConfig)
            if f.name != "model" and f"eval.{f.name}" in params}


def _typed(text: str, hint: Any) -> Any:
    if text == "None":
        return None
    optional = isinstance(hint, types.UnionType)  # "int | None": the type that is not None
    kind = next(t for t in typing.get_args(hint) if t is not type(None)) if optional else hint
    if typing.get_origin(kind) is tuple:
        return tuple(json.loads(text))
    return text == "True" if kind is bool else kind(text)


# Where a nightly evaluation's settings came from (child tag ``eval_settings``, table column).
FROM_STUDY, FROM_FLOW = "its study", "the flow's"


def nightly_eval_config(config: EvaluateFlowConfig, model: str,
                        benchmarks: Callable[[], tuple[str, ...]],
                        recorded: Mapping[str, Any]) -> tuple[EvalConfig, str]:
    """One registered student's nightly procedure and where it came from: its own study's
    (recorded: its source run's ``recorded_eval_knobs``) — samples, k, temperature, cap,
    problems, seed, template, benchmarks, batch size, backend — so that its nightly number is
    the study's number again for the same weights; where it recorded none (a given model, an
    older run) the flow's config, said in the second value. A knob its run did not record (it
    did not exist then) takes the flow's value; benchmark files missing on this machine give
    the flow's benchmarks (said too: then the numbers are not comparable). benchmarks: the
    flow's, resolved when first called (its "default" bootstraps the profile: a night whose
    students all recorded theirs never needs it).

    Each student is evaluated with its own config rather than students grouped by settings:
    an evaluation loads one model anyway, so grouping would save nothing and only reorder the
    night; per student, each child run's params are exactly its procedure."""
    if not recorded:
        reason = "given model" if config.models else "its run recorded no settings"
        return flow_eval_config(config, model, benchmarks()), f"{FROM_FLOW} ({reason})"
    knobs = {**stage_values(config, EvalConfig), **recorded}
    if "benchmarks" not in knobs:
        knobs["benchmarks"] = benchmarks()
    missing = [spec for spec in knobs["benchmarks"] if not Path(spec.rpartition("=")[2]).is_file()]
    source = FROM_STUDY
    if missing:
        knobs["benchmarks"] = benchmarks()
        source += f", benchmarks {FROM_FLOW} ({', '.join(missing)} not here)"
    return EvalConfig(model, **knobs), source


def grpo_config(config: RLFlowConfig, inputs: RLInputs, source: dict, output_dir: str
                ) -> GRPOConfig:
    """The GRPO run of one source student."""
    return GRPOConfig(policy=source["checkpoint"], train_problems=inputs.train_problems,
                      output_dir=output_dir, reference=source["reference"],
                      **stage_values(config, GRPOConfig))


# Stand-ins for what a form does not know before its run starts, so that every stage config
# it will make can be built, and refused, when the form is submitted.
_NOT_YET = Inputs("<teacher>", "<student>", "<train problems>", "<held-out problems>",
                  ("<benchmark>",))


def check_stage_configs(config: StudyConfig | ExperimentConfig) -> None:
    """Build every stage config the form's runs will use (each cell's training, the
    evaluation, each rl_cells student's GRPO): a stage's refusal is the form's, here."""
    for cell in cells(config):
        built_for_form(lambda cell=cell: train_config(config, _NOT_YET, cell, 0, "<output>",
                                                      "<artifacts>"),
                       TrainConfig, what=f"training {cell.label}")
    built_for_form(lambda: eval_config(config, _NOT_YET, "<model>"), EvalConfig, "eval_")
    if getattr(config, "rl_cells", None):
        built_for_form(lambda: study_grpo_config(config, _NOT_YET, "<student>", 0, "<output>"),
                       GRPOConfig, "rl_", "GRPO after distillation")


def check_evaluate_stage_config(config: EvaluateFlowConfig) -> None:
    """The evaluate form's EvalConfig, built through its translator: refused here, if at all."""
    built_for_form(lambda: flow_eval_config(config, "<model>", tuple(config.benchmarks)),
                   EvalConfig)


def check_rl_stage_configs(config: RLFlowConfig) -> None:
    """The RL form's GRPOConfig and EvalConfig, built through their translators."""
    inputs = RLInputs("<train problems>", tuple(config.benchmarks))
    built_for_form(lambda: grpo_config(config, inputs, {"checkpoint": "<student>",
                                                         "reference": None}, "<output>"),
                   GRPOConfig)
    built_for_form(lambda: eval_config(config, inputs, "<model>"), EvalConfig, "eval_")


def teacher_product_groups(config: StudyConfig | ExperimentConfig, inputs: Inputs,
                           cells_: list[Cell], root: str | Path | None = None
                           ) -> dict[tuple, tuple[TrainConfig, list[str]]]:
    """The teacher-prefix cells grouped by the teacher products (rollouts, score cache) they
    train on: {(longest response, cache_k): (a TrainConfig that makes them, the cells' labels)}.
    Student-prefix cells need none."""
    groups: dict[tuple, tuple[TrainConfig, list[str]]] = {}
    for cell in cells_:
        train = train_config(config, inputs, cell, 0, Path(artifact_root(root)) / "unused",
                             root)
        if not train.objective.on_policy:
            groups.setdefault((train.longest_response, train.cache_k), (train, []))[1].append(
                cell.label)
    return groups


def teacher_product_configs(config: StudyConfig | ExperimentConfig, inputs: Inputs,
                            cells_: list[Cell], root: str | Path | None = None
                            ) -> list[TrainConfig]:
    """One TrainConfig per distinct set of teacher products the teacher-prefix cells need.
    Priming these before training lets every cell and seed share them (the rollouts' sampling
    seed is rollout_seed, not the training seed)."""
    return [train for train, _ in teacher_product_groups(config, inputs, cells_, root).values()]


# The code whose change can change a run's result: part of every run's identity, so a rerun after
# a code change trains anew instead of resuming a checkpoint the old code wrote.
RUN_CODE = ("tasks.train", "tasks.loop", "tasks.checkpoints", "tasks.rollout", "tasks.scoring",
            "tasks.models", "tasks.evaluate", "tasks.gold_nll", "tasks.grader", "tasks.compute",
            "tasks.data", "tasks.rl")


def code_identity() -> str:
    return code_version([*package_modules("distill_core"), *RUN_CODE])


# How a study runs, not what it computes: left out of its identity, so that the same study on a
# work pool resumes (and reuses) what it started in-process, and keys from before they existed hold.
EXECUTION_FIELDS = {"executor", "work_pool", "max_concurrent_runs"}


def study_directory(config: StudyConfig | ExperimentConfig, inputs: Inputs, root: str | Path,
                    kind: str = "grid") -> tuple[Path, str]:
    """(folder, identity key) of a study or single experiment: the same config, inputs and code
    give the same folder, so a rerun after a kill finds its checkpoints there. The executor
    fields (EXECUTION_FIELDS) are not part of it."""
    key = content_hash(kind, config.model_dump(exclude=EXECUTION_FIELDS), inputs,
                       code_identity())
    return inside(root, "runs", config.name, f"{kind}-{key[:12]}"), key


# The ``role`` tag of a study's child runs: what its links filter on (the cells; the untrained
# references by choice).
CELL_ROLE, REFERENCE_ROLE = "cell", "reference"
# What tells a study's runs apart (``cell_identity``): short params, ahead of train.* and eval.*.
IDENTITY_PARAMS = ("cell", "prefix_source", "kl", "seed")


def cell_tags(cell: Cell, seed: int) -> dict[str, str]:
    """The MLflow tags a cell's run carries (what the report and MLflow's UI group by)."""
    objective = cell.objective  # parsed once, when the cell was made
    return {"cell": cell.label, "objective": objective.name, "seed": str(seed),
            "prefix_source": objective.prefix_source, "lambda": f"{objective.reverse_weight:g}",
            "curriculum": str(cell.curriculum).lower(), "role": CELL_ROLE}


def kl_direction(reverse_weight: float) -> str:
    """The token-level KL direction as the comparison reads it: "forward" (λ = 0), "reverse"
    (λ = 1), else "mix λ"."""
    return {0.0: "forward", 1.0: "reverse"}.get(reverse_weight, f"mix {reverse_weight:g}")


def cell_identity(cell: Cell, seed: int) -> dict[str, str]:
    """What tells a study's runs apart, logged as short params: MLflow's compare page plots the
    first three differing params by name, and these sort before every ``train.*``/``eval.*``
    one (``cell``, ``kl``, ``prefix_source``; then ``seed``)."""
    objective = cell.objective
    return {"cell": cell.label, "prefix_source": objective.prefix_source,
            "kl": kl_direction(objective.reverse_weight), "seed": str(seed)}


def run_name(label: str, seed: int, seeds: int) -> str:
    return f"{label} seed {seed}" if seeds > 1 else label


def cell_spec(config: StudyConfig | ExperimentConfig, inputs: Inputs, cell: Cell, seed: int,
              train: TrainConfig, run_dir: Path, parent_run_id: str | None) -> RunSpec:
    """The tracked run of one cell and seed: its identity is its training and evaluation
    settings; its params are this run's own (train.*, eval.*), not the study's form."""
    evaluation = eval_config(config, inputs, "<the trained student>")
    key = content_hash(config.name, cell.label, train.fingerprint(), evaluation,
                       code_identity())
    seeds = len(getattr(config, "seeds", [seed]))
    return RunSpec(config.name, run_name(cell.label, seed, seeds), cell_tags(cell, seed),
                   {**cell_identity(cell, seed), "train": train, "eval": evaluation}, run_dir,
                   key, parent_run_id)


def reference_spec(config: StudyConfig | ExperimentConfig, inputs: Inputs, label: str,
                   model: str, run_dir: Path, parent_run_id: str | None) -> RunSpec:
    """The tracked run of an untrained reference model (the teacher, the starting student):
    evaluated once, paired with every seed of the trained runs."""
    evaluation = eval_config(config, inputs, model)
    key = content_hash(config.name, label, model, evaluation, code_identity())
    return RunSpec(config.name, label, {"cell": label, "reference": "true", "seed": "0",
                                        "role": REFERENCE_ROLE},
                   {"cell": label, "eval": evaluation}, run_dir, key, parent_run_id)


def grid_spec(config: StudyConfig, inputs: Inputs, study: list[Cell],
              root: str | Path) -> RunSpec:
    """The tracked parent run of a study (its children are cell_spec / reference_spec)."""
    run_dir, key = study_directory(config, inputs, root)
    return RunSpec(config.name, f"{config.name} study",
                   {"study": "grid", "cells": ",".join(c.label for c in study),
                    "seeds": ",".join(map(str, config.seeds))},
                   {"study": config.model_dump()}, run_dir, key)


def cell_directory(study_dir: Path, label: str, seed: int | None = None) -> Path:
    return inside(study_dir, slug(label) + (f"-seed{seed}" if seed is not None else ""))


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


def evaluation_spec(config: EvaluateFlowConfig, label: str, evaluation: EvalConfig,
                    tags: dict, root: str | Path, parent_run_id: str | None = None) -> RunSpec:
    """One model of a nightly or on-demand evaluation: always a new run (no identity to
    resume), the child of that night's run (``night_spec``) when given. Its params are its
    evaluation procedure (``eval.*``, model included, as a study's runs log theirs)."""
    from datetime import UTC, datetime

    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
    return RunSpec(config.name, f"eval {label}", {**tags, "cell": label}, {"eval": evaluation},
                   inside(root, "runs", config.name, f"eval-{stamp}", slug(label)),
                   parent_run_id=parent_run_id)


NIGHT_TAG = "night"  # the date (UTC, YYYY-MM-DD) of an evaluation's parent run


def night_spec(config: EvaluateFlowConfig, models: list[tuple[str, str, dict]],
               root: str | Path, taken: Collection[str] = ()) -> RunSpec:
    """The parent run of one evaluate flow run, "<name> <date>", tagged with the date (``night``)
    and with where the models came from: the registry (``nightly``: the schedule's case) or the
    given list. Its children are the models' runs; its metrics and trend the night's summary.

    One parent per night and trigger (config.name, its experiment): taken holds the names of
    the experiment's earlier parents, and a second run on the same date is "<name> <date> (2)",
    a third "(3)", so that two triggers on one day never make two runs of one name."""
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    night = now.strftime("%Y-%m-%d")
    source = "given models" if config.models else "registry"
    return RunSpec(config.name, night_name(f"{config.name} {night}", taken),
                   {NIGHT_TAG: night, "evaluation": "nightly" if not config.models else "models",
                    "models": ", ".join(label for label, _, _ in models),
                    "models_from": source},
                   {"evaluate": config.model_dump()},
                   inside(root, "runs", config.name, f"night-{now.strftime('%Y%m%d-%H%M%S-%f')}"))


def night_name(name: str, taken: Collection[str]) -> str:
    """name if no earlier run has it, else name with the first free count: "name (2)", …"""
    count = 1
    while (candidate := name if count == 1 else f"{name} ({count})") in taken:
        count += 1
    return candidate


def study_grpo_config(config: StudyConfig, inputs: Inputs, checkpoint: str, seed: int,
                      output_dir: str | Path) -> GRPOConfig:
    """GRPO from one of a study's students: its rl_* knobs, on the study's train problems,
    with the study's training cap, sampling temperature, prompt template and the cell's seed;
    its reference tokenizer the starting student's."""
    knobs = stage_values(config, GRPOConfig, "rl_")
    knobs.update(max_new_tokens=config.max_new_tokens,
                 temperature=config.rollout_temperature or 1.0,
                 prompt_template=config.prompt_template, seed=seed,
                 checkpoint_every=min(knobs["checkpoint_every"], knobs["steps"]))
    return GRPOConfig(policy=checkpoint, train_problems=inputs.train_problems,
                      output_dir=str(output_dir), reference=inputs.student, **knobs)


def grpo_spec(config: StudyConfig, inputs: Inputs, cell: Cell, seed: int, grpo,
              source_run_id: str, run_dir: Path, parent_run_id: str) -> RunSpec:
    """The tracked run of GRPO from one cell's student of one seed (tag cell 'grpo <label>')."""
    evaluation = eval_config(config, inputs, "<the GRPO student>")
    key = content_hash(config.name, "grpo", cell.label, grpo.fingerprint(), evaluation,
                       code_identity())
    label = f"grpo {cell.label}"
    return RunSpec(config.name, run_name(label, seed, len(config.seeds)),
                   {"cell": label, "objective": cell.objective.name, "seed": str(seed),
                    "stage": "rl", "source_run": source_run_id, "curriculum": "false",
                    "role": CELL_ROLE},
                   {**cell_identity(cell, seed), "cell": label, "grpo": grpo,
                    "eval": evaluation}, run_dir, key, parent_run_id)


def products_shares(config: StudyConfig | ExperimentConfig, inputs: Inputs, study: list[Cell],
                    products: list[dict], root: str | Path) -> dict[str, float]:
    """Each teacher-prefix cell's share (per run) of the teacher rollouts it trains on: their
    generation FLOPs divided over every run (cells × seeds) that shares them. Student-prefix
    cells share nothing (0)."""
    seeds = len(getattr(config, "seeds", [0]))
    groups = teacher_product_groups(config, inputs, study, root)
    shares = {cell.label: 0.0 for cell in study}
    for product in products:
        _, users = groups.get(tuple(product["rollouts"]["key"]), (None, []))
        for label in users:
            shares[label] = product["rollouts"]["flops"] / (len(users) * seeds)
    return shares


def grpo_sources(config: StudyConfig, study: list[Cell], rows: list[dict]
                 ) -> list[tuple[Cell, dict]]:
    """(cell, its run's row) for every seed of every rl_cells objective's plain run (not its
    curriculum or fixed-cap variant): the students GRPO continues from."""
    sources = {dc.Objective.parse(objective) for objective in config.rl_cells}
    plain = {c.label: c for c in study if c.objective in sources
             and not c.curriculum and not c.max_new_tokens}
    return [(plain[row["cell"]], row) for row in rows if row["cell"] in plain]
