"""The Prefect wrappers run inside a real (ephemeral, temporary) Prefect server."""

from dataclasses import replace
from pathlib import Path

import pytest
from prefect import flow

from tasks.data import write_problems
from tasks.prefect_tasks import tracked_run, train_task
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
