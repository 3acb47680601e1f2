"""Content-addressed artifacts: built once, reused, never half-built."""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tasks.artifacts import cached_build, code_version, content_hash, file_hash

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Config:
    size: int = 3


def test_content_hash_is_stable_and_sensitive():
    assert content_hash(Config(), {"b": 1, "a": 2}) == content_hash(Config(), {"a": 2, "b": 1})
    assert content_hash(Config(size=3)) != content_hash(Config(size=4))
    with pytest.raises(TypeError, match="cannot hash a object"):
        content_hash(object())


def test_code_version_tracks_source():
    assert code_version(["tasks.artifacts"]) == code_version(["tasks.artifacts"])
    assert code_version(["tasks.artifacts"]) != code_version(["tasks.data"])


ORIGINAL = '"""A module."""\n\ndef f(x):\n    return 2 * x\n'


@pytest.mark.parametrize("edited, same", [
    ('"""Another text."""\n\n\ndef f(x):\n    # doubles\n    """Twice x."""\n    return 2 * x\n',
     True),                                                  # comments, docstrings, blank lines
    ('"""A module."""\n\ndef f(x):\n    return 3 * x\n', False),        # the code itself
])
def test_code_version_ignores_docstrings_and_comments_not_code(tmp_path, monkeypatch, edited,
                                                                same):
    versions = []
    for folder, source in (("before", ORIGINAL), ("after", edited)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "built.py").write_text(source)
        monkeypatch.syspath_prepend(str(tmp_path / folder))
        monkeypatch.delitem(sys.modules, "built", raising=False)
        versions.append(code_version(["built"]))
    assert (versions[0] == versions[1]) is same


def test_file_hash_covers_names_and_bytes(tmp_path):
    (tmp_path / "a.txt").write_text("one")
    before = file_hash(tmp_path)
    (tmp_path / "a.txt").write_text("two")
    assert file_hash(tmp_path) != before


def test_built_once_then_reused(tmp_path):
    calls = []

    def build(out):
        calls.append(out)
        (out / "product.txt").write_text("made")

    first, reused_first = cached_build("things", "k1", build, root=tmp_path,
                                       describe={"config": Config()})
    second, reused_second = cached_build("things", "k1", build, root=tmp_path)
    assert (reused_first, reused_second) == (False, True)
    assert first == second == tmp_path / "things" / "k1"
    assert len(calls) == 1
    assert (first / "product.txt").read_text() == "made"
    assert '"size": 3' in (first / "key.json").read_text()


def test_failed_build_leaves_nothing(tmp_path):
    def build(out):
        (out / "partial.txt").write_text("half")
        raise RuntimeError("crashed mid-build")

    with pytest.raises(RuntimeError, match="crashed mid-build"):
        cached_build("things", "k2", build, root=tmp_path)
    assert [p.name for p in (tmp_path / "things").iterdir()] == [".k2.lock"]


def test_a_corrupt_product_is_named_and_rebuilt(tmp_path):
    calls = []

    def build(out):
        calls.append(1)
        (out / "samples.jsonl").write_text('{"response": "42"}\n')

    path, _ = cached_build("things", "k4", build, root=tmp_path)
    (path / "samples.jsonl").write_text('{"response": "41"}\n')  # an edited rollout
    lines: list[str] = []
    again, reused = cached_build("things", "k4", build, root=tmp_path, log=lines.append)
    assert not reused and len(calls) == 2
    assert "samples.jsonl does not match its checksum" in lines[0]
    assert (again / "samples.jsonl").read_text() == '{"response": "42"}\n'
    assert cached_build("things", "k4", build, root=tmp_path)[1]


def test_half_built_leftovers_of_a_killed_build_are_removed(tmp_path):
    leftover = tmp_path / "things" / ".k5-abc123"
    leftover.mkdir(parents=True)
    (leftover / "partial.txt").write_text("half")
    cached_build("things", "k5", lambda out: None, root=tmp_path)
    assert not leftover.exists()


BUILDER = """
import sys, time
from pathlib import Path
from tasks.artifacts import cached_build

def build(out):
    with open(sys.argv[2], "a") as log:
        log.write("built\\n")
    time.sleep(3.0)  # long enough that the other process arrives during it
    (out / "product.txt").write_text("made")

print(cached_build("things", "k6", build, root=sys.argv[1])[1])
"""


def test_two_processes_share_one_build(tmp_path):
    builds = tmp_path / "builds.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    processes = [subprocess.Popen([sys.executable, "-c", BUILDER, str(tmp_path), str(builds)],
                                  env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = sorted((p.communicate(timeout=120)[0].strip().splitlines() for p in processes),
                     key=lambda lines: lines[-1])
    assert [lines[-1] for lines in outputs] == ["False", "True"]  # reused?
    assert "waiting for another process that is building things k6" in outputs[1][0]
    assert builds.read_text().count("built") == 1


def test_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_LAB_ARTIFACTS", str(tmp_path / "env-root"))
    path, _ = cached_build("things", "k3", lambda out: None)
    assert path == tmp_path / "env-root" / "things" / "k3"
