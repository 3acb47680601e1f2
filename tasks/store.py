"""The rollout store: every run, prompt and sampled response, queryable with SQL.

SQLAlchemy 2.x; a SQLite file by default, any SQLAlchemy URL (``postgresql+psycopg://…``) for a
team. Tables:

- ``runs``: one row per run (id, name, kind, created_at, config JSON);
- ``prompts``: the problems a run used (run id, prompt id, problem, answer);
- ``samples``: one row per response (run id, stage, step, prompt id, sample index, response
  text, token count, truncated, correct, mean token entropy). An evaluation's n samples per
  problem are stage ``eval/<benchmark>``, its one greedy response per problem stage
  ``eval_greedy/<benchmark>`` (``EVAL_STAGE``, ``GREEDY_STAGE``): a reader of one never sees
  the other;
- ``schema_version``: the schema's version, checked on open.

Every ``add_*`` call is one transaction: a batch is written whole or not at all, so a killed
process loses at most the batch in flight and never leaves half of one. The schema is created on
first use; opening a database written by a different schema version is an error that says so.
``RolloutStore(url)`` connects at once, so an unreachable URL fails at start, not after hours;
its messages (and ``RolloutStore.url``) show a server URL with the password hidden. A write the
database refuses for lack of space raises a ``tasks.files.WriteError`` naming the store (its
file, or its server), which may lie outside the artifacts folder.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    insert,
    select,
    text,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from tasks.files import named, write_error

SCHEMA_VERSION = 1
DEFAULT_URL_ENV = "DISTILL_LAB_STORE_URL"
EVAL_STAGE = "eval/"  # + benchmark: an evaluation's sampled responses
GREEDY_STAGE = "eval_greedy/"  # + benchmark: its one greedy response per problem
POSTGRES_DISK_FULL = "53100"  # PostgreSQL's SQLSTATE disk_full


class _Base(DeclarativeBase):
    pass


class _SchemaVersion(_Base):
    __tablename__ = "schema_version"
    version: Mapped[int] = mapped_column(Integer, primary_key=True)


class RunRow(_Base):
    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(40))  # "distill", "evaluate", "grpo", …
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    config_json: Mapped[str] = mapped_column(Text, default="{}")


class PromptRow(_Base):
    __tablename__ = "prompts"
    __table_args__ = (UniqueConstraint("run_id", "prompt_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    prompt_id: Mapped[str] = mapped_column(String(200))
    problem: Mapped[str] = mapped_column(Text)
    answer: Mapped[str] = mapped_column(Text)


class SampleRow(_Base):
    __tablename__ = "samples"
    __table_args__ = (UniqueConstraint("run_id", "stage", "step", "prompt_id", "sample_index"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    stage: Mapped[str] = mapped_column(String(40))  # "teacher_rollout", "train", "eval/gsm8k", …
    step: Mapped[int] = mapped_column(Integer)
    prompt_id: Mapped[str] = mapped_column(String(200))
    sample_index: Mapped[int] = mapped_column(Integer)
    response: Mapped[str] = mapped_column(Text)
    token_count: Mapped[int] = mapped_column(Integer)
    truncated: Mapped[bool] = mapped_column(Boolean)
    correct: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    mean_entropy: Mapped[float | None] = mapped_column(Float, nullable=True)


@dataclass(frozen=True)
class SampleRecord:
    """One response as the store keeps it (correct / mean_entropy may be unknown: None)."""

    prompt_id: str
    sample_index: int
    response: str
    token_count: int
    truncated: bool
    correct: bool | None = None
    mean_entropy: float | None = None


def default_url(directory: str | Path = ".") -> str:
    """SQLite file ``distill_lab.db`` in directory (the default store)."""
    return f"sqlite:///{Path(directory).resolve() / 'distill_lab.db'}"


class RolloutStore:
    """Runs, prompts and samples in one SQL database (see the module docstring)."""

    def __init__(self, url: str) -> None:
        try:
            self.engine = create_engine(url)
        except (SQLAlchemyError, ImportError, ValueError) as error:
            raise ValueError(f"rollout store URL {_shown(url)!r} is not usable: {error}") from error
        # What messages and reports show: a server URL's password stays out of them.
        self.url = self.engine.url.render_as_string(hide_password=True)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        try:
            with self._room(), self.engine.begin() as connection:
                versions = _create_schema(connection)
        except SQLAlchemyError as error:
            raise ConnectionError(
                f"cannot open the rollout store at {self.url!r}: {error.__class__.__name__}: "
                f"{str(error).splitlines()[0]}. Check the URL, that the server is up and that "
                "the directory exists and is writable."
            ) from error
        if versions not in ([], [SCHEMA_VERSION]):
            raise RuntimeError(
                f"rollout store {self.url!r} has schema version {versions}, this code "
                f"writes version {SCHEMA_VERSION}; use a new database file or migrate it"
            )

    def create_run(self, run_id: str, name: str, kind: str,
                   config: Mapping[str, Any] | None = None) -> str:
        with self._room(), Session(self.engine) as session, session.begin():
            session.add(RunRow(id=run_id, name=name, kind=kind, created_at=datetime.now(UTC),
                               config_json=json.dumps(config or {}, sort_keys=True,
                                                      default=str)))
        return run_id

    def ensure_run(self, run_id: str, name: str, kind: str,
                   config: Mapping[str, Any] | None = None) -> str:
        """create_run unless run_id exists (e.g. a training run evaluated at several steps)."""
        with Session(self.engine) as session:
            if session.get(RunRow, run_id) is not None:
                return run_id
        return self.create_run(run_id, name, kind, config)

    def add_prompts(self, run_id: str, prompts: Iterable[tuple[str, str, str]]) -> int:
        """(prompt_id, problem, answer) rows for a run, in one transaction; prompts the run
        already has are left as they are. Returns the number added."""
        with self._room(), Session(self.engine) as session, session.begin():
            known = set(session.scalars(select(PromptRow.prompt_id)
                                        .where(PromptRow.run_id == run_id)).all())
            rows = [PromptRow(run_id=run_id, prompt_id=p, problem=q, answer=a)
                    for p, q, a in prompts if p not in known]
            session.add_all(rows)
        return len(rows)

    def add_samples(self, run_id: str, stage: str, step: int,
                    records: Iterable[SampleRecord], replace: bool = False) -> int:
        """One batch of samples, written whole or not at all; returns the count. With replace,
        the run's earlier rows of the same stage and step go in the same transaction (an
        evaluation repeated by a resumed run is stored once)."""
        rows = [SampleRow(run_id=run_id, stage=stage, step=step, prompt_id=r.prompt_id,
                          sample_index=r.sample_index, response=r.response,
                          token_count=r.token_count, truncated=r.truncated, correct=r.correct,
                          mean_entropy=r.mean_entropy) for r in records]
        with self._room(), Session(self.engine) as session, session.begin():
            if replace:
                session.execute(delete(SampleRow).where(
                    SampleRow.run_id == run_id, SampleRow.stage == stage, SampleRow.step == step))
            session.add_all(rows)
        return len(rows)

    def samples(self, run_id: str, stage: str | None = None) -> list[SampleRow]:
        query = select(SampleRow).where(SampleRow.run_id == run_id)
        if stage is not None:
            query = query.where(SampleRow.stage == stage)
        query = query.order_by(SampleRow.step, SampleRow.prompt_id, SampleRow.sample_index)
        with Session(self.engine) as session:
            return list(session.scalars(query).all())

    def problems(self, run_id: str) -> dict[str, str]:
        """``{prompt id: problem text}`` of one run's prompts."""
        query = select(PromptRow.prompt_id, PromptRow.problem).where(PromptRow.run_id == run_id)
        with Session(self.engine) as session:
            return {prompt_id: problem for prompt_id, problem in session.execute(query)}

    def runs(self) -> list[RunRow]:
        with Session(self.engine) as session:
            return list(session.scalars(select(RunRow).order_by(RunRow.created_at)).all())

    def close(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def _room(self) -> Iterator[None]:
        """A write the database refuses for lack of space, as a WriteError naming the store
        (a SQLite file, else the server URL); its transaction was rolled back whole."""
        try:
            yield
        except SQLAlchemyError as error:
            if not _disk_full(error):
                raise
            database = self.engine.url.database if self.engine.dialect.name == "sqlite" else None
            where = named(database) if database else self.url
            full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            raise write_error(full, f"the rollout store {where}",
                              then="rerun; what it held before is unchanged") from error

    def __enter__(self) -> RolloutStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# Any fixed number: the key of the PostgreSQL advisory lock that serialises schema creation.
_SCHEMA_LOCK_KEY = 0x5D157111


def _create_schema(connection: Connection) -> list[int]:
    """Create the tables that are missing and record the schema version on a new database;
    returns the versions found before (empty for a new database). On PostgreSQL, writers that
    open a new database at the same moment would race to create the same tables (one fails on
    a duplicate type), so creation holds a transaction-scoped advisory lock."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
    _Base.metadata.create_all(connection)
    versions = list(connection.scalars(select(_SchemaVersion.version)).all())
    if not versions:
        connection.execute(insert(_SchemaVersion).values(version=SCHEMA_VERSION))
    return versions


def _disk_full(error: SQLAlchemyError) -> bool:
    """SQLite's SQLITE_FULL or PostgreSQL's disk_full under a SQLAlchemy error."""
    driver_error = getattr(error, "orig", None)
    return (getattr(driver_error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
            or getattr(driver_error, "sqlstate", None) == POSTGRES_DISK_FULL)


def _shown(url: str) -> str:
    """url for a message: a password replaced by ***; an unparsable URL as given."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL journal (readers never block the writer; a killed writer rolls back cleanly) and
    enforced foreign keys."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
