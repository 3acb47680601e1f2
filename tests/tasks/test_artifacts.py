"""Content-addressed artifacts: built once, reused, never half-built."""

from dataclasses import dataclass

import pytest

from tasks.artifacts import cached_build, code_version, content_hash, file_hash


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
    assert list((tmp_path / "things").iterdir()) == []


def test_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_LAB_ARTIFACTS", str(tmp_path / "env-root"))
    path, _ = cached_build("things", "k3", lambda out: None)
    assert path == tmp_path / "env-root" / "things" / "k3"
