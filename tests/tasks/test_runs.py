"""tasks.runs' checks before any work, against real SQLite files: a damaged MLflow database or
rollout store is named before anything is written into it."""

import os
import sqlite3

import pytest

from tasks.runs import preflight
from tasks.store import RolloutStore
from tasks.tracking import Tracker


@pytest.fixture
def artifacts(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_LAB_ARTIFACTS", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DISTILL_LAB_STORE_URL", raising=False)
    return tmp_path


def _damage_pages(path, first: int, count: int) -> None:
    """Overwrite whole pages in the middle of a SQLite file with a fixed junk pattern."""
    with sqlite3.connect(path) as database:
        page_size = database.execute("PRAGMA page_size").fetchone()[0]
        assert database.execute("PRAGMA page_count").fetchone()[0] > first + count
    with open(path, "r+b") as handle:
        handle.seek(first * page_size)
        handle.write(bytes(range(256)) * (count * page_size // 256))


@pytest.mark.slow
def test_a_damaged_mlflow_database_is_named_before_it_is_written_into(artifacts):
    database = artifacts / "mlflow.db"
    with Tracker(f"sqlite:///{database}", artifacts_dir=artifacts) as tracker:
        for index in range(20):
            tracker.start_run("damaged", f"run {index}", {"note": "x" * 500})
    _damage_pages(database, first=4, count=4)  # four damaged pages, as in the report
    before = database.read_bytes()
    with pytest.raises(ValueError) as error:
        preflight()
    message = str(error.value)
    assert f"the MLflow database {database} is damaged (SQLite quick_check:" in message
    assert "\n" not in message
    assert database.read_bytes() == before  # nothing was written into it


def test_a_file_that_is_not_a_database_is_named(artifacts):
    store = artifacts / "distill_lab.db"
    store.write_bytes(b"not a database, " * 512)
    with pytest.raises(ValueError, match=(f"the rollout store {store} is damaged \\(SQLite "
                                          "quick_check: file is not a database\\)")):
        preflight()


def test_healthy_stores_pass(artifacts):
    RolloutStore(f"sqlite:///{artifacts / 'distill_lab.db'}").close()
    where = preflight()
    assert where.root == artifacts and os.path.exists(artifacts / "mlflow.db")


def test_any_command_names_an_mlflow_file_that_is_not_a_database(tmp_path):
    database = tmp_path / "mlflow.db"
    database.write_bytes(b"\x00garbage" * 1024)
    with pytest.raises(ConnectionError, match=f"MLflow SQLite database {database} "
                                              r"\(file is not a database\)"):
        Tracker(f"sqlite:///{database}", artifacts_dir=tmp_path)
