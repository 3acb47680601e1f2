"""The evaluate flow: given models, or the newest version of every registered student (the
nightly schedule), on a benchmark list; one MLflow run per model."""

from __future__ import annotations

from prefect import flow

from flows.common import locations, run_directory
from tasks.experiment import EvaluateFlowConfig, flow_eval_config
from tasks.prefect_tasks import evaluate_task, finish_run_task, models_task, start_run_task


@flow(name="evaluate", log_prints=True)
def evaluate_flow(config: EvaluateFlowConfig = EvaluateFlowConfig()) -> dict:
    """Evaluate each model with one procedure and log Avg@k, Pass@k, length and entropy."""
    where = locations()
    run_dir = run_directory(where["root"], config.name)
    results = {}
    for label, model, tags in models_task(config, where["tracking_uri"], where["root"]):
        run = start_run_task(where["tracking_uri"], config.name, f"eval {label}", tags,
                             {"evaluate": config.model_dump(), "model": model})
        try:
            out = evaluate_task(flow_eval_config(config, model), str(run_dir / run.run_id),
                                where["store_url"], run, 0, where["root"])
            finish_run_task(run, "FINISHED")
        except BaseException:
            finish_run_task(run, "FAILED")
            raise
        results[label] = {"run_id": run.run_id, "metrics": out["metrics"]}
    return results
