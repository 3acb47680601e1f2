"""Files rewritten whole or not at all (tasks.files): a failure at any point leaves the old file
byte for byte and no temporary file; permissions and symlinks are kept; a refused write is one
line from the OS error naming the file."""

import errno
import json
import os

import pytest

from tasks.files import atomic_open, atomic_write_bytes, atomic_write_text
from tasks.runs import describe_os_error


def test_an_error_while_streaming_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text("old\n")
    with pytest.raises(TypeError), atomic_open(path) as handle:
        handle.write(json.dumps({"a": 1}) + "\n")
        handle.write(json.dumps({"b": object()}))  # not JSON: the stream stops half-way
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["samples.jsonl"]


def test_an_existing_file_keeps_its_mode_and_a_new_one_gets_the_umasks(tmp_path):
    kept = tmp_path / "kept.json"
    kept.write_text("{}")
    kept.chmod(0o640)
    atomic_write_text(kept, '{"a": 1}')
    assert (kept.stat().st_mode & 0o777, kept.read_text()) == (0o640, '{"a": 1}')
    umask = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "new.bin", b"\x00\x01")
    finally:
        os.umask(umask)
    assert (tmp_path / "new.bin").stat().st_mode & 0o777 == 0o644  # not tempfile's 0600


def test_a_symlink_stays_a_symlink_and_its_target_is_rewritten(tmp_path):
    target = tmp_path / "docs" / "README.md"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "README.md"
    link.symlink_to(target)
    atomic_write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "new"


def test_a_refused_write_names_the_file_and_keeps_the_old_one(small_disk):
    disk = small_disk.mount("64k")
    path = (disk / "metrics.json").resolve()
    path.write_text("{}")
    small_disk.fill(disk)
    with pytest.raises(OSError) as raised:
        atomic_write_text(path, json.dumps({"x": "y" * 10_000}))
    message = (f"No space left on device writing metrics.json ({path}): free space, then "
               "rerun; the old file is unchanged")
    assert (raised.value.errno, str(raised.value)) == (errno.ENOSPC, message)
    assert describe_os_error(raised.value) == message  # the CLI's one line names the same file
    assert path.read_text() == "{}"
    assert sorted(p.name for p in disk.iterdir()) == [".filler", "metrics.json"]
