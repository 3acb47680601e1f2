"""SFT on worked solutions: packed batches compute what one row per example computes, the
epochs are plain shuffles, and a short run lowers the loss of a real tiny model."""

import random

import pytest
import torch

from tasks.models import load_model, load_tokenizer
from tasks.sft import SFTConfig, encode_examples, pack, shuffled_batches, train_sft


def _one_row_each(examples, pad_token_id):
    """The reference layout: every example right-padded on a row of its own."""
    width = max(len(p) + len(r) for p, r in examples)
    input_ids = torch.full((len(examples), width), pad_token_id)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100)
    for row, (prompt, response) in enumerate(examples):
        end = len(prompt) + len(response)
        input_ids[row, :end] = torch.tensor(prompt + response)
        attention_mask[row, :end] = 1
        labels[row, len(prompt):end] = torch.tensor(response)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@pytest.fixture(scope="module")
def model_and_examples(tiny_pair, tiny_problems):
    tokenizer = load_tokenizer(tiny_pair[0])
    return load_model(tiny_pair[0]), tokenizer, encode_examples(tokenizer, tiny_problems["train"])


def test_pack_fills_few_rows_and_keeps_every_token(model_and_examples):
    _, tokenizer, examples = model_and_examples
    batch = examples[:32]
    packed = pack(batch, tokenizer.pad_token_id)
    rows, width = packed["input_ids"].shape
    assert width == max(len(p) + len(r) for p, r in batch)
    assert rows < 32
    real = packed["input_ids"] != tokenizer.pad_token_id
    assert int(real.sum()) == sum(len(p) + len(r) for p, r in batch)
    assert int((packed["labels"] != -100).sum()) == sum(len(r) for _, r in batch)
    assert int(((packed["position_ids"] == 0) & real).sum()) == 32  # each example starts at 0


def test_packed_rows_give_the_loss_and_gradient_of_one_row_per_example(model_and_examples):
    """The block-diagonal mask closes examples off from each other: the same mean loss over
    response tokens, and the same gradient, as the unpacked batch (float rounding only)."""
    model, tokenizer, examples = model_and_examples
    batch = examples[:24]
    losses, grads = [], []
    for layout in (_one_row_each(batch, tokenizer.pad_token_id),
                   pack(batch, tokenizer.pad_token_id)):
        model.zero_grad()
        loss = model(**layout).loss
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert pack(batch, tokenizer.pad_token_id)["input_ids"].shape[0] < 24  # really packed
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


def test_an_epoch_is_a_shuffle_cut_into_whole_batches():
    batches = shuffled_batches(100, 32, random.Random(3))
    assert [len(b) for b in batches] == [32, 32, 32]
    assert len({i for b in batches for i in b}) == 96
    assert batches == shuffled_batches(100, 32, random.Random(3))  # seeded
    assert batches != shuffled_batches(100, 32, random.Random(4))


def test_a_short_sft_lowers_the_loss(tiny_pair, tiny_problems):
    model, tokenizer = load_model(tiny_pair[1]), load_tokenizer(tiny_pair[1])
    problems = tiny_problems["train"][:64]
    examples = encode_examples(tokenizer, problems)
    layout = pack(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        before = model(**layout).loss.item()
    metrics = train_sft(model, tokenizer, problems, SFTConfig(steps=20, batch_size=16,
                                                              warmup_steps=2), log=lambda _: None)
    with torch.no_grad():
        after = model(**layout).loss.item()
    assert after < before - 0.5, (before, after)  # untrained: ~ln(300) = 5.7 nats to start
    # 20 steps of 16 are five epochs of the 64 examples: every token counted five times
    assert metrics["sft/tokens"] == 5 * sum(len(p) + len(r) for p, r in examples)


def test_training_stops_at_the_first_check_that_says_so(tiny_pair, tiny_problems):
    """The stop rule is asked every stop_every steps, with the model in eval mode, and ends the
    run at its first True (the student's heal stops at a held-out accuracy this way)."""
    model, tokenizer = load_model(tiny_pair[1]), load_tokenizer(tiny_pair[1])
    asked: list[bool] = []

    def stop() -> bool:
        asked.append(model.training)
        return len(asked) == 2

    metrics = train_sft(model, tokenizer, tiny_problems["train"][:64],
                        SFTConfig(steps=50, batch_size=16, warmup_steps=2), log=lambda _: None,
                        stop=stop, stop_every=4)
    assert metrics["sft/steps"] == 8 and asked == [False, False]
    unstopped = train_sft(model, tokenizer, tiny_problems["train"][:64],
                          SFTConfig(steps=6, batch_size=16, warmup_steps=2), log=lambda _: None)
    assert unstopped["sft/steps"] == 6
