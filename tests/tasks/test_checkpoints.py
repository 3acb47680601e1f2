"""Checkpoints under faults: planted pickles never run, corrupt files are named and skipped for
the previous checkpoint, a garbage pointer never restarts a run from step 0."""

import json
import pickle
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tasks.checkpoints import (
    CHECKSUMS,
    LATEST,
    CheckpointError,
    checkpoint_name,
    latest_checkpoint,
    sha256_file,
    verify_checksums,
    write_checksums,
)
from tasks.data import write_problems
from tasks.train import TrainConfig, train

PLANTED = "planted-by-a-pickle"


class _Payload:
    """Unpickling this runs code: it creates a marker file (an attacker would do worse)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, PLANTED))


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_pair, tiny_problems):
    data = tmp_path_factory.mktemp("data")
    write_problems(tiny_problems["train"][:32], data / "train.jsonl")
    return TrainConfig(
        objective="sft", teacher=str(tiny_pair[0]), student=str(tiny_pair[1]),
        train_problems=str(data / "train.jsonl"), output_dir="unused", steps=3, batch_size=8,
        learning_rate=3e-3, max_new_tokens=12, checkpoint_every=1,
        artifacts_root=str(tmp_path_factory.mktemp("artifacts")))


def _run(config, lines=None):
    return train(config, log=(lines.append if lines is not None else lambda line: None))


def _killed_after(config, step: int) -> Path:
    """A run of config as a kill after checkpoint `step` leaves it: later checkpoints gone."""
    output_dir = Path(config.output_dir)
    _run(config)
    for later in range(step + 1, config.steps + 1):
        shutil.rmtree(output_dir / checkpoint_name(later))
    kept = output_dir / checkpoint_name(step)
    (output_dir / LATEST).write_text(json.dumps(
        {"checkpoint": kept.name, "sha256": sha256_file(kept / CHECKSUMS)}))
    return kept


def _weights(checkpoint: Path) -> dict:
    return load_file(str(checkpoint / "model.safetensors"))


def test_a_planted_pickle_is_refused_even_with_matching_checksums(base, tmp_path):
    config = replace(base, output_dir=str(tmp_path / "run"))
    newest = _killed_after(config, 2)
    marker = tmp_path / "marker.txt"
    with open(newest / "optimizer.bin", "wb") as handle:  # an attacker's file…
        pickle.dump(_Payload(marker), handle)
    write_checksums(newest)  # …with checksums that match it
    with pytest.raises(CheckpointError, match="optimizer.bin is not plain tensor data"):
        _run(config)
    assert not marker.exists(), "the planted pickle ran"


def test_a_planted_pickle_without_checksums_falls_back_to_the_previous_checkpoint(base,
                                                                                  tmp_path):
    config = replace(base, output_dir=str(tmp_path / "run"))
    straight = _run(replace(config, output_dir=str(tmp_path / "straight")))
    _killed_after(config, 2)
    marker = tmp_path / "marker.txt"
    with open(tmp_path / "run" / "checkpoint-000002" / "random_states_0.pkl", "wb") as handle:
        pickle.dump(_Payload(marker), handle)
    lines: list[str] = []
    resumed = _run(config, lines)
    assert not marker.exists()
    assert any("checkpoint-000002 is not usable" in line and "random_states_0.pkl" in line
               for line in lines), lines
    assert any("resuming from" in line and "checkpoint-000001" in line for line in lines), lines
    assert (tmp_path / "run" / "checkpoint-000002.corrupt").is_dir()  # kept as evidence
    for name, tensor in _weights(resumed.checkpoint).items():
        torch.testing.assert_close(tensor, _weights(straight.checkpoint)[name], atol=1e-6,
                                   rtol=1e-5)


def test_a_truncated_state_file_is_named_and_the_previous_checkpoint_used(base, tmp_path):
    config = replace(base, output_dir=str(tmp_path / "run"))
    _killed_after(config, 2)
    state = tmp_path / "run" / "checkpoint-000002" / "optimizer.bin"
    state.write_bytes(state.read_bytes()[:100])
    lines: list[str] = []
    result = _run(config, lines)
    assert any("optimizer.bin does not match its checksum" in line for line in lines), lines
    assert result.checkpoint.name == "checkpoint-000003"


def test_a_bit_flip_in_the_weights_is_caught_by_the_checksum(base, tmp_path):
    config = replace(base, output_dir=str(tmp_path / "run"))
    checkpoint = _killed_after(config, 1)
    shutil.rmtree(tmp_path / "run" / checkpoint_name(0), ignore_errors=True)
    weights = checkpoint / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x40
    weights.write_bytes(bytes(data))
    assert "model.safetensors does not match its checksum" in verify_checksums(checkpoint)
    with pytest.raises(CheckpointError, match="none of its 1 checkpoints passes"):
        _run(config)


def test_a_garbage_latest_pointer_never_restarts_from_step_zero(base, tmp_path):
    config = replace(base, output_dir=str(tmp_path / "run"))
    _killed_after(config, 2)
    (tmp_path / "run" / LATEST).write_bytes(b"\x00\xffgarbage")
    lines: list[str] = []
    _run(config, lines)
    assert any("is not a valid pointer" in line for line in lines), lines
    assert any("resuming from" in line and "checkpoint-000002" in line for line in lines)
    assert (tmp_path / "run" / "checkpoint-000001").is_dir()  # older checkpoints untouched


def test_a_full_disk_at_a_checkpoint_is_one_line_and_the_rerun_resumes(base, tmp_path,
                                                                        small_disk):
    disk = small_disk.mount("8m")
    config = replace(base, output_dir=str(disk / "run"))
    straight = _run(replace(config, output_dir=str(tmp_path / "straight")))

    def fill_before_checkpoint_2(step: int, metrics: dict) -> None:
        if step == 2:
            small_disk.fill(disk)

    with pytest.raises(OSError) as raised:  # torch.save's own error would be a RuntimeError
        train(config, log=lambda line: None, on_step=fill_before_checkpoint_2)
    assert str(raised.value) == (
        f"No space left on device writing checkpoint {disk / 'run' / checkpoint_name(2)}: "
        "free space, then rerun the same command; it resumes from step 1")
    # the half-written checkpoint is gone (its space back), the previous one untouched
    assert sorted(p.name for p in (disk / "run").iterdir()) == [checkpoint_name(1), LATEST]
    small_disk.empty(disk)
    lines: list[str] = []
    resumed = _run(config, lines)
    assert any("resuming from" in line and checkpoint_name(1) in line for line in lines), lines
    for name, tensor in _weights(resumed.checkpoint).items():
        torch.testing.assert_close(tensor, _weights(straight.checkpoint)[name], atol=1e-6,
                                   rtol=1e-5)


def test_checksums_name_added_and_missing_files(tmp_path):
    (tmp_path / "a.txt").write_text("a")
    write_checksums(tmp_path)
    assert verify_checksums(tmp_path) is None
    (tmp_path / "b.txt").write_text("b")
    assert "b.txt is not listed" in verify_checksums(tmp_path)
    (tmp_path / "b.txt").unlink()
    (tmp_path / "a.txt").unlink()
    assert "a.txt is missing" in verify_checksums(tmp_path)
    (tmp_path / CHECKSUMS).write_text("{not json")
    assert "unreadable" in verify_checksums(tmp_path)


def test_no_checkpoint_means_a_fresh_start(tmp_path):
    assert latest_checkpoint(tmp_path / "absent") is None
    (tmp_path / LATEST).write_text(json.dumps({"checkpoint": "checkpoint-000009",
                                               "sha256": "0"}))
    lines: list[str] = []
    assert latest_checkpoint(tmp_path, warn=lines.append) is None
    assert lines and "not a valid pointer" in lines[0]


def test_no_weights_only_false_anywhere():
    root = Path(__file__).resolve().parents[2]
    offenders = [str(p.relative_to(root)) for folder in ("tasks", "flows", "distill_core",
                                                          "dashboards", "bench")
                 for p in (root / folder).rglob("*.py")
                 if "weights_only=False" in p.read_text()]
    assert offenders == []
