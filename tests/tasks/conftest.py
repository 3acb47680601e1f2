"""Tiny real models for the task tests: one tokenizer, a teacher and a smaller student, saved
with save_pretrained and loaded back through from_pretrained like any checkpoint."""

from dataclasses import dataclass
from pathlib import Path

import pytest

from tasks.arithmetic import ArithmeticConfig, generate_splits
from tasks.bootstrap import BootstrapArtifacts, DefaultBootstrapConfig, bootstrap_default
from tasks.models import TinyModelConfig, build_tiny_model, build_tokenizer
from tasks.sft import SFTConfig

# The embedded default at reduced size: one-step problems and a small teacher, learnt in about
# a minute on 2 CPU cores; the student gets 5 SFT steps (nearly untrained).
REDUCED_BOOTSTRAP = DefaultBootstrapConfig(
    task=ArithmeticConfig(min_steps=1, max_steps=1, train_size=3000, held_out_size=100,
                          test_size=100),
    teacher=TinyModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=256),
    teacher_sft=SFTConfig(steps=800, warmup_steps=50, log_every=200),
    student=TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
    student_sft=SFTConfig(steps=5, warmup_steps=1, log_every=5),
    eval_problems=100,
)


@dataclass(frozen=True)
class Bootstrapped:
    root: Path
    artifacts: BootstrapArtifacts
    lines: list[str]
    config: DefaultBootstrapConfig


@pytest.fixture(scope="session")
def bootstrapped(tmp_path_factory) -> Bootstrapped:
    """The reduced default, bootstrapped once per session (shared by the slow tests)."""
    root = tmp_path_factory.mktemp("artifacts")
    lines: list[str] = []
    artifacts = bootstrap_default(REDUCED_BOOTSTRAP, root=root, log=lines.append)
    return Bootstrapped(root, artifacts, lines, REDUCED_BOOTSTRAP)


@pytest.fixture(scope="session")
def tiny_problems():
    return generate_splits(ArithmeticConfig(train_size=300, held_out_size=20, test_size=20))


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory, tiny_problems) -> tuple[Path, Path]:
    """(teacher_dir, student_dir): untrained Llama models sharing the default-style tokenizer."""
    root = tmp_path_factory.mktemp("tiny-pair")
    tokenizer = build_tokenizer([p.problem + "\n" + p.solution for p in tiny_problems["train"]],
                                vocab_size=300)
    shapes = {
        "teacher": TinyModelConfig(hidden_size=48, num_layers=2, num_heads=2,
                                   intermediate_size=96, max_positions=160),
        "student": TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2,
                                   intermediate_size=64, max_positions=160),
    }
    for seed, (role, shape) in enumerate(shapes.items()):
        build_tiny_model(shape, tokenizer, seed=seed).save_pretrained(root / role)
        tokenizer.save_pretrained(root / role)
    return root / "teacher", root / "student"
