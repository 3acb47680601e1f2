"""Prefect task wrappers: thin adapters that flows compose, around the plain functions here.

Tasks exchange paths, run ids and small dicts, never models or tensors. Expensive products
(bootstraps, prepared problems, teacher rollouts, teacher score caches) are cached by the
project's own content keys (inputs, config hash, code version) in the artifact directory, so
Prefect's cache is off (``NO_CACHE``): its default key ignores the code a task calls. Retries
only where the work is I/O (MLflow calls); training is never retried: a rerun of the same
config resumes from its own checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import ExternalSignal

from tasks.compute import ComputeMeter
from tasks.configs import ExperimentConfig, StudyConfig
from tasks.eval_metrics import ENTROPY, for_mlflow, shown_in
from tasks.evaluate import EvalConfig, evaluate
from tasks.files import atomic_write_text
from tasks.findings import findings_document, findings_table, study_findings
from tasks.inputs import Inputs, benchmark_specs, bootstrap, resolve_inputs, resolve_rl_inputs
from tasks.models import check_available, non_embedding_parameters_of
from tasks.readiness import assess, curriculum_min_entropy
from tasks.rl import train_grpo
from tasks.rollout import read_samples
from tasks.runs import (
    RUN_KEY_TAG,
    Locations,
    RunEnd,
    RunRef,
    RunSpec,
    close_run,
    open_run,
    preflight,
    run_lock,
    slug,
)
from tasks.store import RolloutStore
from tasks.study import read_evaluations, read_study
from tasks.tables import interval_table
from tasks.tracking import PARENT_TAG, Tracker, TrackingOutage, tracking_answers
from tasks.train import TrainConfig, teacher_prefixes, teacher_scores, train


def _not_a_refusal(task, task_run, state) -> bool:
    """Retry what a server or a file system failed, not a refusal (a ValueError): the same
    inputs are refused again, three times over 10 s (the readiness check's was)."""
    return not isinstance(state.data, ValueError)


IO_RETRIES = {"retries": 2, "retry_delay_seconds": 5, "retry_condition_fn": _not_a_refusal}


def _log(message: str) -> None:
    get_run_logger().info(message)


def _warn(message: str) -> None:
    """A line the run's log shows as a warning (what the user must not miss)."""
    get_run_logger().warning(message)


def _tracker(ref: RunRef):
    return Tracker(ref.tracking_uri)


@task(name="bootstrap", cache_policy=NO_CACHE)
def bootstrap_task(profile: str, root: str) -> dict[str, str]:
    """Build (or reuse) a profile's problems, teacher and student; returns their paths."""
    artifacts = bootstrap(profile, root, _log)
    return {"data": str(artifacts.data_dir), "teacher": str(artifacts.teacher_dir),
            "student": str(artifacts.student_dir)}


@task(name="prepare", cache_policy=NO_CACHE)
def prepare_task(config: ExperimentConfig | StudyConfig, root: str) -> Inputs:
    """Resolve teacher, student and problem files (bootstrapping the profile if needed)."""
    return resolve_inputs(config, root, _log)


@task(name="teacher-rollouts", cache_policy=NO_CACHE)
def teacher_rollouts_task(config: TrainConfig) -> dict:
    """The teacher's responses for teacher-prefix cells (generated once, then reused)."""
    meter = ComputeMeter(0, 0)
    directory, samples = teacher_prefixes(config, meter, _log)
    generated = meter.tokens["generate"]
    _log(f"teacher rollouts: {len(samples)} at {directory} "
         f"({'generated now' if generated else 'reused from the cache'})")
    # What generating them costs, whether or not this run paid it: 2·N per token (compute.py).
    tokens = sum(len(s.prompt_ids) + len(s.response_ids) for s in samples)
    teacher_n = non_embedding_parameters_of(check_available(config.teacher, "teacher"))
    return {"directory": str(directory), "samples": len(samples), "generated_tokens": generated,
            "flops": 2.0 * teacher_n * tokens, "key": [config.longest_response, config.cache_k]}


@task(name="teacher-scores", cache_policy=NO_CACHE)
def teacher_scores_task(config: TrainConfig) -> dict:
    """The teacher's top-k score cache over its rollouts (scored once, then reused)."""
    meter = ComputeMeter(0, 0)
    _, samples = teacher_prefixes(config, log=_log)
    scores = teacher_scores(config, samples, meter, _log)
    forward = meter.tokens["teacher_score"]
    _log(f"teacher scores: top-{config.cache_k}, {scores.bytes_per_token():.0f} bytes/token "
         f"({'scored now' if forward else 'reused from the cache'})")
    return {"teacher_forward_tokens": forward, "bytes_per_token": scores.bytes_per_token()}


@task(name="distill-train", cache_policy=NO_CACHE, retries=0)
def train_task(config: TrainConfig, run: RunRef | None = None,
               products_flops: float = 0.0) -> dict:
    """Run (or resume) one distillation run, streaming step metrics to the run if given.
    products_flops: this run's share of the teacher products it trains from (rollouts, score
    cache), added to its FLOPs as ``train/total_flops_with_products``."""
    tracker = _tracker(run) if run else None
    started = time.perf_counter()

    def on_step(step: int, metrics: dict[str, float]) -> None:
        if tracker is not None:
            shared = {"train/total_flops_with_products": metrics["train/total_flops"]
                      + products_flops, "compute/teacher_products_flops_share": products_flops}
            tracker.log_metrics(run.run_id, {**{k: v for k, v in metrics.items() if k != "step"},
                                             **shared}, step)

    try:
        result = train(config, log=_log, on_step=on_step)
        metrics = {**result.metrics, "time/train_total": time.perf_counter() - started}
        if tracker is not None:
            tracker.log_metrics(run.run_id, {"time/train_total": metrics["time/train_total"]},
                                config.steps)
    finally:
        if tracker is not None:
            tracker.close()
    return {"checkpoint": str(result.checkpoint), "metrics": metrics,
            "gate_decisions": result.gate_decisions}


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(config: EvalConfig, output_dir: str, store_url: str | None = None,
                  run: RunRef | None = None, step: int = 0, root: str | None = None,
                  label: str | None = None) -> dict:
    """Evaluate one model (label: its name in the log lines); its metrics (greedy accuracy and
    gold NLL among them) and the per-sample table go to output_dir, the store and the run."""
    result = evaluate(config, output_dir=output_dir, store_url=store_url,
                      run_id=run.run_id if run else None, step=step, artifacts_root=root,
                      log=_log, label=label)
    if run is not None:  # a server down now: all of it waits in the spill file for replay
        with Tracker(run.tracking_uri, check=False) as tracker:
            tracker.log_metrics(run.run_id, for_mlflow(result.metrics, max(config.ks)), step)
            tracker.set_tags(run.run_id, {"eval_identity": result.identity_hash},
                             deferrable=True)
            tracker.log_dict(run.run_id, {"identity": result.identity,
                                          "metrics": result.metrics}, "eval/metrics.json",
                             deferrable=True)
            tracker.log_table(run.run_id, [asdict(r) for r in result.samples[:200]],
                              "eval/samples.json", deferrable=True)
            if result.greedy:  # one greedy response per problem
                tracker.log_table(run.run_id, [asdict(r) for r in result.greedy[:200]],
                                  "eval/greedy.json", deferrable=True)
    return {"metrics": result.metrics, "identity_hash": result.identity_hash,
            "output_dir": output_dir}


@task(name="preflight", cache_policy=NO_CACHE)
def preflight_task(config=None) -> Locations:
    """Before any work: where things go, the tracking server answers, the artifacts folder has
    room, the config's models and problems files read; what an earlier run could not send to
    MLflow is sent now."""
    return preflight(config, _log)


@task(name="run-results", cache_policy=NO_CACHE, **IO_RETRIES)
def run_results_task(run: RunRef, children: bool = False, before_after: bool = False) -> dict:
    """A finished run's results read back from MLflow: its metrics (the row of a results
    table), with children the rows of its child runs, with before_after its evaluation at its
    first and last step (an RL run)."""
    with Tracker(run.tracking_uri) as tracker:
        if before_after:
            histories = {key: tracker.metric_history(run.run_id, key)
                         for key in tracker.run_metrics(run.run_id) if key.startswith("eval/")}
            return {"before": {k: h[0][1] for k, h in histories.items()},
                    "after": {k: h[-1][1] for k, h in histories.items()}}
        if not children:
            metrics = tracker.run_metrics(run.run_id)
            return {"run_id": run.run_id, "metrics": metrics, "train": metrics}
        rows = []
        for child in tracker.child_runs(run.run_id):
            metrics = tracker.run_metrics(child.run_id)
            rows.append({"cell": child.run_name, "run_id": child.run_id, "metrics": metrics,
                         "train": metrics})
    return {"rows": rows}


@task(name="find-run", cache_policy=NO_CACHE, **IO_RETRIES)
def find_run_task(spec: RunSpec, tracking_uri: str) -> RunRef | None:
    """spec's run if MLflow has one (its run key, under its parent), without opening it;
    finished when it FINISHED and its folder exists (what open_run would reuse). None if none."""
    identity = {RUN_KEY_TAG: spec.key}
    if spec.parent_run_id:
        identity[PARENT_TAG] = spec.parent_run_id
    with Tracker(tracking_uri) as tracker:
        found = tracker.find_run(spec.experiment, identity)
    if found is None:
        return None
    return RunRef(tracking_uri, found.run_id,
                  finished=found.status == "FINISHED" and spec.run_dir.exists())


@task(name="record-failed-run", cache_policy=NO_CACHE, **IO_RETRIES)
def record_failed_run_task(spec: RunSpec, tracking_uri: str, reason: str) -> str:
    """A run that failed elsewhere (on a worker) as a FAILED MLflow run of spec's identity, its
    reason in tag ``failure``: the one its process opened, or a new one when it failed before
    opening any, so that the study's table and report name it and a rerun resumes it."""
    run = open_run(spec, tracking_uri, log=lambda message: None)  # no "resuming …" line
    if not run.finished:
        with Tracker(tracking_uri) as tracker:
            tracker.set_tags(run.run_id, {"failure": reason[:4000]})
        close_run(run, "FAILED", log=_log)
    return run.run_id


@task(name="open-run", cache_policy=NO_CACHE, **IO_RETRIES)
def open_run_task(spec: RunSpec, tracking_uri: str) -> RunRef:
    """Reuse, resume or create the MLflow run of spec (tasks.runs.open_run)."""
    return open_run(spec, tracking_uri, _log)


@task(name="close-run", cache_policy=NO_CACHE)
def close_run_task(run: RunRef, status: str, end: RunEnd | None = None) -> dict:
    """End a run FINISHED (registering its student), FAILED or KILLED (tasks.runs.close_run)."""
    return close_run(run, status, end, _log)


class TrackedRun:
    """An open run inside ``tracked_run``: ``ref`` for tasks, and what its close sends."""

    def __init__(self, ref: RunRef):
        self.ref, self.end = ref, RunEnd()

    @property
    def finished(self) -> bool:
        """It had finished before with the same identity: reuse its results."""
        return self.ref.finished


@contextlib.contextmanager
def tracked_run(spec: RunSpec, tracking_uri: str) -> Iterator[TrackedRun]:
    """Open spec's run (holding its folder's lock) and end it however the block ends:
    FINISHED, FAILED on an exception, KILLED on an interrupt (Ctrl-C, SIGTERM through the CLI).
    A run that had already finished is left as it was."""
    with run_lock(spec.run_dir):
        run = TrackedRun(open_run_task(spec, tracking_uri))
        if run.finished:
            yield run
            return
        try:
            yield run
        except (KeyboardInterrupt, ExternalSignal):  # Ctrl-C; SIGTERM inside a Prefect run
            close_run_task(run.ref, "KILLED")
            raise
        except TrackingOutage:  # a child run met it first and said so
            close_run_task(run.ref, "KILLED")
            raise
        except BaseException as error:
            if tracking_answers(tracking_uri):
                close_run_task(run.ref, "FAILED")
                raise
            # The server went away mid-run: an interruption, not a failure of the run, and
            # what it had done resumes as after a kill.
            close_run_task(run.ref, "KILLED")
            raise TrackingOutage(tracking_uri, f"run {spec.name!r} is marked KILLED") from error
        close_run_task(run.ref, "FINISHED", run.end)


def write_json(path: str | Path, value: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(value, indent=2, default=str))
    return path


@task(name="models-to-evaluate", cache_policy=NO_CACHE, **IO_RETRIES)
def models_task(config, tracking_uri: str, root: str) -> list[tuple[str, str, dict]]:
    """(label, local model directory, tags) per model: config.models as given, else the newest
    version of each registered model named config.registered_prefix*, downloaded."""
    if config.models:
        return [(Path(m).name or m, m, {"evaluated_model": m}) for m in config.models]
    with Tracker(tracking_uri) as tracker:
        versions = tracker.latest_model_versions(config.registered_prefix,
                                                 download_to=Path(root) / "registry")
    if not versions:
        raise ValueError(f"no registered models start with {config.registered_prefix!r} at "
                         f"{tracking_uri}; run the grid or distill flow first, or pass models")
    return [(f"{v.name} v{v.version}", str(v.local_dir),
             {"evaluated_model": v.name, "model_version": str(v.version),
              "source_run": v.run_id}) for v in versions]


@task(name="prepare-rl", cache_policy=NO_CACHE)
def rl_inputs_task(config, root: str):
    """The RL flow's prompts and benchmarks (tasks.inputs.resolve_rl_inputs)."""
    return resolve_rl_inputs(config, root, _log)


@task(name="prepare-benchmarks", cache_policy=NO_CACHE)
def benchmarks_task(benchmarks: list[str], profile: str, root: str) -> tuple[str, ...]:
    """Benchmark specs with 'default' resolved to the profile's test split."""
    return benchmark_specs(benchmarks, profile, root, _log)


@task(name="grpo", cache_policy=NO_CACHE, retries=0)
def rl_task(config, run: RunRef | None = None) -> dict:
    """GRPO from one distilled student (tasks.rl), streaming step metrics to the run."""
    tracker = _tracker(run) if run else None

    def on_step(step: int, metrics: dict[str, float]) -> None:
        if tracker is not None:
            tracker.log_metrics(run.run_id, {k: v for k, v in metrics.items() if "/" in k},
                                step)

    try:
        result = train_grpo(config, log=_log, on_step=on_step)
    finally:
        if tracker is not None:
            tracker.close()
    return {"checkpoint": str(result.checkpoint), "metrics": result.metrics,
            "skipped_steps": result.skipped_steps}


@task(name="log-text", cache_policy=NO_CACHE, **IO_RETRIES)
def log_text_task(run: RunRef, text: str, artifact_file: str) -> None:
    """Attach a text artifact (a table, a report) to an existing run."""
    tracker = _tracker(run)
    try:
        tracker.log_text(run.run_id, text, artifact_file)
    finally:
        tracker.close()


# ----------------------------------------------------------------------------- a study's checks


@task(name="readiness", cache_policy=NO_CACHE, **IO_RETRIES)
def readiness_task(config, references: list[dict], products: list[dict], parent: RunRef,
                   store_url: str) -> dict:
    """Can the study show what it asks about (tasks.readiness)? Logged to the study's parent
    run (readiness.json, a readiness tag and one tag per shortfall) and to the flow's log;
    refused before any training unless config.readiness is "warn". Returns the readiness and
    the H_min the curriculum uses (derived from the starting student when asked)."""
    by_label = {row["cell"]: row for row in references}
    with RolloutStore(store_url) as store:
        evaluations = {label: read_evaluations(store, row["run_id"])
                       for label, row in by_label.items()}
    rollouts = [s for p in products for s in read_samples(Path(p["rollouts"]["directory"])
                                                          / "samples.jsonl")]
    teacher = by_label.get("teacher", {}).get("metrics", {})
    result = assess(config, evaluations.get("teacher", ()),
                    evaluations.get("student (start)", ()), rollouts,
                    teacher.get(ENTROPY.logged(), float("nan")))
    min_entropy = curriculum_min_entropy(config, by_label, result.measured, _log)
    with Tracker(parent.tracking_uri) as tracker:
        tracker.log_dict(parent.run_id, result.to_dict(), "readiness.json")
        tracker.set_tags(parent.run_id, {"readiness": result.summary(),
                                         **{f"readiness.{k}": v
                                            for k, v in result.shortfalls.items()}})
    for name, text in result.shortfalls.items():
        _warn(f"readiness warning [{name}]: {text}")
    if result.blocking:
        raise ValueError(f"the study is {result.summary()}; {', '.join(result.blocking)} "
                         "cannot be waived by readiness: warn (see the warnings above)")
    if not result.ready and config.readiness == "refuse":
        raise ValueError(f"the study is {result.summary()} (see the warnings above); fix it, "
                         "or set readiness: warn to train anyway")
    (_log if result.ready else _warn)(f"readiness: {result.summary()}")
    return {"readiness": result.to_dict(), "min_entropy": min_entropy}


@task(name="conclude-study", cache_policy=NO_CACHE, **IO_RETRIES)
def conclude_task(config, parent: RunRef, store_url: str, run_dir: str,
                  context: dict) -> dict:
    """The study's results with intervals and its findings (C0–C5), from what its runs stored:
    findings.json and findings.md beside results.md in run_dir, and per-cell summary metrics on
    the parent run (e.g. ``avg_at_4/opd``) for comparing studies in MLflow."""
    k = max(config.eval_ks)
    with Tracker(parent.tracking_uri) as tracker, RolloutStore(store_url) as store:
        study = read_study(tracker, parent_run_id=parent.run_id, store=store)
        table = interval_table(study, config.baseline, k)
        findings = study_findings(study, config)
        tracker.log_metrics(parent.run_id, _summary_metrics(study, k), step=0)
        document = findings_document(findings, **context)
        tracker.log_dict(parent.run_id, document, "findings.json")
    folder = Path(run_dir)
    write_json(folder / "findings.json", document)
    text = findings_table(findings)
    atomic_write_text(folder / "findings.md", text + "\n")
    return {"table": table, "findings": text, "document": document}


def _summary_metrics(study, k: int) -> dict[str, float]:
    """Per cell, the mean over its seeds of the brief tables' metrics (tasks.eval_metrics),
    keyed ``<metric>/<cell>``."""
    summary = {}
    for label, runs in study.cells().items():
        for metric in shown_in("brief"):
            values = [v for r in runs if (v := r.metric(metric.logged(k))) is not None]
            if values:
                summary[f"{metric.key(k)}/{slug(label)}"] = sum(values) / len(values)
    return summary
