"""Supervised fine-tuning on worked solutions: how the default teacher and student are made.

Cross-entropy on response tokens only (the prompt is context, not a target), AdamW with linear
warm-up and cosine decay over a fixed number of steps, so a run is the same whatever the
machine's speed. Batches are plain shuffles of the examples: drawing them grouped by length
(to save padding) made each batch one kind of problem and cost a small teacher most of its
accuracy (7 % held-out greedy instead of over 20 %). Padding is saved instead by packing a
batch's examples into as few rows as its longest example allows, each attending only to
itself, which computes the same loss as one row per example (tests/tasks/test_sft.py) with
about 40 % fewer tokens on the default's 30-to-200-token examples. Progress is printed while
training, since a bootstrap takes minutes.
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
    """steps: optimiser steps. batch_size: examples per step. learning_rate: peak AdamW rate,
    reached after warmup_steps and decayed by cosine to min_lr_ratio × peak. weight_decay: AdamW.
    seed: data order. (Progress: tasks.progress, a bar or a line every 30 s.)"""

    steps: int = 650
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps={self.steps} and batch_size={self.batch_size} must be >= 1")
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


def pack(examples: list[tuple[list[int], list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """A batch packed into as few rows as its longest example allows (first fit, longest first).

    Returns input_ids and labels (-100 outside responses and on padding), position_ids that
    restart at 0 for every example, and a (rows, 1, L, L) boolean attention mask, causal within
    each example and closed between examples: every example is computed exactly as on a row of
    its own. Padding fills each row's end and is attended by nothing.
    """
    order = sorted(range(len(examples)), key=lambda i: -sum(map(len, examples[i])))
    width = sum(map(len, examples[order[0]]))
    rows: list[list[int]] = []  # example indices per row
    free: list[int] = []  # tokens left per row
    for index in order:
        length = sum(map(len, examples[index]))
        row = next((r for r, left in enumerate(free) if left >= length), len(rows))
        if row == len(rows):
            rows.append([])
            free.append(width)
        rows[row].append(index)
        free[row] -= length
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    example_of = torch.full((len(rows), width), -1, dtype=torch.long)  # -1: padding
    for row, members in enumerate(rows):
        start = 0
        for index in members:
            prompt, response = examples[index]
            end = start + len(prompt) + len(response)
            input_ids[row, start:end] = torch.tensor(prompt + response)
            labels[row, start + len(prompt):end] = torch.tensor(response)
            position_ids[row, start:end] = torch.arange(end - start)
            example_of[row, start:end] = index
            start = end
    same = (example_of[:, :, None] == example_of[:, None, :]) & (example_of[:, :, None] >= 0)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    padding = (example_of < 0)[:, :, None] & torch.eye(width, dtype=torch.bool)  # pads: itself
    return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels,
            "attention_mask": ((same & causal) | padding)[:, None]}


def shuffled_batches(count: int, batch_size: int, rng: random.Random) -> list[list[int]]:
    """One epoch of batches of example indices: a shuffle cut into batch_size slices. Examples
    past the last whole batch wait for the next epoch's shuffle."""
    order = list(range(count))
    rng.shuffle(order)
    return [order[i : i + batch_size] for i in range(0, count - batch_size + 1, batch_size)]


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
    stop: Callable[[], bool] | None = None,
    stop_every: int = 25,
    template: str = "bare",
) -> dict[str, float]:
    """Fine-tune model in place on the problems' worked solutions, prompted through template;
    returns summary metrics.

    stop: asked every stop_every steps (with the model in eval mode); training ends at the
    first True, before config.steps (sft/steps says where)."""
    examples = encode_examples(tokenizer, problems, template)
    if len(examples) < config.batch_size:
        raise ValueError(f"{len(examples)} problems cannot fill one batch of "
                         f"batch_size={config.batch_size}; give more problems or a smaller batch")
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay, betas=(0.9, 0.98))
    rng = random.Random(config.seed)
    batches: list[list[int]] = []
    model.train()
    start, tokens, loss_value = time.perf_counter(), 0, float("nan")
    with Progress(config.steps, "sft", log) as progress:
        for step in range(config.steps):
            if not batches:
                batches = shuffled_batches(len(examples), config.batch_size, rng)[::-1]
            chosen = [examples[i] for i in batches.pop()]
            batch = pack(chosen, tokenizer.pad_token_id)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate_at(step, config)
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            tokens += sum(len(prompt) + len(response) for prompt, response in chosen)
            loss_value = loss.item()
            elapsed = time.perf_counter() - start
            progress.update(note=f"loss {loss_value:.4f}  {tokens / elapsed:,.0f} tok/s")
            if stop is not None and (step + 1) % stop_every == 0 and _stopped(model, stop):
                break
    model.eval()
    return {"sft/final_loss": loss_value, "sft/tokens": float(tokens), "sft/steps": step + 1,
            "sft/seconds": time.perf_counter() - start}


def _stopped(model: PreTrainedModel, stop: Callable[[], bool]) -> bool:
    model.eval()
    try:
        return stop()
    finally:
        model.train()
