"""Prefect task wrappers: thin adapters that flows compose, around the plain functions here.

Tasks exchange paths and small dicts, never models or tensors. Training is never cached or
retried by Prefect: a rerun with the same config resumes from its own checkpoint instead.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.train import TrainConfig, train


@task(name="distill-train", cache_policy=NO_CACHE, retries=0, log_prints=True)
def train_task(config: TrainConfig) -> dict:
    """Run (or resume) one distillation training run; returns the checkpoint path and metrics."""
    result = train(config)
    return {"checkpoint": str(result.checkpoint), "metrics": result.metrics,
            "gate_decisions": result.gate_decisions}
