"""A model whose logits a test controls (the tiny models, the reduced embedded default and the
Prefect harness live in tests/conftest.py)."""


import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM


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
