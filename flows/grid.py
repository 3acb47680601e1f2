"""The grid flow: the study — every cell at matched steps, sharing the teacher's products, each
cell a child MLflow run under one parent run that holds the results table. A rerun of the same
config after a kill resumes the study: finished cells are reused, the interrupted one resumes
from its checkpoint."""

from __future__ import annotations

from prefect import flow

from flows.common import evaluate_reference, run_cell, study_report, teacher_products
from tasks.configs import ExperimentConfig
from tasks.plan import cells, grid_spec
from tasks.prefect_tasks import preflight_task, prepare_task, run_results_task, tracked_run
from tasks.progress import Progress
from tasks.tables import results_table


@flow(name="grid", log_prints=True)
def grid_flow(config: ExperimentConfig = ExperimentConfig()) -> dict:
    """Train and evaluate every cell of config (the 2×2 grid, λ mixes, curriculum variants)."""
    where = preflight_task(config)
    inputs = prepare_task(config, str(where.root))
    study = cells(config)
    spec = grid_spec(config, inputs, study, where.root)
    rows, products, report = [], [], None
    with tracked_run(spec, where.tracking_uri) as parent:
        if parent.finished:
            rows = run_results_task(parent.ref, children=True)["rows"]
        else:
            products = teacher_products(config, inputs, study, where.root)
            if config.evaluate_references:
                for label, model in (("teacher", inputs.teacher),
                                     ("student (start)", inputs.student)):
                    rows.append(evaluate_reference(config, inputs, label, model, where,
                                                   spec.run_dir, parent.ref.run_id))
            progress = Progress(len(study), "grid", print, unit="cells", every_s=0, bar=False)
            for cell in study:
                rows.append(run_cell(config, inputs, cell, where, spec.run_dir,
                                     parent.ref.run_id))
                progress.update(note=f"{cell.label} done")
        table = results_table(rows, config.eval_ks)
        if not parent.finished:
            report = study_report(where, parent.ref.run_id, spec.run_dir)
            parent.end.text["results.md"] = table + "\n"
    print(table)
    if report:
        print(f"report: {report} (also report.html of the grid run in MLflow)")
    return {"parent_run_id": parent.ref.run_id, "rows": rows, "table": table,
            "teacher_products": products, "tracking_uri": where.tracking_uri,
            "run_dir": str(spec.run_dir), "report": report}
