"""The prepare and bootstrap flows: problems and models, built once and cached."""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from tasks.configs import BootstrapFlowConfig, ExperimentConfig
from tasks.prefect_tasks import bootstrap_task, prepare_task
from tasks.runs import locations


@flow(name="bootstrap", log_prints=True)
def bootstrap_flow(config: BootstrapFlowConfig = BootstrapFlowConfig()) -> dict:
    """Build (or reuse) the embedded default's tokenizer, teacher and student, or the
    real-weights profile; returns their paths."""
    paths = bootstrap_task(config.profile, str(locations().root))
    create_markdown_artifact("\n".join([f"# The {config.profile} profile", "",
                                         "| what | where |", "|---|---|",
                                         *(f"| {k} | `{v}` |" for k, v in paths.items())]),
                             key=f"bootstrap-{config.profile}",
                             description=f"the {config.profile} profile's models and problems")
    return paths


@flow(name="prepare", log_prints=True)
def prepare_flow(config: ExperimentConfig = ExperimentConfig()) -> dict:
    """Resolve an experiment's teacher, student, train subset, held-out and benchmark files."""
    return asdict(prepare_task(config, str(locations().root)))
