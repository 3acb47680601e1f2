"""One run lifecycle for every flow: a stable identity, resume after a kill, and an honest end.

A tracked run (an MLflow run plus its folder under ``<artifacts>/runs/``) is identified by a
``run_key``: a hash of what determines its result (the experiment, the cell, the seed, the
resolved configs and the code version). Opening a run with a key

- finds a FINISHED run with that key (under the same parent) whose folder still exists: the
  flow reuses its results instead of training again;
- finds an unfinished one (RUNNING after a ``kill -9``, KILLED, FAILED): the same MLflow run is
  reopened and training resumes from the folder's newest complete checkpoint;
- else creates a new run.

While a run is open its folder is locked (``.lock``, released by the kernel if the process
dies), so a second process cannot run it at the same time, and a RUNNING run whose lock is free
is known to be dead: opening any top-level run of the experiment marks such runs KILLED.

``close_run`` ends a run FINISHED (after registering its student and attaching its text
artifacts), FAILED or KILLED. When the tracking server is down at that moment, the end goes to
the tracker's spill file beside the unsent metrics, and ``distill replay`` (or the next run)
sends it; when even that fails (a full disk) one line says what happened and the next run's
sweep closes the run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import socket
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.artifacts import artifact_root
from tasks.files import WriteError
from tasks.store import DEFAULT_URL_ENV, default_url

LOCK_FILE = ".lock"
RUN_KEY_TAG = "run_key"
# Matched with fullmatch: "$" alone also accepts a trailing newline.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
MAX_NAME_LENGTH = 64


@dataclass(frozen=True)
class Locations:
    """Where one flow run's products go: the artifact root, the rollout store, MLflow."""

    root: Path
    store_url: str
    tracking_uri: str


def locations() -> Locations:
    """Artifact root ($DISTILL_LAB_ARTIFACTS or ./artifacts), store URL and tracking URI."""
    from tasks.tracking import default_tracking_uri

    root = artifact_root()
    root.mkdir(parents=True, exist_ok=True)
    return Locations(root, os.environ.get(DEFAULT_URL_ENV) or default_url(root),
                     default_tracking_uri(root))


def check_name(kind: str, name: str) -> str:
    """A name that becomes a folder and an MLflow experiment: letters, digits, '_', '-', '.',
    starting with a letter or digit, at most 64 characters. Returns it; ValueError otherwise."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{kind} name is empty: give it a name like 'demo'")
    if len(name) > MAX_NAME_LENGTH or not NAME_PATTERN.fullmatch(name):
        shown = name if len(name) <= 80 else name[:77] + "..."
        raise ValueError(f"{kind} name {shown!r} is not allowed: use at most {MAX_NAME_LENGTH} "
                         "letters, digits, '_', '-' and '.', starting with a letter or digit "
                         "(no '/', spaces or control characters)")
    return name


def inside(root: str | Path, *parts: str) -> Path:
    """root/parts resolved, refused unless it lies under root (no '..' or absolute escapes)."""
    base = Path(root).resolve()
    path = base.joinpath(*parts).resolve()
    if path != base and base not in path.parents:
        raise ValueError(f"{'/'.join(parts)!r} would write outside the artifacts root {base}")
    return path


def slug(label: str) -> str:
    """A label as a folder name: 'student:0.25 +curriculum' → 'student-0.25-curriculum'."""
    text = re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-.")
    return text or "run"


@dataclass(frozen=True)
class RunSpec:
    """What a tracked run is: its experiment, name, tags, params, parent, identity and folder."""

    experiment: str
    name: str
    tags: dict[str, str]
    params: dict[str, Any]
    run_dir: Path
    key: str | None = None  # None: always a new run (e.g. a nightly evaluation)
    parent_run_id: str | None = None


@dataclass(frozen=True)
class RunRef:
    """Where a task reports: an MLflow tracking URI and an explicit run id. finished: the run
    had already finished with the same identity (its results are reused); resumed: it is an
    unfinished run continued."""

    tracking_uri: str
    run_id: str
    finished: bool = False
    resumed: bool = False


@dataclass
class RunEnd:
    """What closing a run FINISHED sends besides its status."""

    register: tuple[str, str] | None = None  # (registered model name, model folder)
    register_metrics: dict[str, float] = field(default_factory=dict)
    text: dict[str, str] = field(default_factory=dict)  # artifact file → content


# ----------------------------------------------------------------------------- opening


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run folder's lock; RuntimeError if another live process holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / LOCK_FILE, "a")  # noqa: SIM115  (held for the block)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"run folder {run_dir} is in use by another process (its "
                               f"{LOCK_FILE} is held): wait for that run or stop it") from None
        yield
    finally:
        handle.close()


def _lock_is_free(run_dir: str) -> bool:
    path = Path(run_dir) / LOCK_FILE
    if not path.exists():
        return True
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
    return True


def open_run(spec: RunSpec, tracking_uri: str, log=print) -> RunRef:
    """Reuse, resume or create the run of spec (see the module docstring). Call it while
    holding run_lock(spec.run_dir)."""
    from tasks.tracking import PARENT_TAG, Tracker, git_sha

    with Tracker(tracking_uri) as tracker:
        if spec.parent_run_id is None:
            sweep_dead_runs(tracker, spec.experiment, log)
        identity = {RUN_KEY_TAG: spec.key} if spec.key else None
        if identity and spec.parent_run_id:
            identity[PARENT_TAG] = spec.parent_run_id
        found = tracker.find_run(spec.experiment, identity) if identity else None
        if found is not None and found.status == "FINISHED" and spec.run_dir.exists():
            log(f"{spec.name}: already finished as MLflow run {found.run_id} (same config and "
                "code); reusing its results")
            return RunRef(tracking_uri, found.run_id, finished=True)
        if found is not None and found.status != "FINISHED":
            tracker.reopen_run(found.run_id)
            tracker.set_tags(found.run_id, _process_tags(spec.run_dir))
            log(f"{spec.name}: resuming MLflow run {found.run_id} (it was {found.status})")
            return RunRef(tracking_uri, found.run_id, resumed=True)
        tags = {"git_sha": git_sha(), **spec.tags, **_process_tags(spec.run_dir)}
        if spec.key:
            tags[RUN_KEY_TAG] = spec.key
        run_id = tracker.start_run(spec.experiment, spec.name, tags, spec.parent_run_id)
        tracker.log_params(run_id, spec.params)
        tracker.log_dict(run_id, spec.params, "config.json")
    return RunRef(tracking_uri, run_id)


def _process_tags(run_dir: Path) -> dict[str, str]:
    return {"run_dir": str(run_dir), "host": socket.gethostname(), "pid": str(os.getpid())}


def sweep_dead_runs(tracker, experiment: str, log=print) -> list[str]:
    """Mark KILLED every RUNNING run of experiment started on this host whose folder lock is
    free (its process died without closing it: kill -9, power loss, a full disk). Returns
    their ids."""
    swept = []
    for run, tags in tracker.running_runs(experiment):
        if (tags.get("host") == socket.gethostname() and tags.get("run_dir")
                and _lock_is_free(tags["run_dir"])):
            tracker.set_tags(run.run_id, {"closed_by": "sweep: its process had died"})
            tracker.end_run(run.run_id, "KILLED")
            swept.append(run.run_id)
            log(f"marked run {run.run_name!r} ({run.run_id}) KILLED: it was RUNNING but its "
                "process is gone")
    return swept


# ----------------------------------------------------------------------------- closing


# The runs this process has closed as KILLED (an interrupt, a tracking outage), by id: what
# the command's last line names.
KILLED_HERE: list[str] = []


def close_run(run: RunRef, status: str, end: RunEnd | None = None, log=print) -> dict:
    """End a run: on FINISHED register its student and attach its text first. Never raises for
    an unreachable server (the end is spilled for `distill replay`); a failure to record even
    that is said in one line, and the run stays RUNNING until the next run's sweep."""
    from tasks.tracking import Tracker

    end = end or RunEnd()
    out: dict[str, Any] = {}
    try:
        with Tracker(run.tracking_uri, check=False) as tracker:
            if status == "FINISHED" and end.register is not None:
                name, model_dir = end.register
                out["model_version"] = tracker.register_model(
                    run.run_id, model_dir, name, end.register_metrics, deferrable=True)
            for artifact_file, content in end.text.items():
                tracker.log_text(run.run_id, content, artifact_file, deferrable=True)
            tracker.end_run(run.run_id, status, deferrable=True)
            if status == "KILLED":
                KILLED_HERE.append(run.run_id)
    except OSError as error:
        log(f"error: could not record run {run.run_id} as {status}: {describe_os_error(error)}; "
            "the next run marks it KILLED")
    return out


def describe_os_error(error: BaseException) -> str:
    """One line for an OS-level failure; a full disk says so whatever layer noticed it. The
    place named is the file the error says it was writing (a WriteError always says), else
    the layer's own words: never a folder guessed for it."""
    text = str(error)
    first = text.splitlines()[0] if text else ""
    if isinstance(error, WriteError):
        return first
    if getattr(error, "errno", None) == errno.ENOSPC or "disk is full" in text or (
            "No space left" in text):
        filename = getattr(error, "filename", None)
        said = f"writing {filename}" if filename else f"{type(error).__name__}: {first}"
        return f"No space left on device ({said}): free space, then rerun"
    return f"{type(error).__name__}: {first}"


# ----------------------------------------------------------------------------- before any work

MIN_FREE_ENV = "DISTILL_LAB_MIN_FREE_MB"
MIN_FREE_MB = 1024


def preflight(config: Any = None, log=print) -> Locations:
    """Checks that can fail before any work, each one line naming what to fix: the artifacts
    folder is writable with room, the rollout store opens, the tracking store answers (its
    database set up by one process at a time), the config's model names resolve offline, its
    problems and benchmark files read. Then what an earlier run could not send to MLflow
    (tracking-spill/) is sent."""
    from tasks.artifacts import build_lock
    from tasks.store import RolloutStore
    from tasks.tracking import Tracker, sqlite_path

    where = locations()
    check_free_space(where.root)
    for url, label in ((where.tracking_uri, "MLflow database"), (where.store_url, "rollout store")):
        if url.startswith("sqlite:///"):
            check_sqlite_file(sqlite_path(url), label)
    RolloutStore(where.store_url).close()  # a bad store URL or driver fails now, not after training
    with build_lock(where.root / ".tracking-setup.lock"):
        tracker = Tracker(where.tracking_uri, artifacts_dir=where.root)
        tracker.client.search_experiments(max_results=1)  # creates a fresh database's tables
    with tracker:
        try:
            replayed = tracker.replay_all()
        except Exception as error:  # an old spill the server still refuses: say so, go on
            log(f"warning: could not replay {tracker.spill_dir}: {describe_os_error(error)}")
            replayed = {}
    if replayed:
        log(f"sent what earlier runs could not: {sum(replayed.values())} records of "
            f"{len(replayed)} runs from {tracker.spill_dir}")
    if config is not None:
        check_models_available(config)
        check_problem_files(config)
    return where


def check_free_space(root: Path) -> None:
    """ValueError unless root has at least $DISTILL_LAB_MIN_FREE_MB (default 1024) MB free."""
    need = int(os.environ.get(MIN_FREE_ENV, MIN_FREE_MB))
    free = shutil.disk_usage(root).free // 2**20
    if free < need:
        raise ValueError(f"the artifacts folder {root} has {free} MB free; runs need at least "
                         f"{need} MB (free space, point --artifacts elsewhere, or lower "
                         f"${MIN_FREE_ENV})")


def check_sqlite_file(path: Path, label: str) -> None:
    """ValueError naming the file unless SQLite's quick_check passes on it (no file yet: one is
    made). A damaged database is otherwise written into without notice."""
    if not path.exists():
        return
    try:
        with contextlib.closing(sqlite3.connect(path)) as database:
            problems = [row[0] for row in database.execute("PRAGMA quick_check(3)")]
    except sqlite3.DatabaseError as error:
        problems = [str(error)]
    if problems != ["ok"]:
        first = " ".join(problems[0].replace("*** in database main ***", "").split())
        raise ValueError(
            f"the {label} {path} is damaged (SQLite quick_check: {first}): restore it "
            f"from a backup, or move it aside (`mv {path} {path}.damaged`) and rerun to start a "
            "new one (what it held stays in the moved file)")


def check_models_available(config: Any) -> None:
    """Every teacher/student/policy the config names explicitly loads here: a local folder, or
    a hub id already in the local cache when offline (HF_HUB_OFFLINE=1)."""
    from tasks.models import check_available

    for field_name in ("teacher", "student"):
        name = getattr(config, field_name, None)
        if name:
            check_available(name, f"{field_name} ({type(config).__name__}.{field_name})")


def check_problem_files(config: Any) -> None:
    """Read every problems file the config names as its later steps read it: the train and
    held-out problems whole, each benchmark file as far as its evaluation reads (its limit of
    problems). A bad line then fails here, naming its file and line, not once training is done.
    The benchmark "default" is the profile's test split, written and checksummed by its
    bootstrap."""
    from tasks.data import read_problems
    from tasks.evaluate import resolve_benchmarks
    from tasks.profiles import DEFAULT_BENCHMARK

    for field_name in ("train_problems", "held_out_problems"):
        if getattr(config, field_name, None):
            read_problems(getattr(config, field_name))
    files = [spec for spec in getattr(config, "benchmarks", ()) if spec != DEFAULT_BENCHMARK]
    resolve_benchmarks(files, _benchmark_limit(config))


def _benchmark_limit(config: Any) -> int | None:
    """The problems per benchmark the config's evaluation reads: its evaluation stage's limit,
    under the prefix the form holds that stage's knobs with (eval_limit, or limit)."""
    from tasks.evaluate import EvalConfig

    prefix = dict(getattr(type(config), "_stages", ())).get(EvalConfig)
    return None if prefix is None else getattr(config, prefix + "limit")
