"""The study-run flow: one (cell, seed) training run of a study, run by a Prefect worker.

A study with ``executor: pool`` (flows/pool.py) submits each of its runs as a flow run of the
``study-run`` deployment on its work pool; a worker on some machine picks it up and runs exactly
what the in-process study runs (``flows.common.run_cell``: train or resume, evaluate at each
evaluation step, register), into the same MLflow, rollout store and artifact folder.

Before any work the worker checks that it is part of the same study, so that a mixed fleet fails
loudly instead of training something else under the study's name: its code version
(``tasks.plan.code_identity``) is the study's, the run key it computes (config hash and code
version) is the one the study expects, its artifact folder is the study's (shared storage at the
same path), the study's parent run is in its MLflow and its rollout store is the study's.

The deployment's entrypoint is a module path (``flows.study_run.study_run_flow``): each worker
imports the project it has installed (or on its PYTHONPATH); nothing is pulled.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from prefect import flow
from sqlalchemy.engine import make_url

from flows.common import run_cell
from tasks.configs import StudyConfig
from tasks.inputs import Inputs
from tasks.plan import (
    Cell,
    cell_directory,
    cell_spec,
    cells,
    code_identity,
    grid_spec,
    train_config,
)
from tasks.prefect_tasks import find_run_task, preflight_task
from tasks.runs import Locations, RunSpec
from tasks.tracking import git_sha

FLOW_NAME = "study_run"
DEPLOYMENT_NAME = "study-run"
ENTRYPOINT = "flows.study_run.study_run_flow"


@dataclass(frozen=True)
class Expected:
    """What the study expects of the worker that runs one of its runs."""

    run_key: str  # the run's identity: its configs' hash and the code version
    code_version: str  # tasks.plan.code_identity() where the study runs
    store: str  # the study's rollout store URL, password hidden


def cell_run(config: StudyConfig, inputs: Inputs, cell: Cell, seed: int, study_dir: Path,
             root: Path, parent_run_id: str, min_entropy: float | None
             ) -> tuple[RunSpec, int]:
    """The tracked run flows.common.run_cell opens for one cell and seed (the same folder,
    training config and key) and its number of training steps."""
    run_dir = cell_directory(study_dir, cell.label, seed if len(config.seeds) > 1 else None)
    train = train_config(config, inputs, cell, seed, run_dir / "train", root, min_entropy)
    return cell_spec(config, inputs, cell, seed, train, run_dir, parent_run_id), train.steps


@flow(name=FLOW_NAME, log_prints=True)
def study_run_flow(config: StudyConfig, inputs: Inputs, cell: Cell, seed: int, study_dir: str,
                   parent_run_id: str, expected: Expected, min_entropy: float | None = None,
                   products_flops: float = 0.0) -> dict:
    """Train and evaluate one cell and seed of a study (run_cell), after checking that this
    worker runs the study's code against the study's tracking, store and artifacts."""
    refuse_other_code(expected.code_version)
    where = preflight_task(config)
    spec, _ = cell_run(config, inputs, cell, seed, Path(study_dir), where.root, parent_run_id,
                       min_entropy)
    refuse_other_run(spec, expected, where)
    refuse_other_places(config, inputs, Path(study_dir), parent_run_id, expected, where)
    return run_cell(config, inputs, cell, seed, where, Path(study_dir), parent_run_id,
                    min_entropy, products_flops)


def refuse_other_code(expected_code: str) -> None:
    """ValueError naming both code versions when this worker's differ from the study's."""
    mine = code_identity()
    if mine != expected_code:
        raise ValueError(
            f"worker {socket.gethostname()} refuses the run: its code version is {mine}, the "
            f"study's is {expected_code} (tasks.plan.code_identity: distill_core and the "
            f"training modules). Check out the study's commit on this worker (its checkout "
            f"{Path(__file__).resolve().parents[1]} is at git {git_sha()}) and restart it, or "
            "run the study from this worker's code")


def refuse_other_run(spec: RunSpec, expected: Expected, where: Locations) -> None:
    """ValueError when the run key computed here (same code) differs from the study's: the
    worker's config handling (flows, tasks.plan) or its view of the inputs differs."""
    if spec.key != expected.run_key:
        raise ValueError(
            f"worker {socket.gethostname()} refuses {spec.name!r}: it computes run key "
            f"{spec.key}, the study expects {expected.run_key} (same code version "
            f"{expected.code_version}); its flows/ or tasks/plan.py differ from the study's, "
            "or it resolves the inputs differently: run the study's commit on every worker")


def refuse_other_places(config: StudyConfig, inputs: Inputs, study_dir: Path,
                        parent_run_id: str, expected: Expected, where: Locations) -> None:
    """ValueError unless this worker writes where the study reads: the same artifact folder,
    MLflow (the study's parent run is there) and rollout store."""
    host = socket.gethostname()
    parent = grid_spec(config, inputs, cells(config), where.root)
    if parent.run_dir != study_dir or not study_dir.is_dir():
        raise ValueError(
            f"worker {host} does not see the study's folder {study_dir} (its artifact folder "
            f"is {where.root}): start every worker with DISTILL_LAB_ARTIFACTS set to the "
            "study's artifact folder, on storage they all share, at the same path")
    found = find_run_task(parent, where.tracking_uri)
    if found is None or found.run_id != parent_run_id:
        raise ValueError(
            f"worker {host} does not find the study's run {parent_run_id} in its MLflow "
            f"({where.tracking_uri}): start every worker with the study's "
            "MLFLOW_TRACKING_URI")
    if shown_url(where.store_url) != expected.store:
        raise ValueError(
            f"worker {host} writes to the rollout store {shown_url(where.store_url)}, the "
            f"study reads {expected.store}: start every worker with the study's "
            "DISTILL_LAB_STORE_URL")


def shown_url(url: str) -> str:
    """A store URL as the study and its workers compare it: the password hidden."""
    return make_url(url).render_as_string(hide_password=True)
