"""The team stack on a real PostgreSQL server that this module starts and stops itself (initdb
into a temporary folder, pg_ctl on a free loopback port, as the `postgres` OS user when run as
root): `up` with a DSN keeps Prefect, MLflow and the rollout store there; two `distill run`
processes write at once and nothing is lost; a DSN that does not connect is one error that never
shows the password; writers opening a new store at once do not collide."""

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from flows.cli import main
from tasks.data import write_problems
from tasks.services import Postgres, down, status, up
from tasks.store import RolloutStore
from tasks.tracking import Tracker

ROOT = Path(__file__).resolve().parents[2]
USER, PASSWORD, DATABASE = "distill", "s3cret:pw/@%", "distill"  # URL-special on purpose
STEPS, EVAL_LIMIT, EVAL_N = 3, 4, 2
STREAMED = ("train/loss", "train/response_length", "train/response_length_max",
            "train/truncation_rate", "train/entropy")

pytestmark = pytest.mark.postgres


@dataclass(frozen=True)
class Cluster:
    """A running PostgreSQL server on a loopback port, with a user `distill` and a password."""

    port: int
    bin_dir: Path

    @property
    def dsn(self) -> str:
        return self.dsn_for()

    def dsn_for(self, database: str = DATABASE, password: str = PASSWORD,
                driver: str = "postgresql", user: str = USER) -> str:
        from sqlalchemy.engine import URL

        return URL.create(driver, user, password, "127.0.0.1", self.port,
                          database).render_as_string(hide_password=False)

    def query(self, database: str, sql: str) -> list[tuple]:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=USER, password=PASSWORD,
                             dbname=database, autocommit=True) as connection:
            cursor = connection.execute(sql)
            return cursor.fetchall() if cursor.description else []

    def dump(self, database: str) -> str:
        """Everything a database holds, as pg_dump's SQL text."""
        return subprocess.run([str(self.bin_dir / "pg_dump"), "-h", "127.0.0.1", "-p",
                               str(self.port), "-U", USER, database], check=True, text=True,
                              capture_output=True, env={**os.environ, "PGPASSWORD": PASSWORD},
                              timeout=120).stdout


def _postgres_bin() -> Path | None:
    """The folder of initdb, pg_ctl and pg_dump: initdb's on PATH (links followed, to reach its
    siblings), else Debian's newest /usr/lib/postgresql/*/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    folders = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                     key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    return folders[-1].parent if folders else None


def _as_server_user() -> list[str]:
    """initdb and postgres refuse to run as root: there, run them as the `postgres` OS user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no `postgres` OS user to run PostgreSQL as "
                    "(initdb refuses root)")
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("running as root without `runuser` to start PostgreSQL as `postgres`")
    return [runuser, "-u", "postgres", "--"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """A throwaway PostgreSQL cluster on a free loopback port, stopped and deleted afterwards."""
    pytest.importorskip("psycopg", reason="PostgreSQL needs psycopg: pip install "
                                          "'distill-lab[team]' (make setup installs it)")
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql "
                    "(.ci/run does where it is root)")
    as_server = _as_server_user()
    # Not pytest's tmp_path: the `postgres` user must be able to reach the folder.
    folder = Path(tempfile.mkdtemp(prefix="distill-lab-pg-"))
    (folder / "password").write_text(PASSWORD + "\n")
    (folder / "socket").mkdir()
    if as_server:
        for path in (folder, folder / "password", folder / "socket"):
            shutil.chown(path, "postgres")
    port = _free_port()
    data = folder / "data"
    run = {"check": True, "capture_output": True, "text": True, "cwd": folder, "timeout": 120}
    try:
        subprocess.run([*as_server, str(bin_dir / "initdb"), "-D", str(data), "-U", USER,
                        f"--pwfile={folder / 'password'}", "--auth=scram-sha-256", "--no-sync",
                        "--encoding=UTF8", "--no-locale"], **run)
        # fsync off: a test cluster need not survive a power cut (it is stopped with -m
        # immediate and deleted), and 2 loaded cores are slow.
        options = (f"-p {port} -k {folder / 'socket'} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        subprocess.run([*as_server, str(bin_dir / "pg_ctl"), "-D", str(data), "-l",
                        str(folder / "server.log"), "-w", "-t", "60", "-o", options, "start"],
                       **run)
    except subprocess.CalledProcessError as error:
        log = (folder / "server.log").read_text() if (folder / "server.log").exists() else ""
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(f"could not start PostgreSQL: {error.stderr}\n{log}") from error
    cluster = Cluster(port, bin_dir)
    try:
        cluster.query("postgres", f"CREATE DATABASE {DATABASE}")
        yield cluster
    finally:
        subprocess.run([*as_server, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                        "-w", "stop"], capture_output=True, cwd=folder, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


# ----------------------------------------------------------------------------- a bad DSN


@pytest.mark.parametrize("problem", ["wrong password", "nothing listens", "no such database"])
def test_a_dsn_that_does_not_connect_is_one_error_before_anything_starts(cluster, tmp_path,
                                                                         problem, capsys,
                                                                         monkeypatch):
    closed = _free_port()
    dsn, where, reason = {
        "wrong password": (cluster.dsn_for(password="not-" + PASSWORD),
                           f"port {cluster.port}, database 'distill'", "password authentication"),
        "nothing listens": (cluster.dsn.replace(f":{cluster.port}/", f":{closed}/"),
                            f"port {closed}, database 'distill'", "Connection refused"),
        "no such database": (cluster.dsn_for(database="nope"), f"port {cluster.port}, "
                             "database 'nope'", 'database "nope" does not exist'),
    }[problem]
    with pytest.raises(ConnectionError) as raised:
        up(tmp_path / "services", prefect_port=_free_port(), mlflow_port=_free_port(),
           postgres=dsn)
    message = str(raised.value)
    assert f"cannot connect to PostgreSQL at host 127.0.0.1, {where}, user 'distill'" in message
    assert reason in message and "Nothing was started" in message
    assert PASSWORD not in message and "s3cret" not in message
    assert not (tmp_path / "services").exists()  # no state, no logs, no servers

    monkeypatch.setenv("DISTILL_LAB_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("DISTILL_LAB_POSTGRES", dsn)  # the variable, as a team would set it
    assert main(["up"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("distill up: cannot connect to PostgreSQL at host 127.0.0.1")
    assert len(error.splitlines()) == 1 and "s3cret" not in error
    assert status(tmp_path / "artifacts" / "services")["services"] == {}


def test_a_user_who_may_not_create_the_databases_is_told_which_to_create(cluster, tmp_path):
    cluster.query("postgres", "CREATE ROLE reader LOGIN PASSWORD 'r3ader' NOCREATEDB")
    cluster.query("postgres", "CREATE DATABASE lab")
    with pytest.raises(ConnectionError) as raised:
        up(tmp_path, prefect_port=_free_port(), mlflow_port=_free_port(),
           postgres=cluster.dsn_for(database="lab", user="reader", password="r3ader"))
    message = str(raised.value)
    assert "user 'reader' may not create the databases lab_prefect, lab_mlflow, lab_store" \
        in message and "grant CREATEDB" in message
    assert "r3ader" not in message and not any(tmp_path.iterdir())


def test_a_dsn_that_is_no_postgresql_url_is_refused_without_echoing_it():
    for dsn, expected in (("host=db password=s3cret", "not a URL"),
                          ("mysql://u:s3cret@db/x", "starts with mysql://"),
                          ("postgresql://u:s3cret@db", "names no database")):
        with pytest.raises(ValueError, match=expected) as raised:
            Postgres.parse(dsn)
        assert "s3cret" not in str(raised.value)


# ----------------------------------------------------------------------------- the store


def test_writers_opening_a_new_store_at_once_do_not_collide(cluster):
    cluster.query("postgres", "CREATE DATABASE store_race")
    url = cluster.dsn_for(database="store_race", driver="postgresql+psycopg")
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def open_store() -> None:
        start.wait()
        try:
            RolloutStore(url).close()
        except BaseException as error:  # collected: the assertion below names it
            errors.append(error)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert cluster.query("store_race", "SELECT version FROM schema_version") == [(1,)]
    assert "s3cret" not in RolloutStore(url).url


# ----------------------------------------------------------------------------- the micro-study


def _config(folder: Path, inputs: dict, objective: str) -> Path:
    settings = {"name": "pg-study", "objective": objective, "train_size": 16, "steps": STEPS,
                "batch_size": 4, "max_new_tokens": 8, "eval_n": EVAL_N, "eval_ks": [1, 2],
                "eval_limit": EVAL_LIMIT, "eval_max_new_tokens": 8, **inputs}
    path = folder / f"{objective}.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def _writer(config: Path, env: dict, artifacts: Path) -> subprocess.Popen:
    """`distill run CONFIG` in its own process and artifact folder, as on its own machine."""
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", str(config)],
        env={**env, "DISTILL_LAB_ARTIFACTS": str(artifacts)}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _flow_runs(api_url: str) -> list[tuple[str, str]]:
    """(flow name, state type) of every flow run the Prefect server knows."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        flows = {flow.id: flow.name for flow in client.read_flows()}
        return sorted((flows[run.flow_id], run.state_type.value)
                      for run in client.read_flow_runs())


@pytest.mark.slow
def test_two_writers_at_once_lose_nothing_with_everything_on_postgresql(
        cluster, tmp_path, tiny_pair, tiny_problems):
    started = time.monotonic()
    services = up(tmp_path / "services", prefect_port=_free_port(), mlflow_port=_free_port(),
                  postgres=cluster.dsn)
    try:
        assert services["database"] == f"postgresql://distill:***@127.0.0.1:{cluster.port}/distill"
        store_url = services["env"]["DISTILL_LAB_STORE_URL"]
        assert store_url.startswith("postgresql+psycopg://") and store_url.endswith("_store")
        inputs = {"teacher": str(tiny_pair[0]), "student": str(tiny_pair[1]),
                  "train_problems": str(write_problems(tiny_problems["train"][:32],
                                                       tmp_path / "train.jsonl")),
                  "held_out_problems": str(write_problems(tiny_problems["held_out"],
                                                          tmp_path / "held_out.jsonl")),
                  "benchmarks": [str(write_problems(tiny_problems["test"][:4],
                                                    tmp_path / "tiny.jsonl"))]}
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, **services["env"], "PYTHONPATH": path}
        writers = {objective: _writer(_config(tmp_path, inputs, objective), env,
                                      tmp_path / f"artifacts-{objective}")
                   for objective in ("dagger", "opd")}
        for objective, writer in writers.items():
            output = writer.communicate(timeout=300)[0]
            assert writer.returncode == 0, f"{objective}:\n{output[-3000:]}"

        with Tracker(services["mlflow_ui"]) as tracker:
            runs = tracker.experiment_runs("pg-study")
            assert sorted(r.status for r in runs) == ["FINISHED", "FINISHED"]
            for run in runs:
                for key in STREAMED:  # every training step of every run, none lost
                    steps = [step for step, _ in tracker.metric_history(run.run_id, key)]
                    assert steps == list(range(1, STEPS + 1)), (run.run_name, key, steps)
            spans = [tracker.client.get_run(r.run_id).info for r in runs]
        overlap_s = (min(s.end_time for s in spans) - max(s.start_time for s in spans)) / 1000
        assert overlap_s > 0, f"the two runs did not write at the same time ({overlap_s:.1f} s)"

        with RolloutStore(store_url) as store:
            assert sorted(r.id for r in store.runs()) == sorted(r.run_id for r in runs)
            for run in runs:
                samples = store.samples(run.run_id)
                # n samples and one greedy response per problem
                assert len(samples) == EVAL_LIMIT * (EVAL_N + 1), run.run_name
                assert {s.stage for s in samples} == {"eval/tiny", "eval_greedy/tiny"}
                assert len(store.problems(run.run_id)) == EVAL_LIMIT

        assert _flow_runs(services["prefect_api"]) == [("distill", "COMPLETED")] * 2
        # The state is in PostgreSQL, not in a SQLite file beside any of the processes.
        assert cluster.query("distill_mlflow", "SELECT count(*) FROM runs") == [(2,)]
        assert cluster.query("distill_prefect", "SELECT count(*) FROM flow_run") == [(2,)]
        assert cluster.query("distill_store", "SELECT count(*) FROM samples") == [
            (2 * EVAL_LIMIT * (EVAL_N + 1),)]
        assert not list(tmp_path.rglob("*.db")), list(tmp_path.rglob("*.db"))
        for database in ("distill_prefect", "distill_mlflow", "distill_store"):
            assert "s3cret" not in cluster.dump(database), f"{database} holds the password"
    finally:
        down(tmp_path / "services")
    print(f"two writers on PostgreSQL: {time.monotonic() - started:.0f} s with `up` and `down`; "
          f"their MLflow runs overlapped for {overlap_s:.1f} s")
