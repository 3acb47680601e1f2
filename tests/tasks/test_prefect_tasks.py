"""The Prefect wrappers run inside a real (ephemeral, temporary) Prefect server; what long
steps say lands in the flow run's log."""

import threading
from dataclasses import replace
from pathlib import Path

import pytest
from prefect import flow, task

from tasks.data import write_problems
from tasks.prefect_tasks import _log, teacher_rollouts_task, tracked_run, train_task
from tasks.progress import Progress
from tasks.runs import RunSpec
from tasks.tracking import Tracker, TrackingOutage
from tasks.train import TrainConfig


@pytest.mark.slow
def test_train_task_runs_in_a_flow(prefect_server, tmp_path, tiny_pair, tiny_problems):
    write_problems(tiny_problems["train"][:16], tmp_path / "train.jsonl")
    config = TrainConfig(objective="sft", teacher=str(tiny_pair[0]), student=str(tiny_pair[1]),
                         train_problems=str(tmp_path / "train.jsonl"),
                         output_dir=str(tmp_path / "run"), steps=2, batch_size=4,
                         max_new_tokens=8, artifacts_root=str(tmp_path / "artifacts"))

    @flow
    def distill(config: TrainConfig) -> dict:
        return train_task(config)

    out = distill(config)
    assert Path(out["checkpoint"]) == tmp_path / "run" / "checkpoint-000002"
    assert (Path(out["checkpoint"]) / "model.safetensors").exists()
    assert out["metrics"]["step"] == 2.0
    with pytest.raises(ValueError, match="checkpoint of a different config"):
        distill(replace(config, learning_rate=1e-3))  # another config, same directory


@pytest.mark.slow
def test_a_tracking_outage_inside_a_run_closes_it_killed_and_the_rerun_resumes_it(
        prefect_server, tmp_path, mlflow_server, monkeypatch):
    monkeypatch.setenv("DISTILL_LAB_ARTIFACTS", str(tmp_path))
    spec = RunSpec("outage", "cell", {}, {"steps": 3}, tmp_path / "cell", key="k1")

    @flow
    def cell() -> None:
        with tracked_run(spec, mlflow_server.uri) as run:
            mlflow_server.stop()  # the next call that cannot wait for it fails
            Tracker(mlflow_server.uri, check=False).set_tags(run.ref.run_id, {"a": "b"})

    with pytest.raises(TrackingOutage, match="run 'cell' is marked KILLED"):
        cell()
    mlflow_server.start()
    with Tracker(mlflow_server.uri, artifacts_dir=tmp_path) as tracker:
        assert tracker.replay_all()
        [run] = tracker.experiment_runs("outage")
        assert run.status == "KILLED"

    @flow
    def rerun() -> bool:
        with tracked_run(spec, mlflow_server.uri) as again:
            return again.ref.resumed and again.ref.run_id == run.run_id

    assert rerun()


def _run_logs(state) -> list[str]:
    """The messages in a finished flow run's Prefect log (what its page in the UI shows)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # the log records still batched in this process
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(
            any_=[state.state_details.flow_run_id])))
    return [log.message for log in logs]


@pytest.mark.slow
def test_teacher_rollouts_report_their_progress_in_the_flow_runs_log(
        prefect_server, tmp_path, tiny_pair, tiny_problems, capsys):
    write_problems(tiny_problems["train"][:12], tmp_path / "train.jsonl")
    config = TrainConfig(objective="sft", teacher=str(tiny_pair[0]), student=str(tiny_pair[1]),
                         train_problems=str(tmp_path / "train.jsonl"),
                         output_dir=str(tmp_path / "run"), max_new_tokens=8,
                         artifacts_root=str(tmp_path / "artifacts"))

    @flow
    def rollouts(config: TrainConfig) -> dict:
        return teacher_rollouts_task(config)

    logs = _run_logs(rollouts(config, return_state=True))
    progress = [m for m in logs if m.startswith("teacher rollouts: ")]
    assert progress[0].startswith("teacher rollouts: 0 of 12 problems (0%), 0:00 elapsed (the "
                                  "ETA is rough: a batch of 32 takes as long as its longest")
    assert progress[-2].startswith("teacher rollouts: 12 of 12 problems (100%)")
    assert "generated now" in progress[-1]
    assert "teacher rollouts" not in capsys.readouterr().out  # nothing went round the log


@pytest.mark.slow
def test_a_long_step_inside_a_task_is_heard_from_every_every_s(prefect_server):
    """A step longer than every_s (a batch of long answers): its heartbeat lines, sent from
    their own thread, still land in the run's log."""
    said: list[str] = []
    three = threading.Event()

    def log(line: str) -> None:
        _log(line)  # the run's logger, reached from the heartbeat thread
        said.append(line)
        if len(said) >= 3:
            three.set()

    @task
    def long_step() -> None:
        with Progress(4, "a long step", log, every_s=0.05):
            assert three.wait(timeout=30), said

    @flow
    def one_long_step() -> None:
        long_step()

    logs = _run_logs(one_long_step(return_state=True))
    assert len(said) >= 4  # the start, two heartbeats, the end
    assert [m for m in logs if m.startswith("a long step: ")] == said


def test_io_retries_retry_a_failed_io_call_but_not_a_refusal(prefect_server):
    """A refusal (ValueError) fails at once; an I/O error is tried again twice."""
    from tasks.prefect_tasks import IO_RETRIES

    calls = []

    @task(**{**IO_RETRIES, "retry_delay_seconds": 0})
    def fails(error: Exception) -> None:
        calls.append(type(error).__name__)
        raise error

    @flow
    def attempt(error: Exception) -> None:
        fails(error)

    with pytest.raises(ValueError, match="not ready"):
        attempt(ValueError("the study is not ready"))
    assert calls == ["ValueError"]
    calls.clear()
    with pytest.raises(OSError, match="server"):
        attempt(ConnectionError("the server went away"))
    assert calls == ["ConnectionError"] * 3
