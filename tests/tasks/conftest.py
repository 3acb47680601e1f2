"""The reduced embedded default, bootstrapped once per session for the slow task tests (the tiny
models and the Prefect harness live in tests/conftest.py)."""

from dataclasses import dataclass
from pathlib import Path

import pytest

from tasks.arithmetic import ArithmeticConfig
from tasks.bootstrap import BootstrapArtifacts, DefaultBootstrapConfig, bootstrap_default
from tasks.models import TinyModelConfig
from tasks.sft import SFTConfig

# The embedded default at reduced size: one-step problems and a small teacher, learnt in about
# a minute on 2 CPU cores; the student, the teacher's first layer, gets 5 SFT steps.
REDUCED_BOOTSTRAP = DefaultBootstrapConfig(
    task=ArithmeticConfig(min_steps=1, max_steps=1, train_size=3000, held_out_size=100,
                          test_size=100, quote_rate=0.0, check_rate=0.0,
                          running_total_rate=0.0, start_word_rate=0.0,
                          answer_word_rate=0.0),  # one written form: learnt in the minute
    teacher=TinyModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=256),
    teacher_sft=SFTConfig(steps=800, warmup_steps=50),
    student_layers=(0,),  # the teacher's first layer, healed for 5 steps: nearly untrained
    student_sft=SFTConfig(steps=5, warmup_steps=1),
    eval_problems=100,
    greedy_max_new_tokens=96,  # the reduced models keep the 256-token context
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
