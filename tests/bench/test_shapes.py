"""bench/shapes.py: the published Qwen3 shapes are what Qwen states, the padded tokenizer covers
every row and declares no EOS, and a model built from it samples every response to the cap (HF
generate here; the vLLM worker too when DISTILL_LAB_VLLM_PYTHON is set)."""


import pytest

from bench.shapes import ARCHITECTURES, QWEN3_VOCAB, Architecture, padded_tokenizer, qwen3_config
from tasks.data import Problem
from tasks.models import check_pair, load_model, load_tokenizer, non_embedding_parameters_of
from tasks.rollout import SamplingConfig, generate_hf, render_prompts

# Non-embedding parameters as Qwen's model cards state them (Qwen3-0.6B: 0.44B, -1.7B: 1.4B,
# -4B: 3.6B): an independent check of the widths, depths and head counts in ARCHITECTURES.
MODEL_CARD_BILLIONS = {"0.6b": 0.44, "1.7b": 1.4, "4b": 3.6}
PROBLEMS = [Problem(id=f"p{i}", problem=f"Ava has {i + 3} pens. She buys {i} more. How many "
                    "pens now?", answer=str(2 * i + 3)) for i in range(4)]
# A small model at Qwen3's vocabulary: vLLM's CPU attention takes head size 32.
SMALL = Architecture(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2,
                     num_kv_heads=1, head_dim=32, max_positions=512)


@pytest.fixture(scope="module")
def tokenizer():
    return padded_tokenizer([p.problem for p in PROBLEMS])


@pytest.fixture(scope="module")
def small_model_dir(tokenizer, tmp_path_factory):
    import torch
    from transformers import AutoModelForCausalLM

    directory = tmp_path_factory.mktemp("small") / "model"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(qwen3_config(SMALL, tokenizer)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_each_shape_has_the_non_embedding_parameters_of_its_model_card(tokenizer, name):
    config = qwen3_config(ARCHITECTURES[name], tokenizer)
    billions = non_embedding_parameters_of(config) / 1e9
    assert round(billions, 2 if billions < 1 else 1) == MODEL_CARD_BILLIONS[name]
    assert config.vocab_size == QWEN3_VOCAB and config.tie_word_embeddings


def test_a_layer_cut_keeps_every_width_and_the_vocabulary(tokenizer):
    full, cut = (qwen3_config(ARCHITECTURES["1.7b"], tokenizer, layers)
                 for layers in (None, 2))
    assert (full.num_hidden_layers, cut.num_hidden_layers) == (28, 2)
    for name in ("hidden_size", "intermediate_size", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "vocab_size"):
        assert getattr(cut, name) == getattr(full, name), name
    with pytest.raises(ValueError, match="give 1 to 28"):
        qwen3_config(ARCHITECTURES["1.7b"], tokenizer, 29)


def test_the_tokenizer_covers_every_row_and_declares_no_eos(tokenizer):
    assert len(tokenizer) == QWEN3_VOCAB
    assert tokenizer.eos_token is None and tokenizer.pad_token == "<|pad|>"
    prompt = render_prompts(tokenizer, PROBLEMS[:1], "boxed")[0]
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == prompt
    assert max(ids) < 1_000  # encoding never reaches the padding
    assert tokenizer.decode([QWEN3_VOCAB - 1]) == f"<|unused_{QWEN3_VOCAB - 1}|>"


@pytest.mark.slow
def test_a_model_without_eos_samples_every_response_to_the_cap(small_model_dir):
    tokenizer = load_tokenizer(small_model_dir)
    assert check_pair(small_model_dir, small_model_dir) == QWEN3_VOCAB
    samples = generate_hf(load_model(small_model_dir), tokenizer,
                          render_prompts(tokenizer, PROBLEMS, "boxed"),
                          SamplingConfig(max_new_tokens=24, seed=1))
    assert [(s.length, s.finish_reason) for s in samples] == [(24, "length")] * len(PROBLEMS)


@pytest.mark.vllm
@pytest.mark.slow
def test_the_vllm_worker_samples_every_response_to_the_cap_too(small_model_dir):
    from tasks.vllm_backend import VLLMBackend

    with VLLMBackend(small_model_dir, enforce_eager=True, kv_cache_gib=0.5) as backend:
        samples = backend.generate(render_prompts(backend.tokenizer, PROBLEMS, "boxed"),
                                   SamplingConfig(max_new_tokens=24, seed=1))
    assert [(s.length, s.finish_reason) for s in samples] == [(24, "length")] * len(PROBLEMS)
