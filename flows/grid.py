"""The grid flow: the study — every cell at matched steps, sharing the teacher's products, each
cell a child MLflow run under one parent run that holds the results table."""

from __future__ import annotations

from prefect import flow

from flows.common import (
    evaluate_reference,
    locations,
    run_cell,
    run_directory,
    study_report,
    teacher_products,
)
from tasks.experiment import ExperimentConfig, cells, results_table
from tasks.prefect_tasks import finish_run_task, prepare_task, start_run_task


@flow(name="grid", log_prints=True)
def grid_flow(config: ExperimentConfig = ExperimentConfig()) -> dict:
    """Train and evaluate every cell of config (the 2×2 grid, λ mixes, curriculum variants)."""
    where = locations()
    inputs = prepare_task(config, where["root"])
    study = cells(config)
    run_dir = run_directory(where["root"], config.name)
    parent = start_run_task(where["tracking_uri"], config.name, f"{config.name} grid",
                            {"study": "grid", "cells": ",".join(c.label for c in study)},
                            {"experiment": config.model_dump()})
    try:
        products = teacher_products(config, inputs, study, where["root"])
        rows = []
        if config.evaluate_references:
            for label, model in (("teacher", inputs.teacher), ("student (start)", inputs.student)):
                rows.append(evaluate_reference(config, inputs, label, model, where, run_dir,
                                               parent))
        for cell in study:
            print(f"cell {cell.label}: training {config.steps} steps")
            rows.append(run_cell(config, inputs, cell, where, run_dir, parent))
        table = results_table(rows, config.eval_ks)
        report = study_report(where, parent.run_id, run_dir)
        finish_run_task(parent, "FINISHED", text={"results.md": table + "\n"})
    except BaseException:
        finish_run_task(parent, "FAILED")
        raise
    print(table)
    if report:
        print(f"report: {report} (also report.html of the grid run in MLflow)")
    return {"parent_run_id": parent.run_id, "rows": rows, "table": table,
            "teacher_products": products, "tracking_uri": where["tracking_uri"],
            "run_dir": str(run_dir), "report": report}
