"""Tokenizer and model building, loading through from_pretrained, and the pairing check."""

import pytest
import torch

from tasks.models import (
    TinyModelConfig,
    build_tiny_model,
    build_tokenizer,
    check_compatible,
    load_model,
    load_tokenizer,
    non_embedding_parameters,
)

TEXTS = ["Mia has 12 books. She drops 5. How many books now?\nhas 12 = 210\n\\boxed{7}"] * 20
SHAPE = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(TEXTS, vocab_size=300)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("tiny")
    build_tiny_model(SHAPE, tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_digits_are_single_tokens(tokenizer):
    ids = tokenizer("x 4096", add_special_tokens=False)["input_ids"]
    pieces = tokenizer.convert_ids_to_tokens(ids)
    assert pieces[-4:] == ["4", "0", "9", "6"]


def test_chat_template_ends_turns_with_eos(tokenizer):
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "\\boxed{2}"}],
        tokenize=False)
    assert text == ("<|im_start|>user\n1+1?<|im_end|>\n"
                    "<|im_start|>assistant\n\\boxed{2}<|im_end|>\n")
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.padding_side == "left"


def test_round_trip_through_from_pretrained(saved, tokenizer):
    model = load_model(saved)
    loaded = load_tokenizer(saved)
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert loaded.chat_template == tokenizer.chat_template
    assert model.config.vocab_size == len(tokenizer)
    ids = torch.tensor([loaded("has 12", add_special_tokens=False)["input_ids"]])
    fresh = build_tiny_model(SHAPE, tokenizer)
    torch.testing.assert_close(model(ids).logits, fresh(ids).logits)  # same seed, same weights
    assert non_embedding_parameters(model) < sum(p.numel() for p in model.parameters())


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "no-such-model")


def test_model_directory_without_tokenizer_is_a_clear_error(tmp_path, tokenizer):
    build_tiny_model(SHAPE, tokenizer).save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="has no tokenizer"):
        load_tokenizer(tmp_path)


def test_offline_hub_miss_never_downloads(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE=1 forbids downloading"):
        load_tokenizer("distill-lab-tests/not-a-real-model")


def test_padded_embedding_rows_are_allowed(tokenizer):
    assert check_compatible(tokenizer, tokenizer, len(tokenizer) + 64, len(tokenizer)) == len(
        tokenizer)


def test_different_vocabularies_are_named(tokenizer):
    other = build_tokenizer(["completely different words " * 5, "zebra quartz"], vocab_size=280)
    with pytest.raises(ValueError, match="vocabularies differ"):
        check_compatible(tokenizer, other, len(tokenizer), len(other))


def test_different_special_tokens_are_named(tokenizer, saved):
    other = load_tokenizer(saved)
    other.pad_token = other.eos_token
    with pytest.raises(ValueError, match="pad_token: teacher '<|pad|>' vs student '<|im_end|>'"):
        check_compatible(tokenizer, other, len(tokenizer), len(other))


def test_too_few_embedding_rows_are_named(tokenizer):
    with pytest.raises(ValueError, match="student model has 10 embedding rows"):
        check_compatible(tokenizer, tokenizer, len(tokenizer), 10)


def test_bad_model_shape_names_the_field():
    with pytest.raises(ValueError, match="divisible by num_heads=3"):
        TinyModelConfig(hidden_size=32, num_heads=3)
