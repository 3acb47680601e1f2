"""What every flow shares: where artifacts, the rollout store and MLflow live, and one cell's
wiring (prefix products → train → evaluate → register), used by the distill and grid flows."""

from __future__ import annotations

import os
from pathlib import Path

from tasks.artifacts import artifact_root
from tasks.experiment import (
    Cell,
    ExperimentConfig,
    Inputs,
    eval_config,
    teacher_product_configs,
    train_config,
)
from tasks.prefect_tasks import (
    RunRef,
    evaluate_task,
    finish_run_task,
    report_task,
    start_run_task,
    teacher_rollouts_task,
    teacher_scores_task,
    train_task,
)
from tasks.store import DEFAULT_URL_ENV, default_url


def locations() -> dict[str, str]:
    """Artifact root ($DISTILL_LAB_ARTIFACTS or ./artifacts), store URL and tracking URI."""
    from tasks.tracking import default_tracking_uri

    root = artifact_root()
    root.mkdir(parents=True, exist_ok=True)
    return {"root": str(root),
            "store_url": os.environ.get(DEFAULT_URL_ENV) or default_url(root),
            "tracking_uri": default_tracking_uri(root)}


def cell_tags(cell: Cell) -> dict[str, str]:
    import distill_core as dc

    objective = dc.Objective.parse(cell.objective)
    return {"cell": cell.label, "objective": cell.objective,
            "prefix_source": objective.prefix_source, "lambda": f"{objective.reverse_weight:g}",
            "curriculum": str(cell.curriculum).lower()}


def teacher_products(config: ExperimentConfig, inputs: Inputs, cells: list[Cell],
                     root: str) -> list[dict]:
    """Teacher rollouts (and score caches) every teacher-prefix cell shares; cached."""
    products = []
    for train in teacher_product_configs(config, inputs, cells, root):
        products.append({"rollouts": teacher_rollouts_task(train)})
        if train.cache_k:
            products[-1]["scores"] = teacher_scores_task(train)
    return products


def run_cell(config: ExperimentConfig, inputs: Inputs, cell: Cell, where: dict[str, str],
             run_dir: Path, parent: RunRef | None = None) -> dict:
    """One training run as an MLflow run: train, evaluate, register the student."""
    train = train_config(config, inputs, cell, run_dir / cell.slug / "train", where["root"])
    run = start_run_task(where["tracking_uri"], config.name, cell.label, cell_tags(cell),
                         {"experiment": config.model_dump(), "train": train}, parent)
    try:
        trained = train_task(train, run)
        evaluated = evaluate_task(eval_config(config, inputs, trained["checkpoint"]),
                                  str(run_dir / cell.slug / "eval"), where["store_url"], run,
                                  config.steps, where["root"])
        register = ((f"distill-{config.name}-{cell.slug}", trained["checkpoint"])
                    if config.register_model else None)
        finish_run_task(run, "FINISHED", register, evaluated["metrics"])
    except BaseException:
        finish_run_task(run, "FAILED")
        raise
    return {"cell": cell.label, "run_id": run.run_id, "metrics": evaluated["metrics"],
            "train": trained["metrics"], "checkpoint": trained["checkpoint"]}


def evaluate_reference(config: ExperimentConfig, inputs: Inputs, label: str, model: str,
                       where: dict[str, str], run_dir: Path, parent: RunRef | None) -> dict:
    """Evaluate an untrained reference (the teacher, the starting student) as its own run."""
    run = start_run_task(where["tracking_uri"], config.name, label,
                         {"cell": label, "reference": "true"},
                         {"experiment": config.model_dump(), "model": model}, parent)
    try:
        evaluated = evaluate_task(eval_config(config, inputs, model), str(run_dir / label),
                                  where["store_url"], run, 0, where["root"])
        finish_run_task(run, "FINISHED")
    except BaseException:
        finish_run_task(run, "FAILED")
        raise
    return {"cell": label, "run_id": run.run_id, "metrics": evaluated["metrics"], "train": {}}


def run_directory(root: str, name: str) -> Path:
    """A fresh directory for one flow run's checkpoints and evaluation tables."""
    from datetime import UTC, datetime

    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
    return Path(root) / "runs" / f"{name}-{stamp}"


def study_report(where: dict[str, str], parent_run_id: str, run_dir: str | Path) -> str | None:
    """Build and attach the study's HTML report; a failure is reported, not raised: the study's
    runs are already in MLflow, and `distill report --html` rebuilds the page."""
    try:
        return report_task(where["tracking_uri"], parent_run_id, where["store_url"],
                           str(Path(run_dir) / "report.html"))
    except Exception as error:  # the report must never cost the study its results
        print(f"warning: the report of run {parent_run_id} was not built ({error}); rebuild it "
              f"with `distill report --run {parent_run_id} --html report.html --attach`")
        return None
