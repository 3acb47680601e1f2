"""A study fanned out over Prefect workers (executor: pool, flows/pool.py and flows/study_run.py).

Slow, end to end (bench/fanout_wall.py's stack): `up` starts a Prefect server and an MLflow
server on loopback, study-run is registered on a process work pool and two real workers serve it
(`infra/worker.sh`: `prefect worker start --pool … --type process --limit 1`). A 4-run
micro-study (2 cells × 2 seeds on the tiny models) first runs with one run's folder locked by
this test: that run fails alone, the other three finish, and the study writes its table,
findings and report naming the failed run, then ends FAILED. Run again, it submits only the
failed run (the finished ones are reused) and ends COMPLETED. Two runs ran at once: their flow
runs' wall times overlap. Its table equals the same config's in-process (executor local) table,
and so does every logged number of every run but its timings, exactly: each run is the same code on
the same seed in one torch process on the same machine, wherever it is started.

Quick, on the test harness's server: a pool that does not exist, a pool without a live worker,
a server that does not answer (`distill grid`), a pool whose workers vanish while runs wait, a
worker running other code.
"""

import os
import time
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.settings import PREFECT_API_URL, temporary_settings

import flows.pool
from bench.fanout_wall import micro_study, pool_stack
from flows.cli import main
from flows.grid import grid_flow
from flows.serve import register_study_run
from flows.study_run import Expected, study_run_flow
from tasks.configs import StudyConfig
from tasks.inputs import resolve_inputs
from tasks.plan import cell_directory, cells, study_directory
from tasks.runs import run_lock
from tasks.services import free_port
from tasks.tracking import Tracker

pytestmark = pytest.mark.slow  # every test starts Prefect servers or workers

REPO = Path(__file__).resolve().parents[2]
POOL = "fanout-test"


# ----------------------------------------------------------------------------- two real workers


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Prefect + MLflow servers, study-run on POOL, two process workers (one run at a time
    each) sharing one artifact folder with this process."""
    with pool_stack(tmp_path_factory.mktemp("fanout"), POOL, workers=2) as started:
        yield started


def _study(stack, config: StudyConfig, artifacts: Path, monkeypatch):
    """The grid flow in this process against the stack's servers, its final state."""
    monkeypatch.setenv("DISTILL_LAB_ARTIFACTS", str(artifacts))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", stack["services"]["env"]["MLFLOW_TRACKING_URI"])
    monkeypatch.setenv("DISTILL_LAB_STORE_URL", stack["env"]["DISTILL_LAB_STORE_URL"])
    with temporary_settings({PREFECT_API_URL: stack["services"]["prefect_api"]}):
        return grid_flow(config, return_state=True)


@pytest.mark.slow
def test_a_study_fans_out_over_two_workers(stack, tiny_pair, tiny_problems, monkeypatch):
    root, artifacts = stack["root"], stack["root"] / "artifacts"
    config = micro_study(root, *tiny_pair, tiny_problems, executor="pool", work_pool=POOL,
                     max_concurrent_runs=2)
    # One run's folder held by this process: its worker fails it; the other three go on.
    inputs = resolve_inputs(config, artifacts)
    study_dir, _ = study_directory(config, inputs, artifacts)
    with run_lock(cell_directory(study_dir, "opd", 1)):
        started = time.monotonic()
        failed = _study(stack, config, artifacts, monkeypatch)
        first_s = time.monotonic() - started
    assert failed.is_failed(), failed
    assert "1 of the study's runs failed (opd seed 1)" in failed.message, failed.message
    with Tracker(stack["services"]["mlflow_ui"]) as tracker:
        parent = tracker.latest_run("fanout", "study", "grid")
        children = {c.run_name: c for c in tracker.child_runs(parent)}
        results = tracker.client.download_artifacts(parent, "results.md", str(root))
        failure = tracker.run_tags(children["opd seed 1"].run_id)["failure"]
    assert {name: c.status for name, c in children.items()} == {
        "sft seed 0": "FINISHED", "sft seed 1": "FINISHED", "opd seed 0": "FINISHED",
        "opd seed 1": "FAILED"}
    assert "is in use by another process" in failure
    written = Path(results).read_text()
    assert "**Failed runs: 1**" in written and "- opd seed 1: MLflow run" in written
    report = (study_dir / "report.html").read_text(encoding="utf-8")
    assert f"opd (seed 1) (FAILED, run {children['opd seed 1'].run_id})" in report

    # Again, the folder free: only the failed run is submitted; the study completes.
    started = time.monotonic()
    state = _study(stack, config, artifacts, monkeypatch)
    again_s = time.monotonic() - started
    assert state.is_completed(), state
    pooled = state.result()
    assert [r["cell"] for r in pooled["rows"]] == ["sft", "sft", "opd", "opd"]
    spans = _wall_times(stack)  # 4 of the first study, then the one retried
    assert len(spans) == 5, spans
    first_wave = sorted(spans)[:2]
    assert first_wave[1][0] < first_wave[0][1], f"no two runs ran at once: {spans}"

    # The same config in this process (its own artifact folder, so a study of its own).
    local = _study(stack, config.model_copy(update={"executor": "local"}), root / "local",
                   monkeypatch)
    assert local.is_completed(), local
    assert _table(pooled["table"]) == _table(local.result()["table"])
    # Not only to the table's 3 decimals: every logged number of every run, exactly (same code,
    # seeds and machine, one torch process per run either way).
    pooled_metrics = _run_metrics(stack, pooled["parent_run_id"])
    assert pooled_metrics == _run_metrics(stack, local.result()["parent_run_id"])
    assert all(any(k.startswith("eval/") for k in m) for m in pooled_metrics.values())
    print(f"pool study with one failure {first_s:.0f} s, its rerun {again_s:.0f} s")


def _wall_times(stack) -> list[tuple[float, float, str]]:
    """(start, end, name) of each study-run flow run on the stack's server: its wall time on a
    worker, from the worker taking it (PENDING) to its end — process start-up included, which
    on 2 cores is most of a 3-step run (its RUNNING state starts after the imports, so two
    workers' runs can start seconds apart and not overlap though their processes did)."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.objects import StateType

    with (temporary_settings({PREFECT_API_URL: stack["services"]["prefect_api"]}),
          get_client(sync_client=True) as client):
        runs = client.read_flow_runs(flow_filter=FlowFilter(
            name=FlowFilterName(any_=[flows.pool.FLOW_NAME])))
        taken = {r.id: min(s.timestamp for s in client.read_flow_run_states(r.id)
                           if s.type == StateType.PENDING) for r in runs}
    return [(taken[r.id].timestamp(), r.end_time.timestamp(), r.name) for r in runs]


def _run_metrics(stack, parent_run_id: str) -> dict[str, dict[str, float]]:
    """Each child run's last value of every metric but its timings, by run name."""
    def timing(key: str) -> bool:
        return key.startswith("time/") or "second" in key or key.endswith("_s")

    with Tracker(stack["services"]["mlflow_ui"]) as tracker:
        return {child.run_name: {key: value for key, value
                                 in tracker.run_metrics(child.run_id).items()
                                 if not timing(key)}
                for child in tracker.child_runs(parent_run_id)}


def _table(text: str) -> list[str]:
    """A results table's lines: it holds no run ids or times, so it is compared whole."""
    return text.strip().splitlines()


# ----------------------------------------------------------------------------- bad input, quick


@pytest.fixture
def small_study(tmp_path, tiny_pair, tiny_problems, prefect_server, monkeypatch):
    monkeypatch.setenv("DISTILL_LAB_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DISTILL_LAB_STORE_URL", raising=False)
    return micro_study(tmp_path, *tiny_pair, tiny_problems, executor="pool", seeds=[0],
                   cells=["sft"])


def _create_pool(name: str) -> None:
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(
            name=name, type="process",
            base_job_template=ProcessWorker.get_default_base_job_template()))


def _refused_within_a_minute(config: StudyConfig) -> str:
    """The grid flow on config fails before any training, within a minute: its message."""
    started = time.monotonic()
    state = grid_flow(config, return_state=True)
    assert state.is_failed(), state
    assert time.monotonic() - started < 60
    return state.message


def test_a_pool_that_does_not_exist_is_named_at_once(small_study):
    message = _refused_within_a_minute(small_study.model_copy(update={"work_pool": "no-such"}))
    assert "work pool 'no-such' does not exist on the Prefect server" in message
    assert "prefect worker start --pool no-such --type process" in message


def test_a_pool_without_a_live_worker_is_named_within_a_minute(small_study):
    _create_pool("idle-pool")
    register_study_run("idle-pool")
    message = _refused_within_a_minute(small_study.model_copy(update={"work_pool": "idle-pool"}))
    assert "work pool 'idle-pool' on http" in message
    assert "has no live worker (none sent a heartbeat in the last 90 s; no worker ever " \
           "connected)" in message


def test_distill_grid_names_the_pool_of_a_server_that_does_not_answer(small_study, tmp_path,
                                                                     capsys, monkeypatch):
    """Prefect itself would fail the flow with "Failed to reach API"; the CLI checks first."""
    config = tmp_path / "pool.yaml"
    config.write_text(yaml.safe_dump(small_study.model_dump(mode="json")))
    closed = f"http://127.0.0.1:{free_port()}/api"
    started = time.monotonic()
    with temporary_settings({PREFECT_API_URL: closed}):
        assert main(["grid", str(config)]) == 2
    assert time.monotonic() - started < 60
    error = capsys.readouterr().err
    assert f"work pool 'distill-pool': the Prefect server {closed} does not answer" in error
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert main(["grid", str(config)]) == 2
    assert ("work pool 'distill-pool' is on the Prefect server its workers use, and "
            "PREFECT_API_URL is not set" in capsys.readouterr().err)


def test_runs_waiting_on_a_pool_whose_workers_vanished_fail_and_are_named(small_study,
                                                                           monkeypatch):
    """A worker that heartbeats for the check, then is gone: the submitted run stays SCHEDULED,
    is reported after the pickup timeout and fails naming the pool; the study still writes its
    table and ends FAILED."""
    _create_pool("vanishing-pool")
    register_study_run("vanishing-pool")
    with get_client(sync_client=True) as client:
        client.send_worker_heartbeat("vanishing-pool", "ghost", heartbeat_interval_seconds=30)
    answers = iter([True])  # live for the check before any work, never again
    real = flows.pool.live_workers
    monkeypatch.setattr(flows.pool, "live_workers",
                        lambda client, pool: real(client, pool) if next(answers, False) else [])
    monkeypatch.setattr(flows.pool, "PICKUP_TIMEOUT_S", 3.0)
    state = grid_flow(small_study.model_copy(update={"work_pool": "vanishing-pool"}),
                      return_state=True)
    assert state.is_failed()
    assert "1 of the study's runs failed (sft)" in state.message, state.message
    with Tracker() as tracker:
        (run,) = tracker.child_runs(tracker.latest_run("fanout", "study", "grid"))
        failure = tracker.run_tags(run.run_id)["failure"]
        assert run.status == "FAILED"
    assert "for a worker: work pool 'vanishing-pool'" in failure
    assert "has no live worker" in failure and "ghost last seen" in failure


def test_a_worker_with_other_code_refuses_the_run(small_study):
    inputs = resolve_inputs(small_study, os.environ["DISTILL_LAB_ARTIFACTS"])
    (cell,) = cells(small_study)
    state = study_run_flow(small_study, inputs, cell, 0, "/nowhere", "no-run",
                           Expected("k" * 16, "0123456789abcdef", "sqlite:///x"),
                           return_state=True)
    assert state.is_failed()
    from tasks.plan import code_identity

    assert (f"its code version is {code_identity()}, the study's is 0123456789abcdef"
            in state.message), state.message


def test_prefect_yaml_registers_study_run_and_validates_the_kubernetes_example():
    """The deployment file as Prefect's own `prefect deploy` model reads it (no server)."""
    import yaml
    from prefect.cli.deploy._models import DeploymentConfig, PrefectYamlModel

    project = yaml.safe_load((REPO / "infra" / "prefect.yaml").read_text())
    deployments = {d.name: d for d in PrefectYamlModel.model_validate(project).deployments}
    study_run = deployments["study-run"]
    assert study_run.entrypoint == "flows/study_run.py:study_run_flow"
    assert study_run.work_pool.name == "distill-pool" == StudyConfig().work_pool
    example = DeploymentConfig.model_validate(
        project["definitions"]["examples"]["study_run_on_kubernetes"])
    assert example.entrypoint == study_run.entrypoint
    assert example.work_pool.name == "distill-k8s"
    assert example.work_pool.job_variables["env"]["DISTILL_LAB_ARTIFACTS"] == "/data/artifacts"
