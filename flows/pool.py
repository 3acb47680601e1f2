"""A study's training runs on a Prefect work pool (``executor: pool``): checked, submitted,
waited for and read back.

- ``check_pool_task``, before any work: the pool exists and is not paused, a worker of it sent a
  heartbeat in the last ``LIVE_HEARTBEAT_S`` seconds, a deployment of the ``study_run`` flow is
  on it, and the config names no path relative to the study's working directory (workers run
  elsewhere). Each problem is one error naming the pool and what to do.
- ``run_cells_on_pool``: every (cell, seed) whose run already FINISHED with the same identity
  is read back from MLflow and not submitted; the others become flow runs of that deployment,
  at most ``max_concurrent_runs`` in flight, each told the run key and code version it must have
  (flows/study_run.py). The study polls their states: a completed one is read back from MLflow
  (what ``run_cell`` returns for a finished run); a failed, crashed or cancelled one is recorded
  as a FAILED MLflow run with its reason (tag ``failure``) and the others go on. A run still
  SCHEDULED/PENDING after ``PICKUP_TIMEOUT_S`` is reported; when by then the pool has no live
  worker, every run still waiting fails with that reason instead of waiting forever. If the
  study stops (Ctrl-C, cancelled, an error), its runs in flight are cancelled.

Returns the rows (in the study's order) and the failures; the grid flow concludes as usual and
then ends FAILED naming them (``end_with_failures``), so that running the same study again
retries only those.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import StateType
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelling

from flows.study_run import DEPLOYMENT_NAME, FLOW_NAME, Expected, cell_run, shown_url
from tasks.checkpoints import checkpoint_name
from tasks.configs import StudyConfig
from tasks.inputs import Inputs
from tasks.plan import Cell, code_identity
from tasks.prefect_tasks import (
    find_run_task,
    log_text_task,
    record_failed_run_task,
    run_results_task,
)
from tasks.progress import Progress
from tasks.runs import Locations, RunRef, RunSpec

PICKUP_TIMEOUT_S = 60.0  # a run not picked up by then is reported (and failed without workers)
LIVE_HEARTBEAT_S = 90.0  # a worker heartbeats every 30 s; three missed ones: it is gone
POLL_S = 2.0
WAITING = (StateType.SCHEDULED, StateType.PENDING)
WORKER_COMMAND = "prefect worker start --pool {pool} --type process --limit 1"


@dataclass(frozen=True)
class Pool:
    """A work pool checked for a study: where its study-run deployment is."""

    name: str
    deployment_id: str
    deployment: str  # "study_run/<deployment name>"
    api_url: str


# ----------------------------------------------------------------------------- before any work


def check_pool(config: StudyConfig) -> Pool:
    """The study's work pool can take its runs now (see the module docstring); ValueError
    naming the pool and what to do otherwise. `distill grid` calls it before the flow too, so
    that a server that does not answer is named with the pool."""
    refuse_relative_paths(config)
    name = config.work_pool
    with get_client(sync_client=True) as client:
        api = str(client.api_url).rstrip("/")
        problem = client.api_healthcheck()  # the error, not raised
        if problem is not None:
            raise ValueError(
                f"work pool {name!r}: the Prefect server {api} does not answer ({problem}); "
                "start it (`distill up`) or set PREFECT_API_URL to the server your workers "
                "use; nothing was submitted")
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            raise ValueError(
                f"work pool {name!r} does not exist on the Prefect server {api}: start a worker "
                f"for it on each training machine (`{WORKER_COMMAND.format(pool=name)}`, "
                "infra/README.md) or set PREFECT_API_URL to the server your workers use; "
                "nothing was submitted") from None
        if pool.is_paused:
            raise ValueError(f"work pool {name!r} on {api} is paused: resume it (`prefect "
                             f"work-pool resume {name}`); nothing was submitted")
        workers = sorted(w.name for w in live_workers(client, name))
        if not workers:
            raise ValueError(no_worker_message(client, name, api) + "; nothing was submitted")
        deployment = study_run_deployment(client, name, api)
    print(f"work pool {name!r} on {api}: live workers {', '.join(workers)}; "
          f"runs go to deployment {FLOW_NAME}/{deployment.name}")
    return Pool(name, str(deployment.id), f"{FLOW_NAME}/{deployment.name}", api)


check_pool_task = task(name="check-work-pool", cache_policy=NO_CACHE)(check_pool)


def refuse_relative_paths(config: StudyConfig) -> None:
    """A path that exists relative to the study's working directory means nothing on a worker."""
    given = {"teacher": config.teacher, "student": config.student,
             "train_problems": config.train_problems,
             "held_out_problems": config.held_out_problems,
             **{f"benchmarks[{i}]": spec.split("=", 1)[-1]
                for i, spec in enumerate(config.benchmarks)}}
    for field, value in given.items():
        if value and not Path(value).is_absolute() and Path(value).exists():
            raise ValueError(f"{field}={value!r} is relative to the study's working directory "
                             f"{os.getcwd()}; workers run elsewhere: with executor pool give an "
                             "absolute path on storage every worker reaches")


def live_workers(client, pool: str) -> list:
    """The pool's workers whose last heartbeat is at most LIVE_HEARTBEAT_S old."""
    recent = datetime.now(UTC) - timedelta(seconds=LIVE_HEARTBEAT_S)
    return [w for w in client.read_workers_for_work_pool(pool)
            if w.last_heartbeat_time is not None and w.last_heartbeat_time >= recent]


def no_worker_message(client, pool: str, api: str) -> str:
    workers = client.read_workers_for_work_pool(pool)
    seen = "; ".join(f"{w.name} last seen {w.last_heartbeat_time:%Y-%m-%d %H:%M:%S} UTC"
                     for w in workers if w.last_heartbeat_time) or "no worker ever connected"
    return (f"work pool {pool!r} on {api} has no live worker (none sent a heartbeat in the "
            f"last {LIVE_HEARTBEAT_S:.0f} s; {seen}): start one on each training machine "
            f"(`{WORKER_COMMAND.format(pool=pool)}` with the env of infra/README.md)")


def study_run_deployment(client, pool: str, api: str):
    """The deployment of the study_run flow on pool: the one named study-run, else the only
    one; ValueError if there is none (or several, none named study-run)."""
    found = client.read_deployments(
        flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])),
        work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])))
    named = [d for d in found if d.name == DEPLOYMENT_NAME]
    if named or len(found) == 1:
        return (named or found)[0]
    if not found:
        raise ValueError(
            f"work pool {pool!r} on {api} has no deployment of the {FLOW_NAME} flow: register "
            f"it with `distill serve --pool {pool}` or `prefect deploy --prefect-file "
            f"infra/prefect.yaml --name {DEPLOYMENT_NAME} --pool {pool}`; nothing was "
            "submitted")
    raise ValueError(f"work pool {pool!r} on {api} has several deployments of the {FLOW_NAME} "
                     f"flow ({', '.join(sorted(d.name for d in found))}) and none is named "
                     f"{DEPLOYMENT_NAME!r}: delete all but one")


# ----------------------------------------------------------------------------- submit and wait


@dataclass
class _Run:
    """One (cell, seed) of the study as it goes through the pool."""

    index: int  # its place in the study's order
    cell: Cell
    seed: int
    spec: RunSpec
    steps: int
    flow_run_id: str | None = None
    flow_run_name: str = ""
    submitted: float = 0.0  # time.monotonic() at submission
    checked: float = 0.0  # when its waiting was last looked into
    reported: bool = False

    @property
    def name(self) -> str:
        return self.spec.name


def run_cells_on_pool(pool: Pool, config: StudyConfig, inputs: Inputs, study: list[Cell],
                      where: Locations, study_dir: Path, parent_run_id: str,
                      min_entropy: float | None, shares: dict[str, float]
                      ) -> tuple[list[dict], list[dict]]:
    """Every cell and seed of the study trained by the pool's workers (module docstring):
    (rows in the study's order, failures)."""
    pairs = [(cell, seed) for cell in study for seed in config.seeds]
    runs = [_Run(i, cell, seed, *cell_run(config, inputs, cell, seed, study_dir, where.root,
                                          parent_run_id, min_entropy))
            for i, (cell, seed) in enumerate(pairs)]
    progress = Progress(len(runs), "study", print, unit="runs", every_s=0, bar=False)
    rows, failures, todo = {}, [], []
    for run in runs:
        ref = find_run_task(run.spec, where.tracking_uri)
        if ref is not None and ref.finished:
            print(f"{run.name}: already finished as MLflow run {ref.run_id} (same config and "
                  "code); reusing its results, not submitted")
            rows[run.index] = _row(run, ref)
            progress.update(note=f"{run.name} reused")
        else:
            todo.append(run)
    if todo:
        print(f"submitting {len(todo)} runs to work pool {pool.name!r} ({pool.deployment}), "
              f"at most {config.max_concurrent_runs} at once")
    submit = _submitter(pool, config, inputs, study_dir, parent_run_id, min_entropy, shares,
                        where)

    def on_end(run: _Run, outcome) -> None:
        found = None if isinstance(outcome, str) else find_run_task(run.spec, where.tracking_uri)
        if found is not None and found.finished:
            rows[run.index] = _row(run, found)
            progress.update(note=f"{run.name} done")
            return
        if not isinstance(outcome, str):  # completed, yet not in the study's MLflow
            outcome = (f"flow run {run.flow_run_name!r} ended {outcome.name} but the study's "
                       f"MLflow ({where.tracking_uri}) has no finished run with its key "
                       f"{run.spec.key}: its worker logs elsewhere (MLFLOW_TRACKING_URI)")
        failures.append(_record_failure(run, outcome, where))
        progress.update(note=f"{run.name} FAILED")

    with get_client(sync_client=True) as client:
        _wait(client, pool, todo, submit, config.max_concurrent_runs, on_end)
    return [rows[i] for i in sorted(rows)], sorted(failures, key=lambda f: f["index"])


def _submitter(pool: Pool, config: StudyConfig, inputs: Inputs, study_dir: Path,
               parent_run_id: str, min_entropy: float | None, shares: dict[str, float],
               where: Locations):
    """submit(run): one flow run of the pool's study-run deployment for run."""
    shared = {"config": config.model_dump(mode="json"), "inputs": asdict(inputs),
              "study_dir": str(study_dir), "parent_run_id": parent_run_id,
              "min_entropy": min_entropy}
    code, store = code_identity(), shown_url(where.store_url)

    def submit(run: _Run) -> None:
        expected = Expected(run.spec.key, code, store)
        flow_run = run_deployment(
            pool.deployment_id, timeout=0, as_subflow=True,
            flow_run_name=f"{config.name}: {run.name}",
            tags=["distill-lab", f"study:{parent_run_id}"],
            parameters={**shared, "cell": asdict(run.cell), "seed": run.seed,
                        "expected": asdict(expected),
                        "products_flops": shares[run.cell.label]})
        run.flow_run_id, run.flow_run_name = flow_run.id, flow_run.name
        run.submitted = run.checked = time.monotonic()
        print(f"{run.name}: submitted as flow run {flow_run.name!r} ({flow_run.id})")

    return submit


def _wait(client, pool: Pool, todo: list[_Run], submit, limit: int, on_end) -> None:
    """Submit todo keeping at most limit in flight; call on_end(run, final state) as each ends,
    or on_end(run, reason) for one that failed or could not run."""
    in_flight: list[_Run] = []
    try:
        while todo or in_flight:
            while todo and len(in_flight) < limit:
                run = todo.pop(0)
                submit(run)
                in_flight.append(run)
            time.sleep(POLL_S)
            for run in list(in_flight):
                state = client.read_flow_run(run.flow_run_id).state
                if state.is_final():
                    in_flight.remove(run)
                    on_end(run, state if state.is_completed() else
                           f"flow run {run.flow_run_name!r} ended {state.name}: "
                           f"{state.message or 'no message'}")
                elif state.type in WAITING and time.monotonic() - run.checked > PICKUP_TIMEOUT_S:
                    run.checked = time.monotonic()
                    lost = _report_overdue(client, pool, run, state)
                    if lost:
                        _fail_waiting(client, in_flight, todo, lost, on_end)
    except BaseException:
        _cancel(client, in_flight)
        raise


def _report_overdue(client, pool: Pool, run: _Run, state) -> str | None:
    """Say (once) that run waits long; the reason every waiting run fails if the pool has no
    live worker any more, else None (its workers are busy: keep waiting, check again later)."""
    waited = time.monotonic() - run.submitted
    workers = sorted(w.name for w in live_workers(client, pool.name))
    if workers:
        if not run.reported:
            print(f"warning: {run.name}: flow run {run.flow_run_name!r} has been {state.name} "
                  f"for {waited:.0f} s on work pool {pool.name!r}; its live workers "
                  f"({', '.join(workers)}) are busy or cannot start it (see their logs); "
                  "still waiting")
        run.reported = True
        return None
    reason = (f"waited {waited:.0f} s {state.name} for a worker: "
              + no_worker_message(client, pool.name, pool.api_url))
    print(f"error: {run.name}: {reason}")
    return reason


def _fail_waiting(client, in_flight: list[_Run], todo: list[_Run], reason: str,
                  on_end) -> None:
    """Every run not yet picked up fails with reason (those submitted are cancelled, so that
    they do not start later, unwatched); runs already running go on."""
    for run in list(in_flight):
        if client.read_flow_run(run.flow_run_id).state.type in WAITING:
            in_flight.remove(run)
            _cancel(client, [run])
            on_end(run, reason)
    while todo:
        on_end(todo.pop(0), f"not submitted: {reason}")


def _cancel(client, runs: list[_Run]) -> None:
    for run in runs:
        with contextlib.suppress(Exception):  # best effort: the study is stopping anyway
            client.set_flow_run_state(run.flow_run_id, Cancelling(
                message="the study stopped waiting for it"), force=True)
            print(f"cancelled flow run {run.flow_run_name!r} ({run.name}); the same study "
                  "resumes it from its checkpoint")


# ----------------------------------------------------------------------------- read back


def _row(run: _Run, ref: RunRef) -> dict:
    """What run_cell returns for a run that had finished: read back from MLflow."""
    return {"cell": run.cell.label, "seed": run.seed, **run_results_task(ref),
            "checkpoint": str(run.spec.run_dir / "train" / checkpoint_name(run.steps))}


def _record_failure(run: _Run, reason: str, where: Locations) -> dict:
    run_id = record_failed_run_task(run.spec, where.tracking_uri, reason)
    print(f"error: {run.name} failed (MLflow run {run_id}): {reason}")
    return {"index": run.index, "cell": run.cell.label, "seed": run.seed, "run": run.name,
            "run_id": run_id, "flow_run": run.flow_run_name or None, "reason": reason}


def failed_runs_note(failures: list[dict]) -> str:
    """Markdown under the study's table: each failed run, its MLflow run and why."""
    lines = [f"**Failed runs: {len(failures)}** (left out of the rows above; the same study "
             "run again retries them and reuses the finished ones):"]
    lines += [f"- {f['run']}: MLflow run {f['run_id']}"
              + (f", flow run {f['flow_run']!r}" if f["flow_run"] else "")
              + f": {f['reason']}" for f in failures]
    return "\n".join(lines)


def end_with_failures(parent, outcome: dict, failures: list[dict]) -> None:
    """Attach the table and findings to the study's run (a FAILED run does not get them at its
    close), print them, and raise: the study ends FAILED, naming its failed runs."""
    log_text_task(parent.ref, outcome["table"] + "\n", "results.md")
    log_text_task(parent.ref, outcome["findings"] + "\n", "findings.md")
    print(outcome["table"] + "\n\n" + outcome["findings"])
    names = ", ".join(f["run"] for f in failures)
    raise RuntimeError(f"{len(failures)} of the study's runs failed ({names}); the table, "
                       f"findings and report of MLflow run {parent.ref.run_id} name them and "
                       "say why. Run the same study again to retry them: finished runs are "
                       "reused")
