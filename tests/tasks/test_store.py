"""The rollout store on a real SQLite file: round trip, whole-batch transactions (also under
SIGKILL), schema versioning and clear errors for unusable URLs."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from tasks.store import SCHEMA_VERSION, RolloutStore, SampleRecord, default_url

ROOT = Path(__file__).resolve().parents[2]


def _records(count, start=0):
    return [SampleRecord(prompt_id=f"p{i}", sample_index=0, response=f"\\boxed{{{i}}}",
                         token_count=5 + i, truncated=i % 2 == 0, correct=i % 3 == 0,
                         mean_entropy=0.5 * i) for i in range(start, start + count)]


def test_round_trip(tmp_path):
    with RolloutStore(default_url(tmp_path)) as store:
        store.create_run("run-1", "sft on default", "distill", {"objective": "sft", "lr": 1e-3})
        assert store.add_prompts("run-1", [("p0", "1+1?", "2"), ("p1", "2+2?", "4")]) == 2
        assert store.add_samples("run-1", "train", 3, _records(4)) == 4
        rows = store.samples("run-1", stage="train")
        assert [(r.prompt_id, r.step, r.token_count, r.truncated, r.correct) for r in rows] == [
            ("p0", 3, 5, True, True), ("p1", 3, 6, False, False), ("p2", 3, 7, True, False),
            ("p3", 3, 8, False, True)]
        assert [r.name for r in store.runs()] == ["sft on default"]
    assert (tmp_path / "distill_lab.db").exists()


def test_a_failing_batch_writes_nothing(tmp_path):
    with RolloutStore(default_url(tmp_path)) as store:
        store.create_run("run-1", "r", "distill")
        store.add_samples("run-1", "train", 0, _records(3))
        clashing = _records(2, start=3) + _records(1)  # the last row repeats (step 0, p0, 0)
        with pytest.raises(IntegrityError):
            store.add_samples("run-1", "train", 0, clashing)
        assert len(store.samples("run-1")) == 3
        with pytest.raises(IntegrityError):  # foreign key: samples need their run
            store.add_samples("no-such-run", "train", 0, _records(1))


WRITER = textwrap.dedent("""
    import sys
    from tasks.store import RolloutStore, SampleRecord
    store = RolloutStore(sys.argv[1])
    store.create_run("run-1", "r", "distill")
    print("ready", flush=True)
    step = 0
    while True:
        store.add_samples("run-1", "train", step, [
            SampleRecord(prompt_id=f"p{i}", sample_index=0, response="x" * 2000,
                         token_count=1, truncated=False) for i in range(200)])
        step += 1
""")


@pytest.mark.slow
def test_killed_writer_never_leaves_half_a_batch(tmp_path):
    url = default_url(tmp_path)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, url], stdout=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True)
    assert writer.stdout.readline().strip() == "ready"
    time.sleep(1.5)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    with RolloutStore(url) as store:
        rows = store.samples("run-1")
    per_step = {}
    for row in rows:
        per_step[row.step] = per_step.get(row.step, 0) + 1
    assert per_step, "the writer should have committed some batches in 1.5 s"
    assert set(per_step.values()) == {200}
    assert sorted(per_step) == list(range(len(per_step)))


def test_unreachable_url_fails_at_start(tmp_path):
    with pytest.raises(ConnectionError, match="cannot open the rollout store"):
        RolloutStore(f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}")
    with pytest.raises(ValueError, match="not usable"):
        RolloutStore("nosuchdialect://host/db")


def test_other_schema_version_is_refused(tmp_path):
    url = default_url(tmp_path)
    with RolloutStore(url) as store, store.engine.begin() as connection:
        connection.execute(text("UPDATE schema_version SET version = :v"),
                           {"v": SCHEMA_VERSION + 1})
    with pytest.raises(RuntimeError, match=f"schema version \\[{SCHEMA_VERSION + 1}\\]"):
        RolloutStore(url)


def test_a_full_disk_under_the_store_names_the_store_and_keeps_what_it_held(tmp_path,
                                                                          small_disk):
    from tasks.runs import describe_os_error

    disk = small_disk.mount("1m")  # the store's own disk, away from the artifacts folder
    database = (disk / "rollouts.db").resolve()
    with RolloutStore(f"sqlite:///{database}") as store:
        store.create_run("run-1", "opd", "distill")
        store.add_samples("run-1", "train", 1, _records(2))
        small_disk.fill(disk)
        big = [SampleRecord(f"p{i}", 0, "x" * 100_000, 5, False) for i in range(8)]
        with pytest.raises(OSError) as raised:
            store.add_samples("run-1", "train", 2, big)
        message = (f"No space left on device writing the rollout store rollouts.db ({database})"
                   ": free space, then rerun; what it held before is unchanged")
        assert str(raised.value) == message
        assert describe_os_error(raised.value) == message  # the CLI's line, not another folder
        small_disk.empty(disk)
        assert [r.step for r in store.samples("run-1")] == [1, 1]  # the batch: none of it
