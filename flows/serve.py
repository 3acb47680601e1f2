"""Serve the flows as deployments against a Prefect server: distill, grid, rl_after_distill and
bootstrap on demand, evaluate on a nightly cron schedule (the newest registered students); and
register study-run on a work pool, whose workers train the runs of a study with executor pool."""

from __future__ import annotations

from prefect import serve as prefect_serve
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.deployments.runner import EntrypointType
from prefect.exceptions import ObjectNotFound
from prefect.schedules import Cron

from flows.distill import distill_flow
from flows.evaluate import evaluate_flow
from flows.grid import grid_flow
from flows.prepare import bootstrap_flow
from flows.rl import rl_after_distill_flow
from flows.study_run import DEPLOYMENT_NAME, study_run_flow

NIGHTLY_CRON = "0 2 * * *"
DEFAULT_POOL = "distill-pool"  # StudyConfig.work_pool's default, infra/prefect.yaml's pool


def deployments(cron: str = NIGHTLY_CRON, timezone: str = "UTC") -> list:
    """The runner deployments `distill serve` starts (names match infra/prefect.yaml)."""
    return [
        distill_flow.to_deployment(name="distill", tags=["distill-lab"]),
        grid_flow.to_deployment(name="grid", tags=["distill-lab"]),
        bootstrap_flow.to_deployment(name="bootstrap", tags=["distill-lab"]),
        rl_after_distill_flow.to_deployment(name="rl-after-distill", tags=["distill-lab"]),
        evaluate_flow.to_deployment(name="nightly-evaluate", tags=["distill-lab"],
                                    schedule=Cron(cron, timezone=timezone)),
    ]


def study_run_deployment(pool: str = DEFAULT_POOL):
    """The study-run deployment on a work pool. Its entrypoint is a module path: each worker
    imports flows.study_run from the project it has installed, nothing is pulled."""
    return study_run_flow.to_deployment(
        name=DEPLOYMENT_NAME, work_pool_name=pool, tags=["distill-lab"],
        entrypoint_type=EntrypointType.MODULE_PATH,
        description="One (cell, seed) run of a study with executor pool; submitted by the "
                    "grid flow, not by hand.")


def register_study_run(pool: str = DEFAULT_POOL) -> str:
    """Register study-run on pool (a process pool, created if missing); returns its id."""
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(
                name=pool, type="process",
                base_job_template=ProcessWorker.get_default_base_job_template()))
    return str(study_run_deployment(pool).apply())


def serve(cron: str = NIGHTLY_CRON, timezone: str = "UTC", limit: int | None = 1,
          pool: str = DEFAULT_POOL) -> None:
    """Register study-run on pool, then the deployments, and run them from this process until
    interrupted (study-run is run by the pool's workers, not here)."""
    register_study_run(pool)
    print(f"study-run registered on work pool {pool!r}: start its workers with `prefect worker "
          f"start --pool {pool} --type process --limit 1` (infra/README.md)")
    prefect_serve(*deployments(cron, timezone), limit=limit)
