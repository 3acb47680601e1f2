"""What every flow shares: where things live, one cell's wiring (train → evaluate → register)
and one reference evaluation, each as a tracked run that a rerun reuses or resumes; and what a
flow run shows its user at the end: links into MLflow's training view and a Prefect markdown
artifact with its results."""

from __future__ import annotations

import re
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from dashboards.report import build_report
from tasks.checkpoints import checkpoint_name
from tasks.configs import ExperimentConfig, StudyConfig
from tasks.eval_metrics import ENTROPY, shown_in, top_key, top_level
from tasks.inputs import Inputs
from tasks.plan import (
    CELL_ROLE,
    IDENTITY_PARAMS,
    Cell,
    cell_directory,
    cell_spec,
    eval_config,
    eval_steps,
    grpo_spec,
    reference_spec,
    study_grpo_config,
    teacher_product_configs,
    train_config,
)
from tasks.prefect_tasks import (
    IO_RETRIES,
    evaluate_task,
    rl_task,
    run_results_task,
    teacher_rollouts_task,
    teacher_scores_task,
    tracked_run,
    train_task,
)
from tasks.runs import Locations
from tasks.tracking import RunsCharts, Tracker, TrackingOutage, browse_hint


@task(name="report", cache_policy=NO_CACHE, **IO_RETRIES)
def report_task(tracking_uri: str, parent_run_id: str, store_url: str, output: str) -> str:
    """Build a study's tradeoff report (dashboards.report) and attach it, with every figure, to
    the study's parent run; returns the page's path."""
    page = build_report(tracking_uri, parent_run_id=parent_run_id, store_url=store_url,
                        output=output, attach=True)
    get_run_logger().info(f"report: {page} (attached with its figures to run {parent_run_id})")
    return str(page)


def teacher_products(config: StudyConfig | ExperimentConfig, inputs: Inputs,
                     cells: list[Cell], root: Path) -> list[dict]:
    """Teacher rollouts (and score caches) every teacher-prefix cell and seed shares; cached."""
    products = []
    for train in teacher_product_configs(config, inputs, cells, root):
        products.append({"rollouts": teacher_rollouts_task(train)})
        if train.cache_k:
            products[-1]["scores"] = teacher_scores_task(train)
    return products


def run_cell(config: StudyConfig | ExperimentConfig, inputs: Inputs, cell: Cell, seed: int,
             where: Locations, study_dir: Path, parent_run_id: str | None = None,
             min_entropy: float | None = None, products_flops: float = 0.0) -> dict:
    """One cell and seed as a tracked run: train (or resume), evaluate at each of its
    evaluation steps, register the student; a run that already finished is read back."""
    seeds = getattr(config, "seeds", [seed])
    run_dir = cell_directory(study_dir, cell.label, seed if len(seeds) > 1 else None)
    train = train_config(config, inputs, cell, seed, run_dir / "train", where.root, min_entropy)
    with tracked_run(cell_spec(config, inputs, cell, seed, train, run_dir, parent_run_id),
                     where.tracking_uri) as run:
        if run.finished:
            return {"cell": cell.label, "seed": seed, **run_results_task(run.ref),
                    "checkpoint": str(run_dir / "train" / checkpoint_name(train.steps))}
        trained = train_task(train, run.ref, products_flops)
        for step in eval_steps(config, cell):
            evaluated = evaluate_task(
                eval_config(config, inputs, str(Path(train.output_dir) / checkpoint_name(step))),
                str(run_dir / f"eval-step{step}"), where.store_url, run.ref, step,
                str(where.root), label=f"{cell.label} at step {step}")
        if config.register_model:
            run.end.register = (f"distill-{config.name}-{cell.slug}", trained["checkpoint"])
            run.end.register_metrics = evaluated["metrics"]
    return {"cell": cell.label, "seed": seed, "run_id": run.ref.run_id,
            "metrics": evaluated["metrics"], "train": trained["metrics"],
            "checkpoint": trained["checkpoint"]}


def run_grpo(config: StudyConfig, inputs: Inputs, cell: Cell, source: dict, where: Locations,
             study_dir: Path, parent_run_id: str) -> dict:
    """GRPO from one cell's student of one seed, evaluated after (before: the cell's own final
    evaluation, same procedure), as a tracked child run of the study."""
    seed = source["seed"]
    run_dir = cell_directory(study_dir, f"grpo {cell.label}",
                             seed if len(config.seeds) > 1 else None)
    grpo = study_grpo_config(config, inputs, source["checkpoint"], seed, run_dir / "grpo")
    spec = grpo_spec(config, inputs, cell, seed, grpo, source["run_id"], run_dir,
                     parent_run_id)
    with tracked_run(spec, where.tracking_uri) as run:
        if run.finished:
            return {"cell": spec.tags["cell"], "seed": seed, **run_results_task(run.ref)}
        trained = rl_task(grpo, run.ref)
        evaluated = evaluate_task(eval_config(config, inputs, trained["checkpoint"]),
                                  str(run_dir / "eval-after"), where.store_url, run.ref,
                                  config.rl_steps, str(where.root), label=spec.tags["cell"])
    return {"cell": spec.tags["cell"], "seed": seed, "run_id": run.ref.run_id,
            "metrics": evaluated["metrics"], "train": trained["metrics"]}


def evaluate_reference(config: ExperimentConfig, inputs: Inputs, label: str, model: str,
                       where: Locations, study_dir: Path, parent_run_id: str | None) -> dict:
    """Evaluate an untrained reference (the teacher, the starting student) as its own run."""
    run_dir = cell_directory(study_dir, label)
    with tracked_run(reference_spec(config, inputs, label, model, run_dir, parent_run_id),
                     where.tracking_uri) as run:
        if run.finished:
            return {"cell": label, **run_results_task(run.ref), "train": {}}
        evaluated = evaluate_task(eval_config(config, inputs, model), str(run_dir),
                                  where.store_url, run.ref, 0, str(where.root), label=label)
    return {"cell": label, "run_id": run.ref.run_id, "metrics": evaluated["metrics"],
            "train": {}}


def study_report(where: Locations, parent_run_id: str, run_dir: str | Path) -> str | None:
    """Build and attach the study's HTML report; a failure is reported, not raised: the study's
    runs are already in MLflow, and `distill report --html` rebuilds the page."""
    try:
        return report_task(where.tracking_uri, parent_run_id, where.store_url,
                           str(Path(run_dir) / "report.html"))
    except Exception as error:  # the report must never cost the study its results
        get_run_logger().warning(
            f"the report of run {parent_run_id} was not built ({error}); rebuild it with "
            f"`distill report --run {parent_run_id} --html report.html --attach`")
        return None


# ----------------------------------------------------------------------------- what the user sees


@task(name="mlflow-links", cache_policy=NO_CACHE, **IO_RETRIES)
def links_task(tracking_uri: str, run_id: str, children_k: int | None = None) -> dict[str, str]:
    """Links into MLflow's training view: ``run`` (this run's page). With children_k (a parent
    run: a study, a night), also, for its cells (the children tagged role "cell"; all children
    where none is):

    - ``runs``: a table, best Avg@k first, of what tells them apart (cell, prefix source, KL
      direction, seed) and the headline metrics at k = children_k, then the full tables' rest;
    - ``charts``: the same runs charted side by side (parallel coordinates of what tells them
      apart against Avg@k and entropy, then a bar per run for each headline);
    - ``compare``: MLflow's compare page for them;
    - ``with references``: the table with the untrained references too, where there are any.
    """
    try:
        tracker = Tracker(tracking_uri)
    except ConnectionError as error:  # it answered when the run started
        raise TrackingOutage(tracking_uri, "the runs had ended") from error
    with tracker:
        links = {"run": tracker.run_link(run_id)}
        children = tracker.child_runs(run_id) if children_k else []
        cells = tracker.child_runs(run_id, CELL_ROLE) if children else []
        if children:
            links.update(_children_links(tracker, run_id, children_k, bool(cells)))
            links["compare"] = tracker.compare_link([c.run_id for c in cells or children])
            if cells and len(cells) < len(children):
                links["with references"] = _children_links(tracker, run_id, children_k,
                                                            False, charts=False)["runs"]
    if browse_hint(tracking_uri):
        links["serve the UI first"] = f"`{browse_hint(tracking_uri)}`"
    return links


@task(name="report-link", cache_policy=NO_CACHE, **IO_RETRIES)
def report_link(tracking_uri: str, run_id: str) -> str:
    """The study's report.html in its run's Artifacts tab, where MLflow shows it as a page."""
    with Tracker(tracking_uri) as tracker:
        return tracker.artifact_link(run_id, "report.html")


def _children_links(tracker: Tracker, run_id: str, k: int, cells_only: bool,
                    charts: bool = True) -> dict[str, str]:
    """The ``runs`` (and with charts the ``charts``) link of a parent's children: a saved view
    (``Tracker.save_runs_view``)."""
    headline = [top_key(m, k) for m in top_level()]
    rest = [m.logged(k) for m in shown_in("full") if not m.top]
    params = IDENTITY_PARAMS if cells_only else ()
    view = tracker.save_runs_view(
        run_id, [*headline, *rest], param_keys=params, tag_keys=() if params else ("cell",),
        role=CELL_ROLE if cells_only else None, order_by=headline[0],
        charts=RunsCharts("Cells", params[:3], [headline[0], ENTROPY.top, *[
            key for key in headline[1:] if key != ENTROPY.top]]) if charts else None)
    links = {"runs": tracker.runs_view_link(run_id, view)}
    if charts:
        links["charts"] = tracker.runs_view_link(run_id, view, charts=True)
    return links


LINK_NAMES = {"run": "MLflow run", "runs": "its runs, as a table with metric columns",
              "charts": "its runs, charted side by side", "compare": "compare them in MLflow",
              "with references": "the same table with the teacher and starting student",
              "report": "the report, in MLflow", "report file": "the report, as a file",
              "serve the UI first": "MLflow's UI (SQLite store): serve it "
              "first with"}


def publish(key: str, title: str, links: dict[str, str], *sections: str,
            warning: str | None = None) -> str:
    """Print the links (one line each) and publish title, links and sections (Markdown tables)
    as the flow run's Prefect markdown artifact under key (its Artifacts tab; the Artifacts page
    keeps one per key with its history). A warning (a study that was not ready) is logged as a
    warning and leads the artifact's Markdown and its description. Returns the Markdown."""
    lines = []
    if warning:
        get_run_logger().warning(warning)
    for name, url in links.items():
        label = LINK_NAMES.get(name, name)
        print(f"{label}: {url.strip('`')}")
        lines.append(f"- [{label}]({url})" if url.startswith(("http://", "https://"))
                     else f"- {label}: {url}")
    markdown = "\n\n".join([*([f"**{warning}**"] if warning else []), f"# {title}",
                            "\n".join(lines), *sections])
    create_markdown_artifact(markdown, key=re.sub(r"[^a-z0-9-]+", "-", key.lower()).strip("-"),
                             description=f"{title}: {warning}" if warning else title)
    return markdown
