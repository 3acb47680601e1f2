"""The evaluate flow: given models, or the newest version of every registered student (the
nightly schedule), on a benchmark list; one MLflow run per model."""

from __future__ import annotations

from prefect import flow

from tasks.configs import EvaluateFlowConfig
from tasks.plan import evaluation_spec, flow_eval_config
from tasks.prefect_tasks import (
    benchmarks_task,
    evaluate_task,
    models_task,
    preflight_task,
    tracked_run,
)


@flow(name="evaluate", log_prints=True)
def evaluate_flow(config: EvaluateFlowConfig = EvaluateFlowConfig()) -> dict:
    """Evaluate each model with one procedure and log Avg@k, Pass@k, length and entropy."""
    where = preflight_task()
    benchmarks = benchmarks_task(config.benchmarks, config.profile, str(where.root))
    results = {}
    for label, model, tags in models_task(config, where.tracking_uri, str(where.root)):
        spec = evaluation_spec(config, label, model, tags, where.root)
        with tracked_run(spec, where.tracking_uri) as run:
            out = evaluate_task(flow_eval_config(config, model, benchmarks), str(spec.run_dir),
                                where.store_url, run.ref, 0, str(where.root))
        results[label] = {"run_id": run.ref.run_id, "metrics": out["metrics"]}
    return results
