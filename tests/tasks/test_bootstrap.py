"""Bootstrapping the embedded default end to end, at reduced size: real tokenizer, real HF
models through from_pretrained, real SFT, the real grader, and the content-hash cache."""

import json

import pytest

from tasks.arithmetic import ArithmeticConfig
from tasks.bootstrap import DefaultBootstrapConfig, bootstrap_default, held_out_greedy_accuracy
from tasks.data import read_problems
from tasks.models import TinyModelConfig, build_tiny_model, load_model, load_tokenizer
from tasks.sft import SFTConfig

# One-step problems and a small teacher: learnt in about a minute on 2 CPU cores.
REDUCED = DefaultBootstrapConfig(
    task=ArithmeticConfig(min_steps=1, max_steps=1, train_size=3000, held_out_size=100,
                          test_size=100),
    teacher=TinyModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=256),
    teacher_sft=SFTConfig(steps=800, warmup_steps=50, log_every=200),
    student=TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
    student_sft=SFTConfig(steps=5, warmup_steps=1, log_every=5),
    eval_problems=100,
)


@pytest.fixture(scope="module")
def bootstrapped(tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts")
    lines: list[str] = []
    artifacts = bootstrap_default(REDUCED, root=root, log=lines.append)
    return root, artifacts, lines


@pytest.mark.slow
def test_teacher_beats_untrained_student(bootstrapped):
    _, artifacts, lines = bootstrapped
    assert any("sft step 800/800" in line for line in lines)  # progress was printed
    teacher_metrics = json.loads((artifacts.teacher_dir / "bootstrap_metrics.json").read_text())
    tokenizer = load_tokenizer(artifacts.teacher_dir)
    held_out = read_problems(artifacts.split("held_out"))
    untrained = build_tiny_model(REDUCED.student, tokenizer, seed=0)
    untrained_accuracy = held_out_greedy_accuracy(untrained, tokenizer, held_out)
    teacher_accuracy = held_out_greedy_accuracy(load_model(artifacts.teacher_dir), tokenizer,
                                                held_out)
    assert teacher_accuracy["strict_accuracy"] == teacher_metrics["strict_accuracy"]
    assert teacher_accuracy["strict_accuracy"] >= untrained_accuracy["strict_accuracy"] + 0.2


@pytest.mark.slow
def test_second_bootstrap_reuses_every_artifact(bootstrapped):
    root, artifacts, _ = bootstrapped
    lines: list[str] = []
    again = bootstrap_default(REDUCED, root=root, log=lines.append)
    assert again == artifacts
    assert not any("sft step" in line for line in lines)
    assert sum("reusing" in line for line in lines) == 2


@pytest.mark.slow
def test_bootstrapped_pair_shares_one_tokenizer(bootstrapped):
    _, artifacts, _ = bootstrapped
    teacher, student = (load_tokenizer(artifacts.teacher_dir),
                        load_tokenizer(artifacts.student_dir))
    assert teacher.get_vocab() == student.get_vocab()
    splits = {name: read_problems(artifacts.split(name)) for name in ("train", "held_out", "test")}
    assert [len(splits[name]) for name in ("train", "held_out", "test")] == [3000, 100, 100]
