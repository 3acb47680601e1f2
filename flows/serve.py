"""Serve the flows as deployments against a Prefect server: distill, grid, rl_after_distill and
bootstrap on demand, evaluate on a nightly cron schedule (the newest registered students); and
register study-run on a work pool, whose workers train the runs of a study with executor pool.

The forms' defaults are the main job's: the grid deployment's parameters are configs/demo.yaml
(what `distill grid configs/demo.yaml` runs); the distill form's defaults are the same run
settings, and the nightly evaluation's the study's evaluation procedure (tasks/configs.py).

Stopping `distill serve` (Ctrl-C, SIGTERM, `distill down`) leaves every deployment and schedule
as the user left it: Prefect's own serve would pause them all on the way out, the nightly
schedule included. While no serve runs, the server still schedules the nightly runs; they wait
as Late and the next `distill serve` runs them (pause the schedule in the UI to skip them).

The serve terminal says each thing once: Prefect's runner logs "1 scheduled runs skipped (at
capacity)" on every poll (10 s) while a run waits for the one in progress, so ``OncePerWait``
lets the first of a wait through, saying what it means, and drops its repeats.
"""

from __future__ import annotations

import logging
from pathlib import Path

from prefect import serve as prefect_serve
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.deployments.runner import EntrypointType
from prefect.exceptions import ObjectNotFound
from prefect.schedules import Cron
from prefect.workers.process import ProcessWorker

from flows.distill import distill_flow
from flows.evaluate import evaluate_flow
from flows.grid import grid_flow
from flows.pool import WORKER_COMMAND
from flows.prepare import bootstrap_flow
from flows.rl import rl_after_distill_flow
from flows.study_run import DEPLOYMENT_NAME, study_run_flow
from tasks.configs import StudyConfig, load_config

NIGHTLY_CRON = "0 2 * * *"
DEFAULT_POOL = "distill-pool"  # StudyConfig.work_pool's default, infra/prefect.yaml's pool
MAIN_JOB = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def main_job() -> StudyConfig:
    """The study `distill grid configs/demo.yaml` runs: the grid form's defaults."""
    return load_config(MAIN_JOB, StudyConfig)


def deployments(cron: str = NIGHTLY_CRON, timezone: str = "UTC") -> list:
    """The runner deployments `distill serve` starts (names match infra/prefect.yaml)."""
    tags = ["distill-lab"]
    return [
        distill_flow.to_deployment(
            name="distill", tags=tags,
            description="One distillation run: prepare, teacher rollouts (cached), train one "
            "objective, evaluate, register the student."),
        grid_flow.to_deployment(
            name="grid", tags=tags, parameters={"config": main_job().model_dump(mode="json")},
            description="A study: every cell over its seeds, evaluated on paired problems, with "
            "intervals and findings. Defaults: configs/demo.yaml, the main job."),
        bootstrap_flow.to_deployment(
            name="bootstrap", tags=tags,
            description="Build (or reuse) a profile's problems, teacher and student."),
        rl_after_distill_flow.to_deployment(
            name="rl-after-distill", tags=tags,
            description="GRPO from every student of a study, evaluated before and after."),
        evaluate_flow.to_deployment(
            name="nightly-evaluate", tags=tags, schedule=Cron(cron, timezone=timezone),
            description="Every night: the newest version of each registered student, with the "
            "study's evaluation procedure; one parent run per night, a trend across nights."),
    ]


def study_run_deployment(pool: str = DEFAULT_POOL):
    """The study-run deployment on a work pool. Its entrypoint is a module path: each worker
    imports flows.study_run from the project it has installed, nothing is pulled."""
    return study_run_flow.to_deployment(
        name=DEPLOYMENT_NAME, work_pool_name=pool, tags=["distill-lab"],
        entrypoint_type=EntrypointType.MODULE_PATH,
        description="One (cell, seed) run of a study with executor pool; submitted by the "
                    "grid flow, not by hand. Its runs need a worker of work pool "
                    f"{pool!r}, which `distill serve` does not start: without one this "
                    "deployment shows Not Ready. Start one on each training machine with "
                    f"`{WORKER_COMMAND.format(pool=pool)}` (or `infra/worker.sh {pool}`, "
                    "which checks its environment first; infra/README.md).")


def register_study_run(pool: str = DEFAULT_POOL) -> str:
    """Register study-run on pool (a process pool, created if missing); returns its id."""
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
    interrupted (study-run is run by the pool's workers, not here); the deployments and their
    schedules stay as they are when it stops."""
    register_study_run(pool)
    print(f"study-run registered on work pool {pool!r}: start its workers with "
          f"`{WORKER_COMMAND.format(pool=pool)}` (infra/README.md)")
    logging.getLogger("prefect.runner").addFilter(OncePerWait())
    prefect_serve(*deployments(cron, timezone), limit=limit, pause_on_shutdown=False)


class OncePerWait(logging.Filter):
    """Prefect's runner logs "N scheduled runs skipped (at capacity)" on every poll while runs
    wait for a free slot. The first line of a wait passes, saying what it means; a repeat
    (the same line within a few polls of the last) is dropped. A new count, or a wait after a
    pause longer than that (the queue emptied in between), passes again."""

    def __init__(self, poll_s: float | None = None):
        super().__init__()
        if poll_s is None:
            from prefect.settings import get_current_settings

            poll_s = get_current_settings().runner.poll_frequency
        self.gap_s = 2.5 * poll_s  # the runner polls every poll_s: a longer gap ended the wait
        self._last: tuple[str, float] | None = None  # the last such line seen, and when

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "(at capacity)" not in message:
            return True
        last, self._last = self._last, (message, record.created)
        if last is not None and last[0] == message and record.created - last[1] < self.gap_s:
            return False
        record.msg, record.args = (f"{message}: they start when a flow run in progress ends "
                                   "(not repeated while they wait)"), None
        return True
