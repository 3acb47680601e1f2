"""The distill flow: one experiment — prepare → teacher products → train one cell → evaluate."""

from __future__ import annotations

from prefect import flow

from flows.common import locations, run_cell, run_directory, teacher_products
from tasks.experiment import Cell, ExperimentConfig
from tasks.prefect_tasks import prepare_task


@flow(name="distill", log_prints=True)
def distill_flow(config: ExperimentConfig = ExperimentConfig()) -> dict:
    """Distil the teacher into the student with config.objective (and its curriculum, if set);
    logs one MLflow run with step metrics, evaluation and the registered student."""
    where = locations()
    inputs = prepare_task(config, where["root"])
    cell = Cell(config.objective, curriculum=bool(config.curriculum))
    teacher_products(config, inputs, [cell], where["root"])
    result = run_cell(config, inputs, cell, where, run_directory(where["root"], config.name))
    print(f"distill {cell.label}: MLflow run {result['run_id']} at {where['tracking_uri']}")
    return result
