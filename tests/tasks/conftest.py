"""Tiny real models for the task tests: one tokenizer, a teacher and a smaller student, saved
with save_pretrained and loaded back through from_pretrained like any checkpoint."""

from pathlib import Path

import pytest

from tasks.arithmetic import ArithmeticConfig, generate_splits
from tasks.models import TinyModelConfig, build_tiny_model, build_tokenizer


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
