"""The one module that talks to MLflow: runs, params, metrics, artifacts and the model registry.

Every call names its run explicitly and goes through ``mlflow.MlflowClient``. MLflow's fluent
API (``mlflow.start_run``, ``mlflow.log_metric``) keeps an active-run stack per thread, and
Prefect runs tasks in worker threads, so fluent calls there silently create orphan runs.

Where things go by default: ``$MLFLOW_TRACKING_URI`` if set, else a SQLite database
``<artifacts dir>/mlflow.db`` with run artifacts in ``<artifacts dir>/mlflow-artifacts``.

Metrics survive a tracking-server outage: they are buffered in memory and re-sent on the next
``log_metrics`` or ``flush`` (with exponential backoff between attempts), and whatever still
cannot be sent when the tracker gives up is written to ``<artifacts dir>/tracking-spill/<run
id>.jsonl`` for ``Tracker.replay_spill``. To keep one failed attempt short, the tracker sets
MLflow's HTTP client to 1 retry and a 2 s timeout (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``,
``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR``, ``MLFLOW_HTTP_REQUEST_TIMEOUT``) unless those variables
are already set: a refused connection fails at once, a server that accepts but never answers
costs at most about 4 s. Raise ``MLFLOW_HTTP_REQUEST_TIMEOUT`` if large artifact uploads to a
slow server time out. ``replay_all`` lifts the ones it set: a replay waits as long as MLflow
itself would. Everything other than metrics (params, tags, artifacts, registry) is sent at once
and raises if the server is down; a flow then closes its runs KILLED through the spill file and
ends with ``TrackingOutage``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import posixpath
import re
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, NamedTuple

import mlflow
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import (
    MAX_ENTITY_KEY_LENGTH,
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
)

from distill_core import Objective
from tasks.artifacts import artifact_root
from tasks.eval_metrics import is_top_key
from tasks.files import write_errors_named
from tasks.ui_links import TRAINING_VIEW

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
MODEL_ARTIFACT_PATH = "student"
HTTP_CLIENT_DEFAULTS = {  # MLflow's defaults (7 retries, 120 s) would stall training for minutes
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "2",
}
HEALTH_TIMEOUT_S = 5.0
# Which of HTTP_CLIENT_DEFAULTS the tracker set itself (the user had not): replay lifts those.
_SET_HERE: set[str] = set()
# MLflow's client prints its own "View run … at" links, which open the GenAI view of MLflow 3's
# UI; the platform prints links that open the training view instead (run_url below).
QUIET_CLIENT_DEFAULTS = {"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
# Where `mlflow ui` serves a SQLite store when started as the printed hint says.
LOCAL_UI = "http://127.0.0.1:5000"
# An experiment tag holding a saved runs-table view (MLflow's own "share view" format: the
# search facets and the UI state as JSON), opened by ?viewStateShareKey=<key>.
SHARED_VIEW_TAG = "mlflow.sharedViewState."
# The characters MLflow accepts in metric and param names (mlflow/utils/validation.py).
_VALID_NAME = re.compile(r"[/\w.\- :]+")  # fullmatch: "$" accepts a final newline


def default_tracking_uri(artifacts_dir: str | Path | None = None) -> str:
    """$MLFLOW_TRACKING_URI if set, else ``sqlite:///<artifacts dir>/mlflow.db``."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{artifact_root(artifacts_dir) / 'mlflow.db'}"


def ui_base(tracking_uri: str) -> str:
    """The MLflow UI's address for a tracking URI: the server itself, or for a SQLite file the
    address `mlflow ui` serves it on (``browse_hint`` says how to start it)."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return LOCAL_UI


def browse_hint(tracking_uri: str) -> str | None:
    """For a SQLite store, the command that serves its UI at LOCAL_UI; None for a server."""
    if tracking_uri.startswith(("http://", "https://")):
        return None
    return (f"mlflow ui --backend-store-uri {tracking_uri} --port {LOCAL_UI.rsplit(':', 1)[1]} "
            "--workers 1")


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """A run's page in the training view of MLflow's UI (metrics, charts, artifacts)."""
    return f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs/{run_id}?{TRAINING_VIEW}"


def artifact_url(tracking_uri: str, experiment_id: str, run_id: str, path: str) -> str:
    """A run's artifact opened in its Artifacts tab (an HTML file is shown as its page)."""
    return (f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs/{run_id}/artifacts/"
            f"{urllib.parse.quote(path)}?{TRAINING_VIEW}")


def compare_url(tracking_uri: str, experiment_id: str, run_ids: Sequence[str]) -> str:
    """MLflow's compare page for runs of one experiment: parallel coordinates, scatter and box
    plots, and their params and metrics side by side (only the differing ones, on a switch)."""
    def quoted(values: list[str]) -> str:  # JSON lists, quotes escaped: one clickable word
        return urllib.parse.quote(json.dumps(values, separators=(",", ":")), safe="[],")

    return (f"{ui_base(tracking_uri)}/#/compare-runs?runs={quoted(list(run_ids))}"
            f"&experiments={quoted([experiment_id])}&{TRAINING_VIEW}")


def runs_view_url(tracking_uri: str, experiment_id: str, view_key: str,
                  charts: bool = False) -> str:
    """The runs table of an experiment opened on a saved view (``Tracker.save_runs_view``), or
    with charts its chart view."""
    mode = "&compareRunsMode=CHART" if charts else ""
    return (f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs?viewStateShareKey="
            f"{view_key}{mode}&{TRAINING_VIEW}")


@dataclass(frozen=True)
class RunsCharts:
    """The charts a saved runs view opens with, ahead of MLflow's own: a parallel-coordinates
    chart of the params that tell the runs apart against the first two metrics, then for each
    metric a bar per run (the runs side by side)."""

    title: str
    params: Sequence[str]
    metrics: Sequence[str]

    def state(self) -> dict[str, Any]:
        """The part of MLflow's runs-view state that holds them (``compareRunCharts``,
        ``compareRunSections``), as its UI writes it: two sections ahead of MLflow's own, the
        parallel chart alone in a row (its axes need the width), the bars three a row."""
        def section(uuid: str, name: str, columns: int, height: int) -> dict[str, Any]:
            return {"uuid": uuid, "name": name, "display": True, "isReordered": False,
                    "deleted": False, "isGenerated": False, "columns": columns,
                    "cardHeight": height}

        apart = section("distill-lab-apart", f"{self.title}: what tells them apart", 1, 380)
        side = section("distill-lab-bars", f"{self.title}, side by side", 3, 320)

        def chart(uuid: str, where: dict, **config: Any) -> dict[str, Any]:
            return {"uuid": uuid, "runsCountToCompare": 100, "metricSectionId": where["uuid"],
                    "deleted": False, "isGenerated": False, **config}

        charts = [chart(f"distill-lab-bar-{key}", side, type="BAR", metricKey=key,
                        displayName=key) for key in self.metrics]
        if len(self.params) + len(self.metrics[:2]) >= 2:  # MLflow draws it from two axes on
            charts.insert(0, chart("distill-lab-parallel", apart, type="PARALLEL",
                                   selectedParams=list(self.params),
                                   selectedMetrics=list(self.metrics[:2]), showAllRuns=True))
        return {"compareRunCharts": charts, "compareRunSections": [apart, side],
                "isAccordionReordered": True, "hideEmptyCharts": True}


def git_sha(repo_dir: str | Path | None = None) -> str:
    """HEAD's SHA of the repository holding this code (or ``repo_dir``), "-dirty" appended
    when tracked files differ from HEAD; "unknown" outside a git checkout."""
    cwd = Path(repo_dir) if repo_dir else Path(__file__).resolve().parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                              timeout=10, check=True)
        return done.stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def flatten_config(config: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts, dataclasses and pydantic models as ``{"a.b.c": "value"}``.

    Lists and tuples become compact JSON strings; everything else its ``str``."""
    if isinstance(config, Objective):  # as configs write it: "opd", "student:0.25"
        return {prefix: config.name}
    if is_dataclass(config) and not isinstance(config, type):
        config = {f.name: getattr(config, f.name) for f in fields(config)}
    elif hasattr(config, "model_dump"):
        config = config.model_dump()
    if not isinstance(config, Mapping):
        if not prefix:
            raise TypeError(f"log_params needs a dict or dataclass, got {type(config).__name__}")
        return {prefix: _param_text(config)}
    flat: dict[str, str] = {}
    for key, value in config.items():
        flat.update(flatten_config(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def is_path_value(text: str) -> bool:
    """A param value naming a file or folder (absolute, ``~``, ``./`` or ``../``), or a JSON
    list holding one: such values differ between runs without telling their settings apart."""
    if text.startswith("[") and text.endswith("]"):
        try:
            items = json.loads(text)
        except ValueError:
            return False
        return any(isinstance(item, str) and is_path_value(item) for item in items)
    return text.startswith(("/", "~", "./", "../"))


def _path_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """The tags ``log_params`` made of paths: dotted config keys (``train.output_dir``); the
    platform's other tags have no dot, MLflow's own start with ``mlflow.``."""
    return {k: v for k, v in tags.items() if "." in k and not k.startswith("mlflow.")}


def _param_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return json.dumps(value, default=str, separators=(",", ":"))
    return str(value)


def _truncate_param(key: str, text: str) -> str:
    """Cut a value to MLflow's param length limit, saying so at the end of the value."""
    if len(text) <= MAX_PARAM_VAL_LENGTH:
        return text
    note = f"...[truncated {len(text)} chars to {MAX_PARAM_VAL_LENGTH}]"
    log.warning("param %r is %d characters long, over MLflow's limit of %d; logged truncated",
                key, len(text), MAX_PARAM_VAL_LENGTH)
    return text[: MAX_PARAM_VAL_LENGTH - len(note)] + note


def _check_name(kind: str, name: str) -> None:
    if (not _VALID_NAME.fullmatch(name) or len(name) > MAX_ENTITY_KEY_LENGTH
            or posixpath.normpath(name) != name):
        raise ValueError(
            f"{kind} name {name!r} is not valid in MLflow: use at most {MAX_ENTITY_KEY_LENGTH} "
            "letters, digits, '_', '-', '.', ' ', ':' and single '/' between parts")


def _check_metric_key(key: str) -> None:
    _check_name("metric", key)
    if "/" not in key and not is_top_key(key):
        raise ValueError(f"metric key {key!r} has no stage: name it 'stage/name', e.g. "
                         f"'train/{key}' or 'eval/<benchmark>/{key}'")


@dataclass(frozen=True)
class _PendingMetric:
    run_id: str
    key: str
    value: float
    timestamp: int  # ms since the epoch, kept from the first attempt so re-sends are idempotent
    step: int

    def to_mlflow(self) -> Metric:
        return Metric(self.key, self.value, self.timestamp, self.step)


class ModelVersionRef(NamedTuple):
    """One registered model version; ``local_dir`` is set once its files are downloaded."""

    name: str
    version: int
    run_id: str | None
    local_dir: Path | None


class RunSummary(NamedTuple):
    """A run as ``child_runs`` lists it; status is RUNNING, FINISHED, FAILED or KILLED."""

    run_id: str
    run_name: str
    status: str


class Tracker:
    """Explicit-run-id MLflow logging with a metric buffer that outlives server outages.

    Args:
        tracking_uri: an ``http(s)://`` server or a ``sqlite:///`` database; default
            ``default_tracking_uri(artifacts_dir)``.
        artifacts_dir: where the default SQLite database and unsent-metric spill files live;
            default ``tasks.artifacts.artifact_root()``.
        initial_backoff_s, max_backoff_s: after a failed metric send, the next attempt waits
            this long, doubling per consecutive failure up to the maximum.
        max_buffered: more unsent metrics than this are written to the spill file instead of
            being held in memory.
        check: fail at once if the server does not answer (off when closing a run, whose end
            must reach the spill file even then).

    Raises:
        ConnectionError: the tracking server does not answer or the database cannot be opened.
    """

    def __init__(self, tracking_uri: str | None = None, artifacts_dir: str | Path | None = None,
                 *, initial_backoff_s: float = 1.0, max_backoff_s: float = 30.0,
                 max_buffered: int = 100_000, check: bool = True):
        for name, value in {**HTTP_CLIENT_DEFAULTS, **QUIET_CLIENT_DEFAULTS}.items():
            if name not in os.environ:
                os.environ[name] = value
                _SET_HERE.add(name)
        self.artifacts_dir = artifact_root(artifacts_dir)
        self.tracking_uri = tracking_uri or default_tracking_uri(self.artifacts_dir)
        self.spill_dir = spill_folder(self.artifacts_dir)
        self.initial_backoff_s, self.max_backoff_s = initial_backoff_s, max_backoff_s
        self.max_buffered = max_buffered
        self.nonfinite_skipped: Counter[str] = Counter()  # metric key -> values skipped
        self._pending: list[_PendingMetric] = []
        self._failures = 0
        self._next_attempt = 0.0
        self._lock = threading.RLock()
        if check:
            _check_reachable(self.tracking_uri)
        self.client = mlflow.MlflowClient(tracking_uri=self.tracking_uri,
                                          registry_uri=self.tracking_uri)

    # -- runs ---------------------------------------------------------------------------------

    def start_run(self, experiment: str, run_name: str, tags: Mapping[str, Any] | None = None,
                  parent_run_id: str | None = None) -> str:
        """Create a run (and its experiment if missing) and return its id.

        A ``git_sha`` tag is added unless ``tags`` has one; a parent run id becomes the
        ``mlflow.parentRunId`` tag, which MLflow's UI uses to nest child runs."""
        all_tags = {"git_sha": git_sha(), **(tags or {})}
        if parent_run_id:
            all_tags[PARENT_TAG] = parent_run_id
        run = self.client.create_run(self._experiment_id(experiment), run_name=run_name,
                                     tags={k: str(v) for k, v in all_tags.items()})
        return run.info.run_id

    def _experiment_id(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return self.client.create_experiment(
                    name, artifact_location=self._artifact_location())
            except MlflowException as error:  # another process created it in between
                if error.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                experiment = self.client.get_experiment_by_name(name)
        if experiment.lifecycle_stage == "deleted":
            raise ValueError(
                f"MLflow experiment {name!r} (id {experiment.experiment_id}) at "
                f"{self.tracking_uri} is deleted: restore it (`mlflow experiments restore "
                f"--experiment-id {experiment.experiment_id}`) or choose another name")
        return experiment.experiment_id

    def _artifact_location(self) -> str | None:
        """For a SQLite store, a folder beside the database; a server picks its own."""
        if not self.tracking_uri.startswith("sqlite:///"):
            return None
        return (sqlite_path(self.tracking_uri).parent / "mlflow-artifacts").as_uri()

    def end_run(self, run_id: str, status: str = "FINISHED", deferrable: bool = False) -> None:
        """Send the run's buffered metrics (one attempt; what fails stays buffered for
        ``close``) and mark the run FINISHED, FAILED or KILLED. With deferrable, a mark that
        cannot be sent now goes to the spill file with the metrics (see ``defer``)."""
        if status not in ("FINISHED", "FAILED", "KILLED"):
            raise ValueError(f"end_run status must be FINISHED, FAILED or KILLED, got {status!r}")
        self.flush()
        end_time = int(time.time() * 1000)
        self._send_or_spill(deferrable, run_id, "status",
                            {"status": status, "end_time": end_time})

    def reopen_run(self, run_id: str) -> None:
        """Mark an unfinished (killed, failed) run RUNNING again: a resumed run continues it."""
        self.client.update_run(run_id, status="RUNNING")

    def find_run(self, experiment: str, tags: Mapping[str, str]) -> RunSummary | None:
        """The newest run of experiment carrying every tag in tags (None if there is none)."""
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            return None
        condition = " and ".join(f"tags.`{k}` = '{_quote(str(v))}'" for k, v in tags.items())
        runs = self.client.search_runs([found.experiment_id], filter_string=condition,
                                       order_by=["attributes.start_time DESC"], max_results=1)
        return _summary(runs[0]) if runs else None

    def running_runs(self, experiment: str) -> list[tuple[RunSummary, dict[str, str]]]:
        """Every run of experiment that is marked RUNNING, with its tags."""
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            return []
        return [(_summary(r), dict(r.data.tags)) for r in
                self._search([found.experiment_id], "attributes.status = 'RUNNING'")]

    def set_tags(self, run_id: str, tags: Mapping[str, Any], deferrable: bool = False) -> None:
        """Set run tags (values become strings); a tag may be overwritten."""
        self._send_or_spill(deferrable, run_id, "tags",
                            {"tags": {k: str(v) for k, v in tags.items()}})

    # -- deferral: what a run's end sends goes to the spill file when the server is down ------

    def _send_or_spill(self, deferrable: bool, run_id: str, kind: str, payload: dict) -> None:
        try:
            _SENDERS[kind](self, run_id, payload)
        except Exception as error:
            if not deferrable:
                raise
            self._spill_record(run_id, {"kind": kind, **payload},
                               f"{kind} of run {run_id} not sent ({_first_line(error)})")

    # -- params -------------------------------------------------------------------------------

    def log_params(self, run_id: str, config: Any) -> None:
        """Log a (nested) config once, as flat ``a.b.c`` params; a value that is a file or
        folder path (``is_path_value``) is logged as a tag of the same name instead, which
        ``run_params`` reads back with the params.

        Values longer than MLflow's limit are truncated with a note. Logging the same values
        again is a no-op; a different value for a logged key raises ValueError, because MLflow
        params are write-once (start a new run, or log a changing value as a metric)."""
        flat = {k: _truncate_param(k, v) for k, v in flatten_config(config).items()}
        for key in flat:
            _check_name("param", key)
        paths = {k: v for k, v in flat.items() if is_path_value(v)}
        if paths:  # tags: MLflow's compare page then plots what tells runs apart, not folders
            self.set_tags(run_id, paths)
            flat = {k: v for k, v in flat.items() if k not in paths}
        logged = self.client.get_run(run_id).data.params
        changed = {k: (logged[k], v) for k, v in flat.items() if k in logged and logged[k] != v}
        if changed:
            lines = "; ".join(f"{k}: logged {old!r}, now {new!r}" for k, (old, new)
                              in list(changed.items())[:5])
            raise ValueError(f"run {run_id} already has different values for {len(changed)} "
                             f"params ({lines}). MLflow params are write-once: start a new run "
                             "for a new config")
        new = [Param(k, v) for k, v in flat.items() if k not in logged]
        for start in range(0, len(new), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(run_id, params=new[start:start + MAX_PARAMS_TAGS_PER_BATCH])

    # -- metrics ------------------------------------------------------------------------------

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        """Log ``stage/name`` metrics at a step; never raises for an unreachable server.

        NaN and ±inf values are skipped, counted in ``nonfinite_skipped`` and warned about
        once per key: MLflow would store them, but its charts break on them. The rest join the
        buffer, which is sent now unless a recent failure asked to wait (exponential backoff)."""
        now_ms = int(time.time() * 1000)
        batch = []
        for key, value in metrics.items():
            _check_metric_key(key)
            value = float(value)
            if math.isfinite(value):
                batch.append(_PendingMetric(run_id, key, value, now_ms, int(step)))
            else:
                self._count_nonfinite(key, value, step)
        with self._lock:
            self._pending.extend(batch)
            self._send_pending(force=False)
            if len(self._pending) > self.max_buffered:
                self._spill_pending(reason=f"more than {self.max_buffered} metrics buffered")

    def _count_nonfinite(self, key: str, value: float, step: int) -> None:
        if not self.nonfinite_skipped[key]:
            log.warning("metric %r is %s at step %d: not logged (MLflow charts break on NaN/inf); "
                        "later non-finite values of it are only counted", key, value, step)
        self.nonfinite_skipped[key] += 1

    def flush(self, final: bool = False, wait_s: float = 0.0) -> int:
        """Try to send every buffered metric now, retrying with backoff for up to ``wait_s``.

        With ``final=True`` whatever is still unsent is written to the spill file (a warning
        says how many and where). Returns the number of metrics not delivered to MLflow."""
        deadline = time.monotonic() + wait_s
        with self._lock:
            while not self._send_pending(force=True) and time.monotonic() < deadline:
                time.sleep(min(self._backoff_s(), max(0.0, deadline - time.monotonic())))
            unsent = len(self._pending)
            if unsent and final:
                self._spill_pending(reason=f"{self.tracking_uri} is unreachable")
                self._failures, self._next_attempt = 0, 0.0  # gave up: the next metric tries anew
            return unsent

    def close(self, wait_s: float = 0.0) -> int:
        """Final flush: returns how many metrics had to be spilled to a file (0 = none)."""
        return self.flush(final=True, wait_s=wait_s)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _backoff_s(self) -> float:
        return min(self.initial_backoff_s * 2 ** max(self._failures - 1, 0), self.max_backoff_s)

    def _send_pending(self, force: bool) -> bool:
        """Send the buffer in order, run by run; True when it is empty afterwards."""
        if not self._pending:
            return True
        if not force and time.monotonic() < self._next_attempt:
            return False
        try:
            while self._pending:
                run_id = self._pending[0].run_id
                chunk = [m for m in self._pending[:MAX_METRICS_PER_BATCH] if m.run_id == run_id]
                self.client.log_batch(run_id, metrics=[m.to_mlflow() for m in chunk])
                sent = set(map(id, chunk))
                self._pending = [m for m in self._pending if id(m) not in sent]
        except Exception as error:  # any failure: keep the metrics, retry later, never raise
            self._failures += 1
            self._next_attempt = time.monotonic() + self._backoff_s()
            # Warn when an outage starts; later attempts only at INFO to keep training logs clean.
            log.log(logging.WARNING if self._failures == 1 else logging.INFO,
                    "could not send %d metrics to %s (attempt %d, next in %.0f s; they stay "
                    "buffered): %s", len(self._pending), self.tracking_uri, self._failures,
                    self._backoff_s(), _first_line(error))
            return False
        if self._failures:
            log.warning("tracking at %s reachable again; buffered metrics sent", self.tracking_uri)
        self._failures = 0
        return True

    def _spill_pending(self, reason: str) -> None:
        """Append every buffered metric to its run's spill file and empty the buffer."""
        by_run: dict[str, list[_PendingMetric]] = {}
        for metric in self._pending:
            by_run.setdefault(metric.run_id, []).append(metric)
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        for run_id, metrics in by_run.items():
            path = self.spill_path(run_id)
            with write_errors_named(path), path.open("a") as f:
                f.writelines(json.dumps({"kind": "metric", **asdict(m)}) + "\n"
                             for m in metrics)
            log.warning("%s: wrote %d unsent metrics of run %s to %s; send them later with "
                        "Tracker(%r).replay_spill(%r)", reason, len(metrics), run_id, path,
                        self.tracking_uri, str(path))
        self._pending = []

    def spill_path(self, run_id: str) -> Path:
        """Where what could not be sent for a run (metrics, then its end: evaluation tags and
        artifacts, registration, final status) is written when the tracker gives up."""
        return self.spill_dir / f"{run_id}.jsonl"

    def _spill_record(self, run_id: str, record: dict, reason: str) -> None:
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        path = self.spill_path(run_id)
        with write_errors_named(path), path.open("a") as handle:
            handle.write(json.dumps({"run_id": run_id, **record}) + "\n")
        log.warning("%s: written to %s; send it with `distill replay` (or the next run does)",
                    reason, path)

    def replay_spill(self, path: str | Path) -> int:
        """Send a spill file's records to MLflow in order, delete the file and return how many.

        Metrics keep their original timestamps, so replaying a file twice logs nothing new;
        a final status keeps its end time. Raises (and keeps the file) if the server is still
        unreachable."""
        path = Path(path)
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        metrics = [_PendingMetric(**{k: r[k] for k in ("run_id", "key", "value", "timestamp",
                                                       "step")})
                   for r in records if r.get("kind", "metric") == "metric"]
        for run_id in dict.fromkeys(m.run_id for m in metrics):
            of_run = [m.to_mlflow() for m in metrics if m.run_id == run_id]
            for start in range(0, len(of_run), MAX_METRICS_PER_BATCH):
                self.client.log_batch(run_id, metrics=of_run[start:start + MAX_METRICS_PER_BATCH])
        for record in records:  # the run's end after its metrics, status last as written
            if record.get("kind", "metric") != "metric":
                _SENDERS[record["kind"]](self, record["run_id"], record)
        path.unlink()
        return len(records)

    def replay_all(self) -> dict[str, int]:
        """Replay every spill file of this artifact directory; {run id: records sent}.

        Under MLflow's own HTTP timeout and retries (or the user's MLFLOW_HTTP_REQUEST_*), not
        the short ones a run uses: a server just back from an outage may answer slowly, and
        replay has nothing else to keep moving."""
        if not self.spill_dir.is_dir():
            return {}
        with _mlflow_http_settings():
            return {path.stem: self.replay_spill(path)
                    for path in sorted(self.spill_dir.glob("*.jsonl"))}

    # -- artifacts ----------------------------------------------------------------------------

    def log_artifact(self, run_id: str, local_path: str | Path,
                     artifact_path: str | None = None) -> None:
        """Upload a file, or a directory's contents, under ``artifact_path`` of the run."""
        local_path = Path(local_path)
        if local_path.is_dir():
            self.client.log_artifacts(run_id, str(local_path), artifact_path)
        elif local_path.is_file():
            self.client.log_artifact(run_id, str(local_path), artifact_path)
        else:
            raise FileNotFoundError(f"log_artifact: {local_path} does not exist")

    def log_dict(self, run_id: str, dictionary: Mapping[str, Any], artifact_file: str,
                 deferrable: bool = False) -> None:
        """Write a dict as a JSON (or .yaml) artifact file of the run."""
        self._send_or_spill(deferrable, run_id, "dict",
                            {"dictionary": json.loads(json.dumps(dict(dictionary), default=str)),
                             "artifact_file": artifact_file})

    def log_text(self, run_id: str, text: str, artifact_file: str,
                 deferrable: bool = False) -> None:
        """Write text (Markdown, HTML, …) as an artifact file of the run."""
        self._send_or_spill(deferrable, run_id, "text",
                            {"text": text, "artifact_file": artifact_file})

    def log_figure(self, run_id: str, figure: Any, artifact_file: str) -> None:
        """Save a matplotlib figure as an artifact file of the run, in the format its extension
        names (``report/avg_vs_entropy.png``), so it shows in the MLflow UI."""
        self.client.log_figure(run_id, figure, artifact_file)

    def log_table(self, run_id: str, rows: Sequence[Mapping[str, Any]],
                  artifact_file: str, deferrable: bool = False) -> None:
        """Log rows (dicts; missing keys become null) as a ``.json`` table MLflow's UI shows."""
        columns = list(dict.fromkeys(key for row in rows for key in row))
        self._send_or_spill(deferrable, run_id, "table",
                            {"table": {c: [row.get(c) for row in rows] for c in columns},
                             "artifact_file": artifact_file})

    # -- reading back -------------------------------------------------------------------------

    def read_json(self, run_id: str, artifact_file: str) -> dict | None:
        """A JSON artifact of a run (e.g. findings.json), or None if the run has none."""
        import tempfile

        names = {a.path for a in self.client.list_artifacts(run_id)}
        if artifact_file not in names:
            return None
        with tempfile.TemporaryDirectory() as folder:
            local = self.client.download_artifacts(run_id, artifact_file, folder)
            return json.loads(Path(local).read_text())

    def run_metrics(self, run_id: str) -> dict[str, float]:
        """The latest value of every metric of a run."""
        return dict(self.client.get_run(run_id).data.metrics)

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """Every logged ``(step, value)`` of one metric, by step."""
        history = self.client.get_metric_history(run_id, key)
        return [(m.step, m.value) for m in sorted(history, key=lambda m: (m.step, m.timestamp))]

    def run_params(self, run_id: str) -> dict[str, str]:
        """The run's params, with the paths ``log_params`` logged as tags put back."""
        data = self.client.get_run(run_id).data
        return {**_path_tags(data.tags), **data.params}

    def run_tags(self, run_id: str) -> dict[str, str]:
        return dict(self.client.get_run(run_id).data.tags)

    def _search(self, experiment_ids: list[str], filter_string: str = "") -> list:
        """Every matching run (all pages), oldest first."""
        runs, token = [], None
        while experiment_ids:
            page = self.client.search_runs(experiment_ids, filter_string=filter_string,
                                           order_by=["attributes.start_time ASC"],
                                           page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                break
        return runs

    def child_runs(self, parent_run_id: str, role: str | None = None) -> list[RunSummary]:
        """Runs whose ``mlflow.parentRunId`` is the given run (with role, only those tagged
        that ``role``), oldest first."""
        experiment_id = self.client.get_run(parent_run_id).info.experiment_id
        search = f"tags.`{PARENT_TAG}` = '{parent_run_id}'"
        if role:
            search += f" and tags.`role` = '{role}'"
        return [_summary(r) for r in self._search([experiment_id], search)]

    def experiment_runs(self, experiment: str, without_tag: str | None = None
                        ) -> list[RunSummary] | None:
        """Every run of an experiment, oldest first, except those carrying without_tag (None if
        the experiment does not exist)."""
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            return None
        return [_summary(r) for r in self._search([found.experiment_id])
                if without_tag is None or without_tag not in r.data.tags]

    def run_summary(self, run_id: str) -> RunSummary:
        """Name and status of one run; ValueError naming the run if it is not here."""
        try:
            return _summary(self.client.get_run(run_id))
        except MlflowException as error:
            raise ValueError(f"run {run_id!r} is not in {self.tracking_uri} "
                             f"({_first_line(error)}): pass run ids shown in the MLflow UI"
                             ) from error

    def run_seconds(self, run_id: str) -> float | None:
        """Wall seconds from a run's start to its end (None while it runs)."""
        info = self.client.get_run(run_id).info
        if info.end_time is None or info.start_time is None:
            return None
        return (info.end_time - info.start_time) / 1000

    def latest_run(self, experiment: str, tag: str, value: str) -> str | None:
        """The newest run of experiment whose tag equals value (None if there is none)."""
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            return None
        runs = self.client.search_runs([found.experiment_id],
                                       filter_string=f"tags.`{tag}` = '{value}'",
                                       order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0].info.run_id if runs else None

    def runs_with_tag(self, experiment: str, tag: str
                      ) -> list[tuple[RunSummary, dict[str, str]]]:
        """Every run of experiment that carries tag (any value), oldest first, with its tags."""
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            return []
        return [(_summary(r), dict(r.data.tags))
                for r in self._search([found.experiment_id], f"tags.`{tag}` LIKE '%'")]

    def tagged_runs(self, tag: str, value: str) -> list[RunSummary]:
        """Runs of every experiment whose tag equals value, oldest first (e.g. the RL runs
        that name a distillation run as their ``source_run``)."""
        experiments = [e.experiment_id for e in self.client.search_experiments()]
        return [_summary(r) for r in self._search(experiments, f"tags.`{tag}` = '{value}'")]

    # -- links into MLflow's UI -----------------------------------------------------------------

    def run_link(self, run_id: str) -> str:
        """The run's page in the training view (``run_url``)."""
        return run_url(self.tracking_uri, self.client.get_run(run_id).info.experiment_id,
                       run_id)

    def artifact_link(self, run_id: str, path: str) -> str:
        """The run's artifact at path in its Artifacts tab (``artifact_url``)."""
        return artifact_url(self.tracking_uri, self.client.get_run(run_id).info.experiment_id,
                            run_id, path)

    def compare_link(self, run_ids: Sequence[str]) -> str:
        """MLflow's compare page for these runs (all of one experiment)."""
        experiment_id = self.client.get_run(run_ids[0]).info.experiment_id
        return compare_url(self.tracking_uri, experiment_id, run_ids)

    def save_runs_view(self, parent_run_id: str, metric_keys: Sequence[str],
                       param_keys: Sequence[str] = (), tag_keys: Sequence[str] = (),
                       role: str | None = None, order_by: str | None = None,
                       charts: RunsCharts | None = None) -> str:
        """Save a runs-table view of a parent run's children as an experiment tag (MLflow's own
        "share view" format) and return its key (``runs_view_url`` opens it).

        The view: those metric, param and tag columns (MLflow shows no metric column until one
        is picked among all of them); only children tagged ``role`` when given; sorted by
        ``order_by`` (a metric, highest first), which also lists the children as rows of their
        own (MLflow nests them, collapsed, under their parent when sorted by start time, and a
        shared view cannot expand them); with charts, its chart view. The key is the parent's
        id and the role, so a rerun overwrites its own view and no other."""
        experiment_id = self.client.get_run(parent_run_id).info.experiment_id
        search = f"tags.`{PARENT_TAG}` = '{parent_run_id}'"
        if role:
            search += f" and tags.`role` = '{role}'"
        state: dict[str, Any] = {
            "searchFilter": search,
            "orderByKey": f"metrics.`{order_by}`" if order_by else "attributes.start_time",
            "orderByAsc": not order_by,
            "runsHiddenMode": "SHOW_ALL",
            "selectedColumns": [*(f"params.`{k}`" for k in param_keys),
                                *(f"metrics.`{k}`" for k in metric_keys),
                                *(f"tags.`{k}`" for k in tag_keys)]}
        state["columnOrder"] = state["selectedColumns"]  # as given, not MLflow's by-name order
        if charts is not None:
            state.update(charts.state())
        key = f"runs-{parent_run_id}" + (f"-{role}" if role else "")
        self.client.set_experiment_tag(experiment_id, SHARED_VIEW_TAG + key, json.dumps(state))
        return key

    def runs_view_link(self, parent_run_id: str, key: str, charts: bool = False) -> str:
        """The address of a view ``save_runs_view`` saved: its table, or its charts."""
        experiment_id = self.client.get_run(parent_run_id).info.experiment_id
        return runs_view_url(self.tracking_uri, experiment_id, key, charts)

    # -- model registry -----------------------------------------------------------------------

    def register_model(self, run_id: str, model_dir: str | Path, name: str,
                       metrics: Mapping[str, float] | None = None,
                       deferrable: bool = False) -> int | None:
        """Upload a ``save_pretrained`` folder as the run's ``student/`` artifacts and register
        it as a new version of ``name`` (created if missing), metrics as version tags.

        Returns the new version number (None when deferred to the spill file)."""
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"register_model: {model_dir} has no config.json; pass the "
                                    "folder written by save_pretrained")
        if deferrable:
            try:
                return self.register_model(run_id, model_dir, name, metrics)
            except Exception as error:
                self._spill_record(run_id, {"kind": "register", "model_dir": str(model_dir),
                                            "name": name, "metrics": dict(metrics or {})},
                                   f"registration of {name} not sent ({_first_line(error)})")
                return None
        self.client.log_artifacts(run_id, str(model_dir), MODEL_ARTIFACT_PATH)
        source = f"{self.client.get_run(run_id).info.artifact_uri}/{MODEL_ARTIFACT_PATH}"
        try:
            self.client.create_registered_model(name)
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        version = self.client.create_model_version(
            name, source, run_id=run_id, tags={k: str(v) for k, v in (metrics or {}).items()},
            description=_metrics_description(metrics or {}))
        return int(version.version)

    def download_model_version(self, name: str, version: int | str,
                               dst: str | Path) -> Path:
        """Download a registered version's files under ``dst``; returns the folder to pass to
        ``from_pretrained`` (``<dst>/student`` for versions made by ``register_model``)."""
        uri = self.client.get_model_version_download_uri(name, str(version))
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=str(dst), tracking_uri=self.tracking_uri)
        return Path(local)

    def latest_model_versions(self, names: str | Iterable[str],
                              download_to: str | Path | None = None) -> list[ModelVersionRef]:
        """The newest version of each registered model, by version number.

        ``names`` is a name prefix (a string) or a list of exact names. With ``download_to``,
        each version is also downloaded under ``<download_to>/<name>/<version>/``, and
        ``local_dir`` is the folder to pass to ``from_pretrained``."""
        refs = []
        for name in self._model_names(names):
            found = self.client.search_model_versions(
                f"name = '{_quote(name)}'", max_results=1, order_by=["version_number DESC"])
            if not found:
                log.warning("registered model %r has no versions; skipped", name)
                continue
            latest = found[0]
            local_dir = None
            if download_to is not None:
                local_dir = self.download_model_version(
                    name, latest.version, Path(download_to) / name / str(latest.version))
            refs.append(ModelVersionRef(name, int(latest.version), latest.run_id, local_dir))
        return refs

    def _model_names(self, names: str | Iterable[str]) -> list[str]:
        if not isinstance(names, str):
            return list(names)
        found, token = [], None
        while True:
            page = self.client.search_registered_models(
                filter_string=f"name LIKE '{_quote(names)}%'", page_token=token)
            found.extend(model.name for model in page)
            token = page.token
            if not token:
                return found


def _summary(run) -> RunSummary:
    return RunSummary(run.info.run_id, run.info.run_name, run.info.status)


def _metrics_description(metrics: Mapping[str, float]) -> str:
    return "; ".join(f"{key} = {value:.4g}" for key, value in sorted(metrics.items()))


def _quote(text: str) -> str:
    return text.replace("'", "\\'")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def sqlite_path(uri: str) -> Path:
    return Path(uri.removeprefix("sqlite:///").split("?")[0]).resolve()


@contextlib.contextmanager
def _mlflow_http_settings() -> Iterator[None]:
    """Lift the short HTTP timeout and retries the tracker set (not those the user set)."""
    lifted = {name: os.environ.pop(name) for name in list(_SET_HERE) if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(lifted)


class TrackingOutage(ConnectionError):
    """The tracking server stopped answering after the run had started: what could not be sent
    waits in the spill folder, and the runs are closed there as an interrupted run is."""

    def __init__(self, uri: str, what: str):
        super().__init__(
            f"MLflow at {uri} stopped answering; {what}. What could not be sent waits in "
            f"{spill_folder()}: start MLflow again, then `distill replay` sends it (or the same "
            "command again sends it first and resumes what did not finish)")


def spill_folder(artifacts_dir: str | Path | None = None) -> Path:
    """Where a tracker writes what it could not send (see ``Tracker.spill_path``)."""
    return artifact_root(artifacts_dir) / "tracking-spill"


def tracking_answers(uri: str) -> bool:
    """Whether the tracking store answers now (a server's /health; a SQLite file opens)."""
    try:
        _check_reachable(uri)
    except ConnectionError:
        return False
    return True


def _check_reachable(uri: str) -> None:
    """Fail fast with a message that names the URI and says what to do."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=HEALTH_TIMEOUT_S):
                return
        except (urllib.error.URLError, OSError) as error:
            raise ConnectionError(
                f"MLflow tracking server {uri} is not reachable ({error}). Start it (e.g. "
                f"`mlflow server --backend-store-uri sqlite:///mlflow.db --port <port>`), fix "
                "MLFLOW_TRACKING_URI, or unset it to log to a local SQLite file") from error
    if uri.startswith("sqlite:///"):
        path = sqlite_path(uri)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.closing(sqlite3.connect(path)) as database:
                database.execute("PRAGMA schema_version")  # reads the header: is it SQLite?
        except (OSError, sqlite3.Error) as error:
            raise ConnectionError(
                f"cannot open the MLflow SQLite database {path} ({error}): check that it is "
                f"a database and {path.parent} is writable, or set MLFLOW_TRACKING_URI to a "
                "server") from error


def _send_status(tracker: Tracker, run_id: str, record: Mapping[str, Any]) -> None:
    tracker.client.set_terminated(run_id, status=record["status"], end_time=record["end_time"])


def _send_tags(tracker: Tracker, run_id: str, record: Mapping[str, Any]) -> None:
    for key, value in record["tags"].items():
        tracker.client.set_tag(run_id, key, value)


def _send_dict(tracker: Tracker, run_id: str, record: Mapping[str, Any]) -> None:
    tracker.client.log_dict(run_id, record["dictionary"], record["artifact_file"])


def _send_text(tracker: Tracker, run_id: str, record: Mapping[str, Any]) -> None:
    tracker.client.log_text(run_id, record["text"], record["artifact_file"])


def _send_table(tracker: Tracker, run_id: str, record: Mapping[str, Any]) -> None:
    tracker.client.log_table(run_id, record["table"], record["artifact_file"])


def _send_registration(tracker: Tracker, run_id: str, record: Mapping[str, Any]) -> None:
    tracker.register_model(run_id, record["model_dir"], record["name"], record["metrics"])


# What a run's end may defer to the spill file, by record kind (metrics have their own path).
_SENDERS = {"status": _send_status, "tags": _send_tags, "dict": _send_dict, "text": _send_text,
            "table": _send_table, "register": _send_registration}
