"""Supervised fine-tuning on worked solutions: how the default teacher and student are made.

Cross-entropy on response tokens only (the prompt is context, not a target), AdamW with linear
warm-up and cosine decay over a fixed number of steps, so a run is the same whatever the
machine's speed. Batches are drawn by length (shuffle, sort windows of a few batches by length,
shuffle the batches), because the default's answers run from 26 to 250 tokens and a randomly
drawn batch would be half padding. Progress is printed while training, since a bootstrap takes
minutes.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tasks.data import Problem
from tasks.progress import Progress
from tasks.rollout import render_prompts


@dataclass(frozen=True)
class SFTConfig:
    """steps: optimiser steps. batch_size: sequences per step. learning_rate: peak AdamW rate,
    reached after warmup_steps and decayed by cosine to min_lr_ratio × peak. weight_decay: AdamW.
    length_window: batches whose examples are sorted by length together (1: plain shuffle).
    seed: data order and dropout. (Progress: tasks.progress, a bar or a line every 30 s.)"""

    steps: int = 650
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    length_window: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps={self.steps} and batch_size={self.batch_size} must be >= 1")
        if self.length_window < 1:
            raise ValueError(f"length_window={self.length_window} must be >= 1 (1: no grouping)")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate={self.learning_rate} must be > 0")


def encode_examples(
    tokenizer: PreTrainedTokenizerBase, problems: list[Problem], template: str = "bare"
) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids) per problem; the response is the solution followed by EOS."""
    missing = [p.id for p in problems if not p.solution]
    if missing:
        raise ValueError(
            f"SFT needs worked solutions; {len(missing)} problems have none (first: {missing[0]})"
        )
    prompts = render_prompts(tokenizer, problems, template)
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer([p.solution for p in problems], add_special_tokens=False)["input_ids"]
    return [(p, r + [tokenizer.eos_token_id]) for p, r in zip(prompt_ids, response_ids,
                                                               strict=True)]


def collate(
    examples: list[tuple[list[int], list[int]]], pad_token_id: int
) -> dict[str, torch.Tensor]:
    """Right-padded input_ids / attention_mask, labels = -100 outside responses."""
    width = max(len(p) + len(r) for p, r in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for row, (prompt, response) in enumerate(examples):
        length = len(prompt) + len(response)
        input_ids[row, :length] = torch.tensor(prompt + response)
        attention_mask[row, :length] = 1
        labels[row, len(prompt):length] = torch.tensor(response)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def length_grouped_batches(lengths: list[int], batch_size: int, length_window: int,
                           rng: random.Random) -> list[list[int]]:
    """One epoch of batches (example indices) that pad little: shuffle, sort each window of
    length_window × batch_size examples by length, cut it into batches, shuffle the batches.
    Examples past the last whole batch wait for the next epoch's shuffle."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    span = batch_size * length_window
    batches = []
    for start in range(0, len(order), span):
        window = sorted(order[start : start + span], key=lengths.__getitem__)
        batches += [window[i : i + batch_size]
                    for i in range(0, len(window) - batch_size + 1, batch_size)]
    rng.shuffle(batches)
    return batches


def learning_rate_at(step: int, config: SFTConfig) -> float:
    """Linear warm-up to the peak, then cosine decay to min_lr_ratio × peak at config.steps."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return config.learning_rate * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def train_sft(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: list[Problem],
    config: SFTConfig,
    log: Callable[[str], None] = print,
) -> dict[str, float]:
    """Fine-tune model in place on the problems' worked solutions; returns summary metrics."""
    examples = encode_examples(tokenizer, problems)
    if len(examples) < config.batch_size:
        raise ValueError(f"{len(examples)} problems cannot fill one batch of "
                         f"batch_size={config.batch_size}; give more problems or a smaller batch")
    lengths = [len(p) + len(r) for p, r in examples]
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay, betas=(0.9, 0.98))
    rng = random.Random(config.seed)
    batches: list[list[int]] = []
    model.train()
    start, tokens, loss_value = time.perf_counter(), 0, float("nan")
    progress = Progress(config.steps, "sft", log)
    for step in range(config.steps):
        if not batches:
            batches = length_grouped_batches(lengths, config.batch_size, config.length_window,
                                             rng)
        batch = collate([examples[i] for i in batches.pop()], tokenizer.pad_token_id)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step, config)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(batch["attention_mask"].sum())
        loss_value = loss.item()
        elapsed = time.perf_counter() - start
        progress.update(note=f"loss {loss_value:.4f}  {tokens / elapsed:,.0f} tok/s")
    progress.close()
    model.eval()
    return {"sft/final_loss": loss_value, "sft/tokens": float(tokens),
            "sft/seconds": time.perf_counter() - start}
