"""Which students the RL flow starts GRPO from: the config's checkpoints, else the finished
cells of a grid study read back through ``tasks.study``.

Beside ``tasks.inputs.resolve_rl_inputs`` (the RL flow's prompts and benchmarks) but not in that
module: the sources are read from MLflow, and ``tasks.inputs`` (imported by ``tasks.plan``) only
resolves files and stays free of the tracking and study readers.
"""

from __future__ import annotations

from pathlib import Path

from tasks.checkpoints import latest_checkpoint
from tasks.configs import RLFlowConfig
from tasks.study import newest_grid, read_study
from tasks.tracking import Tracker


def rl_sources(config: RLFlowConfig, tracking_uri: str,
               log=print) -> tuple[str | None, list[dict]]:
    """(grid parent run id or None, the students to start GRPO from): config.checkpoints, else
    every trained cell of the grid study (its final checkpoint, from the run's train.output_dir).
    Each source names a reference model whose tokenizer it must share (GRPO checks it before
    sampling): the study's starting student, or the first of config.checkpoints. Cells whose run
    did not finish (a failed cell) are skipped and named through log."""
    if config.checkpoints:  # all must share the first one's tokenizer
        return None, [{"label": Path(c).name, "checkpoint": c, "source_run": "",
                       "reference": config.checkpoints[0]} for c in config.checkpoints]
    with Tracker(tracking_uri) as tracker:
        parent = config.parent_run_id or newest_grid(tracker, config.study_experiment)
        if parent is None:
            raise ValueError(f"no grid study in experiment {config.study_experiment!r} at "
                             f"{tracking_uri}; run `distill grid` first or pass checkpoints")
        study = read_study(tracker, parent_run_id=parent)
    sources = []
    for run in study.runs:
        if run.reference or run.tags.get("stage") == "rl":
            continue
        if run.status != "FINISHED":
            log(f"skipping cell {run.name!r} (run {run.run_id}): its run is {run.status}, "
                "not FINISHED")
            continue
        output_dir = run.params.get("train.output_dir")
        checkpoint = latest_checkpoint(output_dir, warn=log) if output_dir else None
        if checkpoint is None:
            raise FileNotFoundError(f"cell {run.name!r} (run {run.run_id}) has no checkpoint "
                                    f"under {output_dir}; was it trained on this machine and "
                                    "artifact directory?")
        sources.append({"label": run.name, "checkpoint": str(checkpoint),
                        "source_run": run.run_id,  # its tokenizer: the study's student's
                        "reference": run.params.get("train.student")})
    if not sources:
        raise ValueError(f"grid run {parent} has no finished trained cell to start RL from")
    return parent, sources
