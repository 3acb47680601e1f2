"""The reduced embedded default, bootstrapped once per session for the slow task tests, and a
model whose logits a test controls (the tiny models and the Prefect harness live in
tests/conftest.py)."""

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

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


def _fixed_logits_model(tokenizer, logits: dict[int, float]):
    """A Llama whose next-token logits are the same at every position, whatever the input:
    logits[token] for the tokens given, 0 for every other. Every hidden state is the all-ones
    vector (identical embeddings, zeroed residual branches; the final RMSNorm keeps it all ones
    up to its eps), so a head row filled with x / hidden_size gives logit x."""
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, intermediate_size=32,
                         max_position_embeddings=128, tie_word_embeddings=False,
                         pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight.fill_(1.0)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        for token, logit in logits.items():
            model.lm_head.weight[token].fill_(logit / config.hidden_size)
    return model.eval()


@pytest.fixture(scope="session")
def fixed_logits_model():
    """Builds a model whose logits the test controls: ``fixed_logits_model(tokenizer,
    {token id: logit})`` (see ``_fixed_logits_model``)."""
    return _fixed_logits_model
