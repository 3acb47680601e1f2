"""Local services: real Prefect and MLflow servers started, checked and stopped on free ports."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tasks import services
from tasks.services import (
    Postgres,
    Service,
    down,
    mlflow_service,
    prefect_service,
    status,
    up,
    wait_until_healthy,
)

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def state_dir(tmp_path):
    """A state directory whose servers are stopped whatever the test does."""
    path = tmp_path / "services"
    yield path
    down(path, grace_s=5)


@pytest.mark.slow
def test_up_twice_then_down(state_dir):
    import mlflow

    prefect_port, mlflow_port = _free_port(), _free_port()
    started = up(state_dir, prefect_port=prefect_port, mlflow_port=mlflow_port)

    assert started["prefect_api"] == f"http://127.0.0.1:{prefect_port}/api"
    assert started["already_running"] is False
    for url in (started["prefect_api"] + "/health", started["mlflow_ui"] + "/health"):
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200, url
    client = mlflow.MlflowClient(started["env"]["MLFLOW_TRACKING_URI"])
    experiment_id = client.create_experiment("services-smoke")
    run = client.create_run(experiment_id)
    client.log_metric(run.info.run_id, "train/loss", 1.5, step=0)
    assert client.get_run(run.info.run_id).data.metrics == {"train/loss": 1.5}
    assert json.loads((state_dir / "services.json").read_text())["services"]["mlflow"]["pid"] \
        == started["pids"]["mlflow"]

    again = up(state_dir, prefect_port=prefect_port, mlflow_port=mlflow_port)
    assert again["already_running"] is True
    assert again["pids"] == started["pids"]
    assert status(state_dir)["running"] is True

    stopped = down(state_dir)
    assert [line.split()[0] for line in stopped] == ["prefect", "mlflow"]
    assert not any(_pid_alive(pid) for pid in started["pids"].values())
    assert _port_free(prefect_port) and _port_free(mlflow_port)
    assert not (state_dir / "services.json").exists()
    assert down(state_dir) == []


def test_port_in_use_is_refused_before_starting_anything(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match=rf"port {port} .*mlflow.*--mlflow-port <free port>"):
            up(tmp_path, prefect_port=_free_port(), mlflow_port=port)
    assert not (tmp_path / "services.json").exists()
    assert not (tmp_path / "logs").exists()


def test_nothing_running(tmp_path):
    assert status(tmp_path) == {"running": False, "services": {}, "urls": {}, "database": None}
    assert down(tmp_path) == []


def test_stale_state_file_is_reported_and_removed(tmp_path):
    exited = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    exited.wait()
    entry = {"pid": exited.pid, "port": 1, "url": "http://127.0.0.1:1", "log": "x.log"}
    (tmp_path / "services.json").write_text(json.dumps(
        {"host": "127.0.0.1", "services": {"prefect": entry, "mlflow": entry}}))

    assert status(tmp_path)["running"] is False
    assert down(tmp_path) == []
    assert not (tmp_path / "services.json").exists()


def test_a_server_that_dies_while_starting_names_its_log(tmp_path):
    log_path = tmp_path / "broken.log"
    service = Service("broken", [sys.executable, "-c", "print('no database'); exit(3)"],
                      dict(os.environ), "127.0.0.1", _free_port(), "/health", log_path)
    process = services._spawn(service)
    try:
        with pytest.raises(RuntimeError, match=r"(?s)exited with code 3.*broken\.log.*no database"):
            wait_until_healthy([service], {"broken": process}, timeout_s=30)
    finally:
        process.kill()
        process.wait()


def test_a_server_that_never_answers_times_out(tmp_path):
    service = Service("silent", [sys.executable, "-c", "import time; time.sleep(30)"],
                      dict(os.environ), "127.0.0.1", _free_port(), "/health",
                      tmp_path / "silent.log")
    process = services._spawn(service)
    try:
        with pytest.raises(RuntimeError, match=r"silent server did not answer .* within 0.2 s"):
            wait_until_healthy([service], {"silent": process}, timeout_s=0.2)
    finally:
        process.kill()
        process.wait()


def test_a_postgres_dsn_gives_each_service_its_database_and_driver():
    database = Postgres.parse("postgres://team:p%40ss@db.lab:6543/distill?sslmode=require")
    assert database.prefect_url == (
        "postgresql+asyncpg://team:p%40ss@db.lab:6543/distill_prefect?sslmode=require")
    assert database.mlflow_url == (
        "postgresql+psycopg://team:p%40ss@db.lab:6543/distill_mlflow?sslmode=require")
    assert database.store_url == (
        "postgresql+psycopg://team:p%40ss@db.lab:6543/distill_store?sslmode=require")
    assert str(database) == "postgresql://team:***@db.lab:6543/distill?sslmode=require"
    assert database.where == "host db.lab, port 6543, database 'distill', user 'team'"
    assert "p%40ss" not in repr(database) and "p@ss" not in repr(database)


def test_the_database_urls_reach_the_servers_but_not_argv(tmp_path):
    database = Postgres.parse("postgresql://team:secret@db.lab/distill")
    prefect = prefect_service(tmp_path, 4200, "127.0.0.1", database.prefect_url)
    mlflow = mlflow_service(tmp_path, 5000, "127.0.0.1", database.mlflow_url)
    assert prefect.env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] == database.prefect_url
    assert mlflow.env["MLFLOW_BACKEND_STORE_URI"] == database.mlflow_url
    assert not any("secret" in arg for arg in prefect.argv + mlflow.argv)  # `ps` shows argv
    sqlite = mlflow_service(tmp_path, 5000, "127.0.0.1")
    assert sqlite.env["MLFLOW_BACKEND_STORE_URI"] == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_a_bad_dsn_is_refused_before_anything_starts(tmp_path):
    with pytest.raises(ValueError, match="names no database"):
        up(tmp_path, prefect_port=_free_port(), mlflow_port=_free_port(),
           postgres="postgresql://team:secret@db.lab")
    assert not any(tmp_path.iterdir())


# A stand-in for `distill serve` with a flow run in progress: it records itself as serve, starts
# a flow-run process in its own session (as a runner does) and exits on SIGTERM without it.
FAKE_SERVE = """
import pathlib, signal, subprocess, sys, time
from tasks.services import serving
with serving(pathlib.Path(sys.argv[1]), sys.argv[2]):
    run = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                           start_new_session=True)
    pathlib.Path(sys.argv[3]).write_text(str(run.pid))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    time.sleep(300)
"""


def test_down_stops_a_flow_run_that_serve_leaves_behind(tmp_path):
    state_dir, flow_run_pid = tmp_path / "services", tmp_path / "flow-run.pid"
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                              start_new_session=True)  # stands in for the Prefect server
    url = f"http://127.0.0.1:{_free_port()}"
    state_dir.mkdir()
    (state_dir / "services.json").write_text(json.dumps({"host": "127.0.0.1", "services": {
        "prefect": {"pid": server.pid, "port": 1, "url": url, "log": "x.log"}}}))
    serve = subprocess.Popen([sys.executable, "-c", FAKE_SERVE, str(state_dir), f"{url}/api",
                              str(flow_run_pid)], env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        for _ in range(300):
            if flow_run_pid.exists() and flow_run_pid.read_text():
                break
            serve.poll()
            assert serve.returncode is None, "the stand-in serve exited early"
            time.sleep(0.1)
        run_pid = int(flow_run_pid.read_text())
        assert services._descendants(serve.pid) == [run_pid] and services._running(run_pid)

        lines = down(state_dir, grace_s=5)
        assert lines[0].startswith(f"distill serve (pid {serve.pid}")
        assert lines[1] == ("1 process(es) serve left running (a flow run in progress: pid "
                            f"{run_pid})")
        assert lines[2].startswith(f"prefect (pid {server.pid}")
        assert serve.wait(timeout=30) == 0 and not services._running(run_pid)
        assert server.wait(timeout=30) is not None
    finally:
        for process in (serve, server):
            process.kill()
