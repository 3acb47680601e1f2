"""The evaluate flow: given models, or the newest version of every registered student (the
nightly schedule), on a benchmark list, with the study's evaluation procedure. One parent MLflow
run per flow run ("nightly-evaluation <date>", tag ``night``), a child run per model, and on the
parent the night's table and the trend of each model's Avg@k across nights."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from dashboards.nightly import attach_trend
from flows.common import links_task, publish
from tasks.configs import EvaluateFlowConfig
from tasks.plan import evaluation_spec, flow_eval_config, night_spec
from tasks.prefect_tasks import (
    IO_RETRIES,
    benchmarks_task,
    evaluate_task,
    models_task,
    preflight_task,
    tracked_run,
)
from tasks.runs import RunRef
from tasks.tables import results_table
from tasks.tracking import Tracker


@flow(name="evaluate", log_prints=True)
def evaluate_flow(config: EvaluateFlowConfig = EvaluateFlowConfig()) -> dict:
    """Evaluate each model with one procedure and log Avg@k, Pass@k, length and entropy;
    returns {model label: {"run_id", "metrics"}}."""
    where = preflight_task(config)
    benchmarks = benchmarks_task(config.benchmarks, config.profile, str(where.root))
    models = models_task(config, where.tracking_uri, str(where.root))
    results, rows = {}, []
    spec = night_spec(config, models, where.root)
    with tracked_run(spec, where.tracking_uri) as night:
        for label, model, tags in models:
            evaluation = flow_eval_config(config, model, benchmarks)
            child = evaluation_spec(config, label, evaluation, tags, where.root,
                                    night.ref.run_id)
            with tracked_run(child, where.tracking_uri) as run:
                out = evaluate_task(evaluation, str(child.run_dir), where.store_url, run.ref, 0,
                                    str(where.root))
            results[label] = {"run_id": run.ref.run_id, "metrics": out["metrics"]}
            rows.append({"cell": label, "metrics": out["metrics"]})
        table = results_table(rows, config.ks)
        trend = trend_task(night.ref, config.name, max(config.ks))
        night.end.text["results.md"] = table + "\n"
    links = links_task(where.tracking_uri, night.ref.run_id, max(config.ks))
    publish(f"evaluation-{config.name}", spec.name, links,
            "## Tonight\n\n" + table, "## Trend\n\n" + trend)
    return {label: {**result, "night_run_id": night.ref.run_id, "links": links,
                    "prefect_run_url": flow_run.ui_url} for label, result in results.items()}


@task(name="nightly-trend", cache_policy=NO_CACHE, **IO_RETRIES)
def trend_task(night: RunRef, experiment: str, k: int) -> str:
    """Each model's Avg@k across nights, attached to the night's parent run
    (dashboards.nightly); returns the Markdown table."""
    with Tracker(night.tracking_uri) as tracker:
        return attach_trend(tracker, experiment, night.run_id, k)
