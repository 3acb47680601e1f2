"""Bootstrapping the embedded default end to end, at reduced size: real tokenizer, real HF
models through from_pretrained, real SFT, the real grader, and the content-hash cache."""

import json

import pytest

from tasks.bootstrap import bootstrap_default, held_out_greedy_accuracy
from tasks.data import read_problems
from tasks.models import build_tiny_model, load_model, load_tokenizer


@pytest.mark.slow
def test_teacher_beats_untrained_student(bootstrapped):
    artifacts, lines = bootstrapped.artifacts, bootstrapped.lines
    assert any("sft: 800 of 800 steps (100%)" in line for line in lines)  # progress was shown
    teacher_metrics = json.loads((artifacts.teacher_dir / "bootstrap_metrics.json").read_text())
    tokenizer = load_tokenizer(artifacts.teacher_dir)
    held_out = read_problems(artifacts.split("held_out"))
    untrained = build_tiny_model(bootstrapped.config.student, tokenizer, seed=0)
    untrained_accuracy = held_out_greedy_accuracy(untrained, tokenizer, held_out)
    teacher_accuracy = held_out_greedy_accuracy(load_model(artifacts.teacher_dir), tokenizer,
                                                held_out)
    assert teacher_accuracy["strict_accuracy"] == teacher_metrics["strict_accuracy"]
    assert teacher_accuracy["strict_accuracy"] >= untrained_accuracy["strict_accuracy"] + 0.2


@pytest.mark.slow
def test_second_bootstrap_reuses_every_artifact(bootstrapped):
    root, artifacts = bootstrapped.root, bootstrapped.artifacts
    lines: list[str] = []
    again = bootstrap_default(bootstrapped.config, root=root, log=lines.append)
    assert again == artifacts
    assert not any(line.startswith("sft:") for line in lines)
    assert sum("reusing" in line for line in lines) == 2


@pytest.mark.slow
def test_bootstrapped_pair_shares_one_tokenizer(bootstrapped):
    artifacts = bootstrapped.artifacts
    teacher, student = (load_tokenizer(artifacts.teacher_dir),
                        load_tokenizer(artifacts.student_dir))
    assert teacher.get_vocab() == student.get_vocab()
    splits = {name: read_problems(artifacts.split(name)) for name in ("train", "held_out", "test")}
    assert [len(splits[name]) for name in ("train", "held_out", "test")] == [3000, 100, 100]
