"""End to end through real servers: `distill up` starts a Prefect server and an MLflow server on
loopback, `distill serve` creates the deployments, a small distill run is triggered through the
Prefect API, and its metrics — response lengths included — are read back from MLflow."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings

from tasks.data import write_problems
from tasks.services import down, up
from tasks.tracking import Tracker


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_a_distill_run_triggered_through_prefect_lands_in_mlflow(tmp_path, tiny_pair,
                                                                 tiny_problems):
    services = up(tmp_path / "services", prefect_port=_free_port(), mlflow_port=_free_port())
    env = {**os.environ, **services["env"], "DISTILL_LAB_ARTIFACTS": str(tmp_path / "artifacts"),
           "PREFECT_HOME": str(tmp_path / "prefect-home")}
    server = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve"], env=env,
                              stdout=open(tmp_path / "serve.log", "w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        train = write_problems(tiny_problems["train"][:16], tmp_path / "train.jsonl")
        bench = write_problems(tiny_problems["test"][:4], tmp_path / "tiny.jsonl")
        config = {"name": "integration", "teacher": str(tiny_pair[0]),
                  "student": str(tiny_pair[1]), "train_problems": str(train),
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
        for key in ("eval/tiny/response_length_mean", "eval/tiny/response_length_median",
                    "eval/tiny/truncation_rate", "eval/tiny/avg_at_2", "train/loss"):
            assert key in metrics, key
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        down(tmp_path / "services")


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
