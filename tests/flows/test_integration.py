"""End to end through real servers: `distill up` starts a Prefect server and an MLflow server on
loopback, `distill serve` creates the deployments, a small distill run is triggered through the
Prefect API (what the UI's form submits), and its metrics — response lengths included — are read
back from MLflow. The same run through `distill run` and `python -m tasks.train` trains the same
weights, bit for bit: the three entry points share one declaration of every default."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings

from tasks.checkpoints import latest_checkpoint
from tasks.data import read_problems, write_problems
from tasks.services import down, up
from tasks.tracking import Tracker


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_a_distill_run_triggered_through_prefect_lands_in_mlflow(tmp_path, bootstrapped):
    services = up(tmp_path / "services", prefect_port=_free_port(), mlflow_port=_free_port())
    env = {**os.environ, **services["env"], "DISTILL_LAB_ARTIFACTS": str(tmp_path / "artifacts"),
           "PREFECT_HOME": str(tmp_path / "prefect-home")}
    server = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve"], env=env,
                              stdout=open(tmp_path / "serve.log", "w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        models, problems = bootstrapped.artifacts, bootstrapped.artifacts.data_dir
        # exactly train_size problems: the flows' cut to train_size is then this very file
        train = write_problems(read_problems(problems / "train.jsonl")[:8],
                               tmp_path / "train.jsonl")
        bench = write_problems(read_problems(problems / "test.jsonl")[:4], tmp_path / "tiny.jsonl")
        config = {"name": "integration", "teacher": str(models.teacher_dir),
                  "student": str(models.student_dir), "train_problems": str(train),
                  "held_out_problems": str(train), "train_size": 8, "objective": "dagger",
                  "steps": 2, "batch_size": 4, "max_new_tokens": 8, "benchmarks": [str(bench)],
                  "eval_n": 2, "eval_ks": [1, 2], "eval_max_new_tokens": 8}
        with temporary_settings({PREFECT_API_URL: services["prefect_api"]}):
            flow_run = _run_when_deployed("distill/distill", {"config": config}, server)
        assert flow_run.state.is_completed(), (flow_run.state, (tmp_path / "serve.log")
                                               .read_text()[-3000:])
        with Tracker(services["mlflow_ui"]) as tracker:
            run_id = tracker.latest_run("integration", "cell", "dagger")
            assert run_id is not None
            metrics = tracker.run_metrics(run_id)
            history = tracker.metric_history(run_id, "train/response_length")
        assert [step for step, _ in history] == [1, 2]
        for key in ("eval/overall/response_length_mean", "eval/overall/response_length_median",
                    "eval/overall/truncation_rate", "avg_at_2", "length", "train/loss"):
            assert key in metrics, key
        through_the_ui = _final_weights(tmp_path / "artifacts" / "runs")
        assert _final_weights(_distill_run(config, tmp_path, env)) == through_the_ui
        assert _final_weights(_tasks_train(config, tmp_path, env)) == through_the_ui
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        down(tmp_path / "services")


def _final_weights(runs: Path) -> bytes:
    """The student weights of the one run under runs, at its last step."""
    checkpoints = {latest_checkpoint(c.parent) for c in runs.rglob("checkpoint-*")}
    assert len(checkpoints) == 1, checkpoints
    return (checkpoints.pop() / "model.safetensors").read_bytes()


def _distill_run(config: dict, tmp_path: Path, env: dict) -> Path:
    """The same config through `distill run` (a YAML file, its own artifact directory)."""
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    root = tmp_path / "cli-artifacts"
    subprocess.run([sys.executable, "-m", "flows.cli", "--artifacts", str(root), "run",
                    str(tmp_path / "run.yaml")], env=env, check=True, capture_output=True)
    return root / "runs"


def _tasks_train(config: dict, tmp_path: Path, env: dict) -> Path:
    """The same run through `python -m tasks.train`: the fields the user gave that the trainer
    takes, everything else the trainer's own defaults (a drifted default shows here)."""
    fields = {key: config[key] for key in ("objective", "teacher", "student", "train_problems",
                                           "held_out_problems", "steps", "batch_size",
                                           "max_new_tokens")}
    out = tmp_path / "trainer" / "runs"
    (tmp_path / "run.json").write_text(json.dumps({**fields, "output_dir": str(out / "run")}))
    subprocess.run([sys.executable, "-m", "tasks.train", "--config", str(tmp_path / "run.json")],
                   env=env, check=True, capture_output=True)
    return out


def _run_when_deployed(name: str, parameters: dict, server: subprocess.Popen):
    """run_deployment once `distill serve` has registered the deployment (it takes seconds)."""
    deadline = time.monotonic() + 180
    while True:
        assert server.poll() is None, "distill serve exited early"
        try:
            return run_deployment(name, parameters=parameters, timeout=600)
        except ObjectNotFound:  # not registered yet
            if time.monotonic() > deadline:
                raise
            time.sleep(2)
