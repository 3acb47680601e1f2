"""Serve the flows as deployments against a Prefect server: distill, grid, rl_after_distill and
bootstrap on demand, evaluate on a nightly cron schedule (the newest registered students).

The forms' defaults are the main job's: the grid deployment's parameters are configs/demo.yaml
(what `distill grid configs/demo.yaml` runs); the distill form's defaults are the same run
settings, and the nightly evaluation's the study's evaluation procedure (tasks/configs.py).

Stopping `distill serve` (Ctrl-C, SIGTERM, `distill down`) leaves every deployment and schedule
as the user left it: Prefect's own serve would pause them all on the way out, the nightly
schedule included. While no serve runs, the server still schedules the nightly runs; they wait
as Late and the next `distill serve` runs them (pause the schedule in the UI to skip them).
"""

from __future__ import annotations

from pathlib import Path

from prefect import serve as prefect_serve
from prefect.schedules import Cron

from flows.distill import distill_flow
from flows.evaluate import evaluate_flow
from flows.grid import grid_flow
from flows.prepare import bootstrap_flow
from flows.rl import rl_after_distill_flow
from tasks.configs import StudyConfig, load_config

NIGHTLY_CRON = "0 2 * * *"
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


def serve(cron: str = NIGHTLY_CRON, timezone: str = "UTC", limit: int | None = 1) -> None:
    """Register the deployments and run them from this process until interrupted; the
    deployments and their schedules stay as they are when it stops."""
    prefect_serve(*deployments(cron, timezone), limit=limit, pause_on_shutdown=False)
