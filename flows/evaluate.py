"""The evaluate flow: given models, or the newest version of every registered student (the
nightly schedule), on a benchmark list. A registered student is evaluated with its own study's
procedure (the ``eval.*`` params its source run logged; tasks.plan.nightly_eval_config), a given
model or one whose run recorded none with the flow's config. One parent MLflow run per flow run
("nightly-evaluation <date>", "… (2)" for a second that day; tag ``night``), a child run per
model, and on the parent the night's table — each model's settings, its Avg@k beside its
study's with Δ and a flag — and the trend of each model's Avg@k across nights."""

from __future__ import annotations

import functools
from collections.abc import Callable

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from dashboards.nightly import attach_trend
from flows.common import links_task, publish
from tasks.configs import EvaluateFlowConfig
from tasks.plan import (
    NIGHT_TAG,
    evaluation_spec,
    night_spec,
    nightly_eval_config,
    recorded_eval_knobs,
)
from tasks.prefect_tasks import (
    IO_RETRIES,
    benchmarks_task,
    evaluate_task,
    models_task,
    preflight_task,
    tracked_run,
)
from tasks.runs import Locations, RunRef
from tasks.tables import nightly_table
from tasks.tracking import Tracker


@flow(name="evaluate", log_prints=True)
def evaluate_flow(config: EvaluateFlowConfig = EvaluateFlowConfig()) -> dict:
    """Evaluate each model and log Avg@k, Pass@k, length and entropy; returns {model label:
    {"run_id", "metrics", "settings", "night_run_id", "links", "table" (the night's, the same
    for every model), "prefect_run_url"}}."""
    where = preflight_task(config)
    models = models_task(config, where.tracking_uri, str(where.root))

    @functools.cache
    def benchmarks() -> tuple[str, ...]:  # the fallback: resolved only if a model needs it
        return benchmarks_task(config.benchmarks, config.profile, str(where.root))

    results, rows = {}, []
    spec = night_spec(config, models, where.root, nights_task(where.tracking_uri, config.name))
    with tracked_run(spec, where.tracking_uri) as night:
        for label, model, tags in models:
            rows.append(evaluate_model(config, label, model, tags, benchmarks, where,
                                       night.ref.run_id))
            results[label] = {key: rows[-1][key] for key in ("run_id", "metrics", "settings")}
        table = nightly_table(rows)
        trend = trend_task(night.ref, config.name, max(config.ks))
        night.end.text["results.md"] = table + "\n"
    # the runs view's metric columns at the night's largest k (each model's own k may differ)
    links = links_task(where.tracking_uri, night.ref.run_id,
                       max(max(row["config"].ks) for row in rows))
    publish(f"evaluation-{config.name}", spec.name, links,
            "## Tonight\n\n" + table, "## Trend\n\n" + trend)
    return {label: {**result, "night_run_id": night.ref.run_id, "links": links, "table": table,
                    "prefect_run_url": flow_run.ui_url} for label, result in results.items()}


def evaluate_model(config: EvaluateFlowConfig, label: str, model: str, tags: dict,
                   benchmarks: Callable[[], tuple[str, ...]], where: Locations,
                   night_run_id: str) -> dict:
    """One model as a child run of the night, with its study's settings where its source run
    recorded them; returns its row of the night's table (tasks.tables.nightly_table)."""
    study = study_task(where.tracking_uri, tags.get("source_run"))
    evaluation, settings = nightly_eval_config(config, model, benchmarks,
                                               recorded_eval_knobs(study.get("params", {})))
    child = evaluation_spec(config, label, evaluation, {**tags, "eval_settings": settings},
                            where.root, night_run_id)
    with tracked_run(child, where.tracking_uri) as run:
        out = evaluate_task(evaluation, str(child.run_dir), where.store_url, run.ref, 0,
                            str(where.root), label=label)
    return {"model": label, "settings": settings, "config": evaluation, "study": study,
            "metrics": out["metrics"], "identity": out["identity_hash"],
            "run_id": run.ref.run_id}


@task(name="study-of-model", cache_policy=NO_CACHE, **IO_RETRIES)
def study_task(tracking_uri: str, source_run: str | None) -> dict:
    """What a registered model's source run recorded of its evaluation: its params, its
    metrics (the last evaluation's: the registered weights') and its evaluation identity
    (tag ``eval_identity``); {} for a model without a source run."""
    if not source_run:
        return {}
    with Tracker(tracking_uri) as tracker:
        return {"params": tracker.run_params(source_run),
                "metrics": tracker.run_metrics(source_run),
                "identity": tracker.run_tags(source_run).get("eval_identity")}


@task(name="earlier-nights", cache_policy=NO_CACHE, **IO_RETRIES)
def nights_task(tracking_uri: str, experiment: str) -> list[str]:
    """The names of the experiment's earlier night runs (tasks.plan.night_spec numbers a
    second run on one date)."""
    with Tracker(tracking_uri) as tracker:
        return [run.run_name for run, _ in tracker.runs_with_tag(experiment, NIGHT_TAG)]


@task(name="nightly-trend", cache_policy=NO_CACHE, **IO_RETRIES)
def trend_task(night: RunRef, experiment: str, k: int) -> str:
    """Each model's Avg@k across nights, attached to the night's parent run
    (dashboards.nightly); returns the Markdown table."""
    with Tracker(night.tracking_uri) as tracker:
        return attach_trend(tracker, experiment, night.run_id, k)
