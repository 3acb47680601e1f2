"""Serve the flows as deployments against a Prefect server: distill, grid, rl_after_distill and
bootstrap on demand, evaluate on a nightly cron schedule (the newest registered students)."""

from __future__ import annotations

from prefect import serve as prefect_serve
from prefect.schedules import Cron

from flows.distill import distill_flow
from flows.evaluate import evaluate_flow
from flows.grid import grid_flow
from flows.prepare import bootstrap_flow
from flows.rl import rl_after_distill_flow

NIGHTLY_CRON = "0 2 * * *"


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


def serve(cron: str = NIGHTLY_CRON, timezone: str = "UTC", limit: int | None = 1) -> None:
    """Register the deployments and run them from this process until interrupted."""
    prefect_serve(*deployments(cron, timezone), limit=limit)
