"""Local Prefect and MLflow servers on one machine: ``up``, ``down`` and ``status``.

``up(state_dir)`` starts a Prefect server (SQLite database ``<state_dir>/prefect.db``) and an
MLflow tracking server (``sqlite:///<state_dir>/mlflow.db``, artifacts served from
``<state_dir>/mlflow-artifacts``) as background processes that outlive the caller, each in its
own session so that ``down`` can stop it with every child it spawned (uvicorn workers). Their
pids go to ``<state_dir>/services.json`` and their output to ``<state_dir>/logs/<name>.log``.
``up`` returns once both answer their health check, with the URLs to export::

    PREFECT_API_URL=http://127.0.0.1:4200/api   MLFLOW_TRACKING_URI=http://127.0.0.1:5000

With ``postgres=DSN`` (``distill up --postgres DSN`` or ``$DISTILL_LAB_POSTGRES``) the two servers
and the rollout store keep their state on that PostgreSQL server instead, one database each,
named after the DSN's database: ``<db>_prefect`` (Prefect, driver asyncpg), ``<db>_mlflow``
(MLflow's backend store, psycopg 3) and ``<db>_store`` (the rollout store, psycopg 3; its URL is
one more variable to export, ``DISTILL_LAB_STORE_URL``). ``up`` checks that the DSN connects and
creates the databases that are missing before it starts anything; a DSN that does not connect is
one error naming host, port, database and user, never the password.

Plain functions: a CLI calls them. A team server is infra/docker-compose.yml instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.pool import NullPool

from tasks.files import atomic_write_text
from tasks.store import DEFAULT_URL_ENV
from tasks.ui_links import home_url

log = logging.getLogger(__name__)

STATE_FILE = "services.json"
# A fresh Prefect server runs its database migrations first: 16-30 s on 2 cores, more on a
# loaded machine. MLflow (also migrating a new SQLite file) is quicker but gets the same room.
STARTUP_TIMEOUT_S = 120.0
STOP_GRACE_S = 10.0
_POLL_S = 0.5
_LOG_TAIL_LINES = 15


@dataclass(frozen=True)
class Service:
    """One server to start: its command, environment, port and health-check path."""

    name: str
    argv: list[str]
    env: dict[str, str]
    host: str
    port: int
    health_path: str
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def prefect_service(state_dir: Path, port: int, host: str,
                    database_url: str | None = None) -> Service:
    """database_url: a ``postgresql+asyncpg://`` URL; default SQLite ``<state_dir>/prefect.db``."""
    env = dict(os.environ)
    # The client-side settings of a caller's environment must not steer the server: its UI
    # would call a foreign API, and the deprecated alias would compete with the database URL.
    for name in ("PREFECT_API_URL", "PREFECT_API_DATABASE_CONNECTION_URL"):
        env.pop(name, None)
    env.update(PREFECT_HOME=str(state_dir / "prefect-home"),
               # prefect 3.9 reads PREFECT_SERVER_DATABASE_CONNECTION_URL (the old
               # PREFECT_API_DATABASE_CONNECTION_URL is an accepted alias).
               PREFECT_SERVER_DATABASE_CONNECTION_URL=(
                   database_url or f"sqlite+aiosqlite:///{state_dir / 'prefect.db'}"))
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The UI's pages call the API at PREFECT_SERVER_UI_API_URL, which Prefect derives from the
    # host/port *settings*, not from --port: on any port but 4200 the UI would call a foreign
    # (or no) server and show "Can't connect to Server API".
    env["PREFECT_SERVER_UI_API_URL"] = f"http://{host}:{port}/api"
    argv = [sys.executable, "-m", "prefect", "server", "start", "--host", host,
            "--port", str(port)]
    return Service("prefect", argv, env, host, port, "/api/health",
                   state_dir / "logs" / "prefect.log")


def mlflow_service(state_dir: Path, port: int, host: str,
                   backend_store_uri: str | None = None) -> Service:
    """backend_store_uri: a ``postgresql+psycopg://`` URL; default SQLite
    ``<state_dir>/mlflow.db``."""
    env = dict(os.environ)
    # MLflow 3's job runner (huey consumers) is not needed for tracking and costs start-up time.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    # Through the environment, not argv: a password stays out of `ps` and of the log's header.
    env["MLFLOW_BACKEND_STORE_URI"] = backend_store_uri or f"sqlite:///{state_dir / 'mlflow.db'}"
    argv = [sys.executable, "-m", "mlflow", "server",
            "--artifacts-destination", str(state_dir / "mlflow-artifacts"),
            "--host", host, "--port", str(port), "--workers", "1"]
    return Service("mlflow", argv, env, host, port, "/health", state_dir / "logs" / "mlflow.log")


def up(state_dir: Path, prefect_port: int = 4200, mlflow_port: int = 5000,
       host: str = "127.0.0.1", timeout_s: float = STARTUP_TIMEOUT_S,
       postgres: str | None = None) -> dict:
    """Start the Prefect and MLflow servers in the background and wait until both are healthy.

    postgres: a DSN ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE``; both servers and the
    rollout store then keep their state there (see the module docstring), else in SQLite files
    of ``state_dir``.

    Returns their URLs (``prefect_ui``, ``prefect_api``, ``mlflow_ui``; ``mlflow_home``, its
    experiment list in the training view), the environment to export (``env``), pids, log
    files and ``database`` (where the state lives, password hidden). When the servers of
    ``state_dir`` already run, reports them (``already_running: True``) and starts nothing.
    Raises before starting anything when a port is taken (``RuntimeError``) or the DSN does
    not connect (``ConnectionError``), and after stopping both servers when one dies or stays
    unhealthy for ``timeout_s`` (the message names its log file and quotes its last lines).
    """
    state_dir = Path(state_dir).resolve()
    database = Postgres.parse(postgres) if postgres else None
    running = status(state_dir)
    if running["running"]:
        return _already_running(state_dir, running, prefect_port, mlflow_port, database)
    if running["services"]:  # some died: stop what is left, then start afresh
        down(state_dir)
    services = [prefect_service(state_dir, prefect_port, host,
                                database and database.prefect_url),
                mlflow_service(state_dir, mlflow_port, host, database and database.mlflow_url)]
    _check_ports_free(services)
    if database is not None:
        prepare_postgres(database)
    (state_dir / "logs").mkdir(parents=True, exist_ok=True)
    (state_dir / "mlflow-artifacts").mkdir(exist_ok=True)
    described = str(database) if database else "sqlite"
    try:
        started = {}
        for service in services:
            started[service.name] = _spawn(service)
            # written after each start, so that `down` can stop a half start
            _write_state(state_dir, host, services, started, described)
        wait_until_healthy(services, started, timeout_s)
    except BaseException:  # also Ctrl-C: never leave orphan servers behind
        down(state_dir)
        raise
    return {**_urls(host, prefect_port, mlflow_port, database),
            **_report(_read_state(state_dir)["services"]), "database": described,
            "already_running": False}


def _already_running(state_dir: Path, running: dict, prefect_port: int, mlflow_port: int,
                     database: Postgres | None) -> dict:
    """up's report when the servers of state_dir run: warn where they differ from the request."""
    ports = {name: s["port"] for name, s in running["services"].items()}
    if ports != {"prefect": prefect_port, "mlflow": mlflow_port}:
        log.warning("services of %s already run on other ports %s; `down` first to move them",
                    state_dir, ports)
    requested = str(database) if database else "sqlite"
    if database is None and running["database"] != "sqlite":
        log.warning("services of %s run on %s: give its DSN again (--postgres or $%s) for the "
                    "rollout store's %s", state_dir, running["database"], POSTGRES_ENV,
                    DEFAULT_URL_ENV)
    elif running["database"] != requested:
        log.warning("services of %s already run on %s, not on %s; `down` first to move them",
                    state_dir, running["database"], requested)
        database = None  # its store URL would not match the running servers
    log.info("services of %s already running; nothing started", state_dir)
    urls = running["urls"]
    if database is not None:
        urls = {**urls, "env": {**urls["env"], DEFAULT_URL_ENV: database.store_url}}
    return {**urls, **_report(running["services"]), "database": running["database"],
            "already_running": True}


def down(state_dir: Path, grace_s: float = STOP_GRACE_S) -> list[str]:
    """Stop the servers that ``up`` started (SIGTERM to each process group, SIGKILL after
    ``grace_s``) and remove services.json; first a ``distill serve`` that serves their Prefect
    server (``serving``), which would otherwise lose its server under it. Returns one line per
    process stopped (or left running, saying why); an empty list means nothing was running."""
    state_dir = Path(state_dir).resolve()
    state = _read_state(state_dir)
    lines = _stop_serve(state_dir, state, grace_s)
    if state is None:
        log.info("no services running for %s (no %s)", state_dir, STATE_FILE)
        return lines
    stopped = []
    for name, entry in state["services"].items():
        if _stop_group(entry["pid"], grace_s):
            stopped.append(f"{name} (pid {entry['pid']}, {entry['url']})")
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    if not stopped:
        log.info("services of %s had already exited; removed the stale %s", state_dir, STATE_FILE)
    return lines + stopped


# ----------------------------------------------------------------------------- distill serve

SERVE_FILE = "serve.json"


@contextlib.contextmanager
def serving(state_dir: Path, api_url: str):
    """Record this process as the ``distill serve`` of state_dir (pid and the Prefect API it
    serves, in serve.json) for the block, so that ``status`` shows it and ``down`` stops it
    before the server it needs."""
    path = Path(state_dir).resolve() / SERVE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = _read_serve(path.parent)
    if previous is not None and previous["pid"] != os.getpid() and _pid_alive(previous["pid"]):
        raise RuntimeError(f"distill serve already runs (pid {previous['pid']}, serving "
                           f"{previous['api_url']}): one serve per artifacts folder; stop it "
                           f"first (kill {previous['pid']}, or `distill down`)")
    atomic_write_text(path, json.dumps({"pid": os.getpid(), "api_url": api_url,
                                        "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
    try:
        yield
    finally:
        current = _read_serve(path.parent)
        if current is not None and current["pid"] == os.getpid():
            path.unlink(missing_ok=True)


def _read_serve(state_dir: Path) -> dict | None:
    try:
        return json.loads((state_dir / SERVE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def serve_status(state_dir: Path) -> dict | None:
    """The recorded ``distill serve``: pid, api_url, started, alive; None when none is."""
    found = _read_serve(Path(state_dir).resolve())
    return None if found is None else {**found, "alive": _pid_alive(found["pid"])}


def _stop_serve(state_dir: Path, state: dict | None, grace_s: float) -> list[str]:
    """SIGTERM the recorded serve if it serves these servers' Prefect API (it stops as on
    Ctrl-C, leaving every deployment and schedule as it was); otherwise say it goes on."""
    found = serve_status(state_dir)
    if found is None or not found["alive"]:
        (state_dir / SERVE_FILE).unlink(missing_ok=True)
        return []
    ours = state is not None and "prefect" in state["services"] and found["api_url"].rstrip(
        "/") == f"{state['services']['prefect']['url']}/api"
    if not ours:
        return [f"distill serve (pid {found['pid']}) left running: it serves "
                f"{found['api_url']}, not these servers"]
    flow_runs = _descendants(found["pid"])  # a flow run in progress is serve's subprocess
    os.kill(found["pid"], signal.SIGTERM)
    deadline = time.monotonic() + grace_s + 20  # it stops its flow-run subprocesses first
    while _pid_alive(found["pid"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _pid_alive(found["pid"]):
        os.kill(found["pid"], signal.SIGKILL)
    (state_dir / SERVE_FILE).unlink(missing_ok=True)
    left = _stop_processes(flow_runs, grace_s)  # what serve left behind would lose its server
    return [f"distill serve (pid {found['pid']}, deployments of {found['api_url']}; their "
            "schedules stay as they were)"] + (
        [f"{len(left)} process(es) serve left running (a flow run in progress: pid "
         f"{', '.join(map(str, left))})"] if left else [])


def _descendants(pid: int) -> list[int]:
    """Every process below pid (children, their children, ...), read from /proc (Linux)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # the command name may hold spaces and parentheses: the fields follow the last ')'
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, frontier = [], [pid]
    while frontier:
        children = parents.get(frontier.pop(), [])
        found += children
        frontier += children
    return found


def _running(pid: int) -> bool:
    """True while pid runs (a zombie, exited but not yet reaped, does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return _pid_alive(pid)  # no /proc: fall back to signal 0
    return state not in ("Z", "X")


def _stop_processes(pids: list[int], grace_s: float) -> list[int]:
    """SIGTERM the pids still running, SIGKILL those left after grace_s; the ones it stopped."""
    running = [pid for pid in pids if _running(pid)]
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 30.0)):
        alive = [pid for pid in running if _running(pid)]
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while any(_running(pid) for pid in alive) and time.monotonic() < deadline:
            time.sleep(0.1)
    return running


def _pid_alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap our own exited child, else it counts as alive
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def describe_status(state_dir: Path) -> list[str]:
    """``status`` as lines a person reads: each server with its state, pid, address and log;
    the serve process; where the state lives; the variables to export."""
    state_dir = Path(state_dir).resolve()
    found, serve = status(state_dir), serve_status(state_dir)
    lines = []
    for name, entry in found["services"].items():
        label = {"prefect": "Prefect", "mlflow": "MLflow"}.get(name, name)
        lines.append(f"{label + ':':9} {'running' if entry['alive'] else 'NOT running':12} pid "
                     f"{entry['pid']:<7} {entry['url']}  (log {entry['log']})")
    if serve is not None:
        lines.append(f"{'serve:':9} {'running' if serve['alive'] else 'NOT running':12} pid "
                     f"{serve['pid']:<7} deployments of {serve['api_url']} (since "
                     f"{serve['started']})")
    if not lines:
        return [f"nothing running for {state_dir} (start the servers with `distill up`)"]
    if found["services"]:
        lines.append(f"{'State:':9} {found['database']} ({state_dir})")
    if found["running"]:
        lines.append("export " + " ".join(f"{k}={v}" for k, v in found["urls"]["env"].items()))
    elif found["services"]:
        lines.append("some servers are not running: `distill down`, then `distill up`")
    return lines


def status(state_dir: Path) -> dict:
    """``running`` (every server recorded in services.json is alive), ``services`` (name ->
    pid, url, log, alive), ``urls`` and ``database`` ("sqlite", or the PostgreSQL DSN with its
    password hidden); ``services`` is empty when nothing was started."""
    state = _read_state(Path(state_dir).resolve())
    if state is None:
        return {"running": False, "services": {}, "urls": {}, "database": None}
    services = {name: {**entry, "alive": _group_alive(entry["pid"])}
                for name, entry in state["services"].items()}
    complete = set(services) == {"prefect", "mlflow"}  # else `up` was cut short
    running = complete and all(s["alive"] for s in services.values())
    urls = (_urls(state["host"], services["prefect"]["port"], services["mlflow"]["port"])
            if complete else {})
    return {"running": running, "services": services, "urls": urls,
            "database": state.get("database", "sqlite")}


def wait_until_healthy(services: list[Service], processes: dict[str, subprocess.Popen],
                       timeout_s: float) -> None:
    """Poll each service's health URL until all answer 200; raise ``RuntimeError`` naming the
    log file if a process exits or ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    waiting = list(services)
    while waiting:
        for service in list(waiting):
            code = processes[service.name].poll()
            if code is not None:
                raise RuntimeError(f"the {service.name} server exited with code {code} while "
                                   f"starting; see {service.log_path}:\n{_tail(service.log_path)}")
            if _healthy(service.url + service.health_path):
                waiting.remove(service)
        if waiting and time.monotonic() > deadline:
            service = waiting[0]
            raise RuntimeError(
                f"the {service.name} server did not answer {service.url}{service.health_path} "
                f"within {timeout_s:g} s; see {service.log_path}:\n{_tail(service.log_path)}")
        if waiting:
            time.sleep(_POLL_S)


# ----------------------------------------------------------------------------- helpers

def _urls(host: str, prefect_port: int, mlflow_port: int,
          database: Postgres | None = None) -> dict:
    prefect, mlflow = f"http://{host}:{prefect_port}", f"http://{host}:{mlflow_port}"
    env = {"PREFECT_API_URL": f"{prefect}/api", "MLFLOW_TRACKING_URI": mlflow}
    if database is not None:
        env[DEFAULT_URL_ENV] = database.store_url
    return {"prefect_ui": prefect, "prefect_api": f"{prefect}/api", "mlflow_ui": mlflow,
            "mlflow_home": home_url(mlflow), "env": env}


def _report(services: dict) -> dict:
    return {"pids": {name: s["pid"] for name, s in services.items()},
            "logs": {name: s["log"] for name, s in services.items()}}


def _check_ports_free(services: list[Service]) -> None:
    for service in services:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # SO_REUSEADDR as the servers set it: a port in TIME_WAIT after `down` is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((service.host, service.port))
            except OSError as error:
                option = f"--{service.name}-port"
                raise RuntimeError(
                    f"port {service.port} on {service.host} (for the {service.name} server) is "
                    f"already in use ({error.strerror}); nothing was started. Stop whatever "
                    f"listens there (`lsof -i :{service.port}`) or pick another port: "
                    f"`distill up {option} <free port>`") from error


def _spawn(service: Service) -> subprocess.Popen:
    with open(service.log_path, "ab") as log_file:
        log_file.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} "
                       f"{' '.join(service.argv)}\n".encode())
        log_file.flush()
        # A new session: the server outlives this process and its group can be signalled whole.
        return subprocess.Popen(service.argv, env=service.env, stdin=subprocess.DEVNULL,
                                stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _write_state(state_dir: Path, host: str, services: list[Service],
                 started: dict[str, subprocess.Popen], database: str) -> None:
    """database: where the state lives, as status reports it (never with a password)."""
    state = {"host": host, "database": database, "services": {
        s.name: {"pid": started[s.name].pid, "port": s.port, "url": s.url,
                 "log": str(s.log_path)}
        for s in services if s.name in started}}
    atomic_write_text(state_dir / STATE_FILE, json.dumps(state, indent=2))


def _read_state(state_dir: Path) -> dict | None:
    path = state_dir / STATE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise RuntimeError(f"{path} is not valid JSON ({error}); stop the servers by hand if "
                           "they still run, then delete the file") from error


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group that ``_spawn`` started (pgid == leader pid) lives."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pgid, os.WNOHANG)  # reap our own exited child, else it counts as alive
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # the pid now belongs to someone else's process group
        return False
    return True


def _stop_group(pgid: int, grace_s: float) -> bool:
    """SIGTERM the process group, SIGKILL it after ``grace_s``; False if it had already gone."""
    if not _group_alive(pgid):
        return False
    # A killed process still has to be scheduled to exit: at load 30 on 2 cores a niced
    # server's group took over 5 s to go.
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 30.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not _group_alive(pgid):
                return True
            time.sleep(0.1)
    raise RuntimeError(f"process group {pgid} survived SIGKILL; check `ps -g {pgid}`")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as error:
        return f"(cannot read the log: {error})"
    return "\n".join(f"    {line}" for line in lines[-_LOG_TAIL_LINES:])


# ----------------------------------------------------------------------------- PostgreSQL

POSTGRES_ENV = "DISTILL_LAB_POSTGRES"
CONNECT_TIMEOUT_S = 5
# PostgreSQL truncates identifiers to 63 bytes; "_prefect" is the longest suffix added.
_MAX_BASE_NAME = 63 - len("_prefect")
_DSN_FORM = "postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"


@dataclass(frozen=True)
class Postgres:
    """A PostgreSQL server for the stack, from a DSN whose database names the set: Prefect,
    MLflow and the rollout store each get their own database beside it, ``<db>_prefect``,
    ``<db>_mlflow`` and ``<db>_store`` (Prefect and MLflow each keep an ``alembic_version``
    table, so they cannot share one). ``str()`` hides the password."""

    dsn: URL

    @classmethod
    def parse(cls, dsn: str) -> Postgres:
        """ValueError, without echoing the DSN (it may hold a password), unless it is a
        PostgreSQL URL that names a database."""
        try:
            url = make_url(dsn.strip())
        except ArgumentError:
            raise ValueError(f"the PostgreSQL DSN is not a URL: write it as {_DSN_FORM}") from None
        if url.drivername.split("+")[0] not in ("postgresql", "postgres"):
            raise ValueError(f"the PostgreSQL DSN starts with {url.drivername}://, not "
                             f"postgresql://: write it as {_DSN_FORM}")
        if not url.database:
            raise ValueError(f"the PostgreSQL DSN names no database: write it as {_DSN_FORM}; "
                             "the databases of Prefect, MLflow and the store are named after it")
        if len(url.database.encode()) > _MAX_BASE_NAME:
            raise ValueError(f"the PostgreSQL database name {url.database!r} is longer than "
                             f"{_MAX_BASE_NAME} bytes: PostgreSQL would cut the names made from it")
        return cls(url.set(drivername="postgresql"))

    def __str__(self) -> str:
        return self.dsn.render_as_string(hide_password=True)

    @property
    def where(self) -> str:
        """Host, port, database and user, for messages: never the password."""
        return (f"host {self.dsn.host or 'localhost'}, port {self.dsn.port or 5432}, database "
                f"{self.dsn.database!r}, user {self.dsn.username or '(default)'!r}")

    def database(self, service: str) -> str:
        return f"{self.dsn.database}_{service}"

    def url(self, service: str, driver: str) -> str:
        """The URL of service's database with a SQLAlchemy driver, password included."""
        url = self.dsn.set(drivername=f"postgresql+{driver}", database=self.database(service))
        return url.render_as_string(hide_password=False)

    @property
    def prefect_url(self) -> str:  # asyncpg: the async driver Prefect's server ships with
        return self.url("prefect", "asyncpg")

    @property
    def mlflow_url(self) -> str:  # MLflow's SQLAlchemy store supports psycopg 3 (mlflow >= 3)
        return self.url("mlflow", "psycopg")

    @property
    def store_url(self) -> str:
        return self.url("store", "psycopg")


POSTGRES_SERVICES = ("prefect", "mlflow", "store")


def prepare_postgres(database: Postgres, timeout_s: float = CONNECT_TIMEOUT_S) -> list[str]:
    """Connect with the DSN and create the databases of POSTGRES_SERVICES that are missing;
    returns the names created. ConnectionError in one line naming host, port, database and user
    (never the password) when it cannot connect or may not create them."""
    engine = _admin_engine(database, timeout_s)
    wanted = [database.database(service) for service in POSTGRES_SERVICES]
    created = []
    try:
        with engine.connect() as connection:
            existing = set(connection.scalars(
                text("SELECT datname FROM pg_database WHERE datname = ANY(:names)"),
                {"names": wanted}))
            for name in wanted:
                if name not in existing:
                    quoted = engine.dialect.identifier_preparer.quote(name)
                    connection.execute(text(f"CREATE DATABASE {quoted}"))
                    created.append(name)
    except DBAPIError as error:
        missing = [name for name in wanted if name not in created]
        raise ConnectionError(_postgres_problem(database, error, missing)) from error
    finally:
        engine.dispose()
    if created:
        log.info("created PostgreSQL databases %s at %s", ", ".join(created), database.where)
    return created


def _admin_engine(database: Postgres, timeout_s: float):
    try:
        return create_engine(database.dsn.set(drivername="postgresql+psycopg"),
                             poolclass=NullPool, isolation_level="AUTOCOMMIT",
                             connect_args={"connect_timeout": max(1, round(timeout_s))})
    except ImportError as error:
        raise ImportError("PostgreSQL needs the psycopg driver: pip install "
                          "'distill-lab[team]' (or 'psycopg[binary]')") from error


def _postgres_problem(database: Postgres, error: DBAPIError, missing: list[str]) -> str:
    """One line: what failed, where, and what to do; the server's reason without the
    connection preamble that repeats host and port, and without the password."""
    reason = (str(error.orig).strip().splitlines() or ["unknown error"])[0]
    reason = re.sub(r'^(connection failed: )?(connection to server (at|on) "[^"]*"'
                    r'( \([^)]*\))?(, port \d+)? failed: )?', "", reason)
    reason = re.sub(r"^(FATAL|ERROR):\s+", "", reason)
    if database.dsn.password:
        reason = reason.replace(database.dsn.password, "***")
    if getattr(error.orig, "sqlstate", None) == "42501":  # insufficient_privilege
        return (f"PostgreSQL at {database.where} may not create the databases "
                f"{', '.join(missing)} ({reason}): create them (createdb, as a user who may) or "
                "grant CREATEDB; nothing was started")
    return (f"cannot connect to PostgreSQL at {database.where}: {reason}; check the DSN and "
            "that the server accepts connections from this machine. Nothing was started")


# ----------------------------------------------------------------------------- a temporary server

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: the kernel sends SIGTERM when the parent dies, however it dies
    (kill -9 included), so a temporary server never outlives the command that started it."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@contextlib.contextmanager
def temporary_prefect_server(timeout_s: float | None = None):
    """A Prefect API server (no UI) on a free loopback port for this process's flows, the way
    Prefect's own ephemeral server runs, except that it dies with its parent. Sets
    PREFECT_API_URL for the block; one process at a time sets up the database (migrations)."""
    from prefect.settings import get_current_settings

    from tasks.artifacts import build_lock

    timeout_s = timeout_s or float(os.environ.get(
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", STARTUP_TIMEOUT_S))
    port = free_port()
    env = {**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True),
           "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
           "PREFECT__SERVER_FINAL": "1"}
    env.pop("PREFECT_API_URL", None)
    argv = [sys.executable, "-m", "uvicorn", "--factory",
            "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "error", "--lifespan", "on"]
    home = Path(get_current_settings().home)
    with build_lock(home / ".server-setup.lock"):
        process = subprocess.Popen(argv, env=env, preexec_fn=_die_with_parent)  # noqa: PLW1509
        try:
            _wait_for(f"http://127.0.0.1:{port}/api/health", process, timeout_s)
        except BaseException:
            _stop(process)
            raise
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
    try:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: os.environ["PREFECT_API_URL"]}):
            yield os.environ["PREFECT_API_URL"]
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
        _stop(process)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for(url: str, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the temporary Prefect server exited with code "
                               f"{process.returncode} before answering on {url}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(_POLL_S)
    raise RuntimeError(f"the temporary Prefect server did not answer on {url} within "
                       f"{timeout_s:.0f} s; raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS "
                       "or start one with `distill up`")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
