"""The distill flow: one experiment — prepare → teacher products → train one cell → evaluate.
A rerun of the same config resumes it (or reuses it, once finished)."""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run

from flows.common import links_task, publish, run_cell, teacher_products
from tasks.configs import ExperimentConfig
from tasks.plan import Cell, study_directory
from tasks.prefect_tasks import preflight_task, prepare_task
from tasks.tables import results_table


@flow(name="distill", log_prints=True)
def distill_flow(config: ExperimentConfig = ExperimentConfig()) -> dict:
    """Distil the teacher into the student with config.objective (and its curriculum, if set);
    logs one MLflow run with step metrics, evaluation and the registered student."""
    where = preflight_task(config)
    inputs = prepare_task(config, str(where.root))
    cell = Cell(config.objective, curriculum=bool(config.curriculum))
    teacher_products(config, inputs, [cell], where.root)
    run_dir, _ = study_directory(config, inputs, where.root, kind="distill")
    result = run_cell(config, inputs, cell, config.seed, where, run_dir)
    links = links_task(where.tracking_uri, result["run_id"])
    publish(f"distill-{config.name}-{cell.slug}", f"distill {cell.label} ({config.name})", links,
            results_table([result], config.eval_ks))
    return {**result, "links": links, "prefect_run_url": flow_run.ui_url}
