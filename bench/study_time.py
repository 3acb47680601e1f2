"""Where a finished study's time went (README: "The study"), read back from MLflow.

One table: the bootstrap (from the models' build records; 0 this run when reused), the teacher
rollouts and everything else outside the runs (the parent run's wall time minus its runs'),
the references' evaluation, then per cell — summed over its seeds — training (generation,
teacher scoring, the rest of the step) and evaluation at every kept checkpoint, and the GRPO
runs. Seconds are wall seconds on the machine that ran the study.

    python -m bench.study_time [--artifacts DIR] [--experiment study] [--run PARENT_RUN_ID]
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from tasks.artifacts import artifact_root
from tasks.bootstrap import bootstrap_metrics
from tasks.study import StudyRun, read_study
from tasks.tracking import Tracker, default_tracking_uri

EVAL_SECONDS = "eval/overall/seconds"
STEP_SECONDS = ("time/generate", "time/score", "time/train")  # per optimiser step


def summed(run: StudyRun, key: str) -> float:
    """A per-step or per-evaluation seconds metric summed over its history (every step, every
    kept checkpoint); the final value when no history was read."""
    history = run.history(key)
    return sum(value for _, value in history) if history else run.metric(key) or 0.0


def rows(tracker: Tracker, parent_run_id: str | None, experiment: str,
         root: Path) -> list[tuple[str, float, str]]:
    """(what, seconds, note) rows, the study's wall time last."""
    study = read_study(tracker, parent_run_id=parent_run_id, experiment=experiment,
                       history_keys=(EVAL_SECONDS, *STEP_SECONDS))
    parent = study.parent.run_id if study.parent else None
    total = tracker.run_seconds(parent) if parent else None
    cells: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    seeds: dict[str, set[int]] = defaultdict(set)
    inside = 0.0
    for run in study.runs:
        seconds = tracker.run_seconds(run.run_id) or 0.0
        inside += seconds
        label = "references (teacher, starting student)" if run.reference else run.label
        part = cells[label]
        part["run"] += seconds
        part["evaluation"] += summed(run, EVAL_SECONDS)
        part["generation"] += summed(run, "time/generate")
        part["scoring"] += summed(run, "time/score")
        part["training"] += run.metric("time/train_total") or summed(run, "time/train")
        seeds[label].add(run.seed)
    table = []
    for label, part in cells.items():
        other = part["run"] - part["evaluation"] - part["training"]
        table.append((label, part["run"],
                      f"{len(seeds[label])} run(s): training {part['training']:.0f} s "
                      f"(generation {part['generation']:.0f}, teacher scoring "
                      f"{part['scoring']:.0f}), evaluation {part['evaluation']:.0f} s, "
                      f"other {other:.0f} s"))
    if total is not None:
        table.append(("outside the runs: teacher rollouts, readiness, report", total - inside,
                      "the parent run's wall time minus its runs'"))
        table.append(("the study (parent run)", total, "wall time"))
    return table


def bootstrap_rows(root: Path) -> list[tuple[str, float, str]]:
    """The default's build times, from each model's record (when the default is in root)."""
    found = []
    for role in ("teacher", "student"):
        for model in sorted((root / "models" / f"default-{role}").glob("*/")):
            metrics = bootstrap_metrics(model)
            if "build_seconds" in metrics:
                found.append((f"bootstrap: {role} ({model.name})", metrics["build_seconds"],
                              f"SFT {metrics.get('sft/seconds', float('nan')):.0f} s + "
                              "greedy held-out check"))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.study_time", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=None,
                        help="artifact root (default $DISTILL_LAB_ARTIFACTS or ./artifacts)")
    parser.add_argument("--experiment", default="study", help="the study's experiment")
    parser.add_argument("--run", default=None, help="the parent run (default: the newest grid)")
    args = parser.parse_args()
    root = artifact_root(args.artifacts)
    tracker = Tracker(default_tracking_uri(root), artifacts_dir=root)
    print("| part | seconds | what |\n|---|---:|---|")
    for what, seconds, note in bootstrap_rows(root) + rows(tracker, args.run, args.experiment,
                                                             root):
        print(f"| {what} | {seconds:,.0f} | {note} |")


if __name__ == "__main__":
    main()
