"""The grid flow: a study — every cell and seed trained and evaluated on the same paired
problems, the teacher and the starting student as references, a readiness check before any
training, optional GRPO afterwards, and the results with intervals and the findings (C0–C5) on
one parent MLflow run. The same config again after a kill resumes the study: finished runs are
reused, the interrupted one resumes from its checkpoint."""

from __future__ import annotations

import os
import platform
import time
from datetime import UTC, datetime

from prefect import flow
from prefect.runtime import flow_run

from flows.common import (
    evaluate_reference,
    links_task,
    publish,
    report_link,
    run_cell,
    run_grpo,
    study_report,
    teacher_products,
)
from flows.pool import check_pool_task, end_with_failures, failed_runs_note, run_cells_on_pool
from tasks.configs import REFERENCES, StudyConfig
from tasks.plan import cells, grid_spec, grpo_sources, products_shares
from tasks.prefect_tasks import (
    conclude_task,
    preflight_task,
    prepare_task,
    readiness_task,
    tracked_run,
)
from tasks.progress import Progress
from tasks.readiness import not_ready_line


@flow(name="grid", log_prints=True)
def grid_flow(config: StudyConfig = StudyConfig()) -> dict:
    """Train and evaluate every cell of config over its seeds; conclude with intervals and
    findings."""
    started = time.monotonic()
    where = preflight_task(config)
    pool = check_pool_task(config) if config.executor == "pool" else None
    inputs = prepare_task(config, str(where.root))
    study = cells(config)
    spec = grid_spec(config, inputs, study, where.root)
    rows, products, report, readiness, failures = [], [], None, None, []
    with tracked_run(spec, where.tracking_uri) as parent:
        if not parent.finished:
            products = teacher_products(config, inputs, study, where.root)
            if config.evaluate_references:
                rows += [evaluate_reference(config, inputs, label, model, where, spec.run_dir,
                                            parent.ref.run_id)
                         for label, model in zip(REFERENCES, (inputs.teacher, inputs.student),
                                                 strict=True)]
            checked = readiness_task(config, rows, products, parent.ref, where.store_url)
            readiness = checked["readiness"]
            shares = products_shares(config, inputs, study, products, where.root)
            if pool is not None:  # each run a flow run on the pool's workers (flows/pool.py)
                trained, failures = run_cells_on_pool(pool, config, inputs, study, where,
                                                      spec.run_dir, parent.ref.run_id,
                                                      checked["min_entropy"], shares)
                rows += trained
            else:
                progress = Progress(len(study) * len(config.seeds), "study", print,
                                    unit="runs", every_s=0, bar=False)
                for cell in study:
                    for seed in config.seeds:
                        rows.append(run_cell(config, inputs, cell, seed, where, spec.run_dir,
                                             parent.ref.run_id, checked["min_entropy"],
                                             shares[cell.label]))
                        progress.update(note=f"{cell.label} seed {seed} done")
            for cell, source in grpo_sources(config, study, rows):
                rows.append(run_grpo(config, inputs, cell, source, where, spec.run_dir,
                                     parent.ref.run_id))
        context = {"study": config.name, "parent_run_id": parent.ref.run_id,
                   "date": datetime.now(UTC).strftime("%Y-%m-%d"),
                   "machine": f"{platform.machine()}, {_cpus()} CPUs, {platform.system()}",
                   "wall_seconds": round(time.monotonic() - started),
                   "readiness": readiness}
        if failures:
            context["failed_runs"] = failures
        outcome = conclude_task(config, parent.ref, where.store_url, str(spec.run_dir), context)
        if failures:
            outcome["table"] += "\n\n" + failed_runs_note(failures)
        if not parent.finished:
            report = study_report(where, parent.ref.run_id, spec.run_dir)
            parent.end.text.update({"results.md": outcome["table"] + "\n",
                                    "findings.md": outcome["findings"] + "\n"})
            if failures:  # FAILED after writing what it can: a rerun retries only those
                end_with_failures(parent, outcome, failures)
    print(outcome["table"] + "\n\n" + outcome["findings"])
    links = links_task(where.tracking_uri, parent.ref.run_id, max(config.eval_ks))
    if report:
        links["report"] = report_link(where.tracking_uri, parent.ref.run_id)
        links["report file"] = report
    publish(f"study-{config.name}", f"Study {config.name}", links,
            "## Results\n\n" + outcome["table"], "## Findings\n\n" + outcome["findings"],
            warning=not_ready_line(readiness))
    return {"parent_run_id": parent.ref.run_id, "rows": rows, "table": outcome["table"],
            "findings": outcome["document"], "findings_table": outcome["findings"],
            "teacher_products": products, "tracking_uri": where.tracking_uri,
            "run_dir": str(spec.run_dir), "report": report, "links": links,
            "prefect_run_url": flow_run.ui_url}


def _cpus() -> int:
    return os.cpu_count() or 0
