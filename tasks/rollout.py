"""Rollout: prompts in, sampled responses out, one interface for every generation backend.

Prompts are rendered through the tokenizer's chat template with a named prompt template (part of
every result's identity). The Hugging Face backend batches prompts with left padding, uses the
KV cache, stops at EOS and is deterministic for a given seed: each batch reseeds from
(seed, batch index), so the same call gives the same samples whatever ran before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tasks.data import Problem

# Named prompt templates; {problem} is replaced by the problem text. The default task's models
# are trained on the bare problem; real instruction-tuned models get the usual math instruction.
PROMPT_TEMPLATES = {
    "bare": "{problem}",
    "boxed": "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}.",
}

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample responses.

    n: samples per prompt. temperature: 0 means greedy. top_p: nucleus mass in (0, 1].
    max_new_tokens: response length cap (a response that hits it is "truncated").
    seed: makes sampling reproducible. batch_size: sequences per generate() call.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 128
    seed: int = 0
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n={self.n} must be >= 1 samples per prompt")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0 = greedy)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must lie in (0, 1]")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be >= 1")
        if self.temperature == 0 and self.n > 1:
            raise ValueError(f"n={self.n} greedy samples would all be identical; set "
                             "temperature > 0 or n = 1")


@dataclass(frozen=True)
class Sample:
    """One response to one prompt.

    response_ids: generated token ids, EOS included when the model stopped, no padding.
    finish_reason: "stop" (EOS) or "length" (hit max_new_tokens: truncated).
    """

    prompt_index: int
    sample_index: int
    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]
    text: str
    finish_reason: FinishReason

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"

    @property
    def length(self) -> int:
        return len(self.response_ids)


class RolloutBackend(Protocol):
    """What every generation backend offers: rendered prompt strings in, samples out, ordered by
    (prompt, sample), deterministic for a given config.seed."""

    def generate(self, prompts: list[str], config: SamplingConfig) -> list[Sample]: ...


@dataclass
class HFBackend:
    """Generation with a live transformers model. On-policy training passes the student being
    trained, so every call samples from the current weights; no hand-off is needed."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase

    def generate(self, prompts: list[str], config: SamplingConfig) -> list[Sample]:
        return generate_hf(self.model, self.tokenizer, prompts, config)


def render_prompts(
    tokenizer: PreTrainedTokenizerBase, problems: list[Problem], template: str = "bare"
) -> list[str]:
    """Chat-formatted prompt strings ending where the assistant's answer begins."""
    if template not in PROMPT_TEMPLATES:
        raise ValueError(f"prompt template {template!r} is not one of {sorted(PROMPT_TEMPLATES)}")
    if not tokenizer.chat_template:
        raise ValueError(
            f"tokenizer {tokenizer.name_or_path!r} has no chat template; use an instruct model's "
            "tokenizer or save one with a chat_template"
        )
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": PROMPT_TEMPLATES[template].format(problem=p.problem)}],
            tokenize=False,
            add_generation_prompt=True,
        )
        for p in problems
    ]


@torch.no_grad()
def generate_hf(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    config: SamplingConfig,
) -> list[Sample]:
    """Sample config.n responses per prompt with model.generate; ordered by (prompt, sample)."""
    jobs = [(p, s) for p in range(len(prompts)) for s in range(config.n)]
    samples: list[Sample] = []
    was_training = model.training
    model.eval()
    try:
        for batch_index, start in enumerate(range(0, len(jobs), config.batch_size)):
            batch = jobs[start : start + config.batch_size]
            samples.extend(_generate_batch(model, tokenizer, prompts, batch, config, batch_index))
    finally:
        model.train(was_training)
    return samples


def _generate_batch(model, tokenizer, prompts, batch, config, batch_index) -> list[Sample]:
    encoded = tokenizer(
        [prompts[p] for p, _ in batch], return_tensors="pt", padding=True,
        add_special_tokens=False,
    ).to(model.device)
    torch.manual_seed(config.seed * 1_000_003 + batch_index)
    sampling = {"do_sample": False}
    if config.temperature > 0:
        sampling = {"do_sample": True, "temperature": config.temperature, "top_p": config.top_p,
                    "top_k": 0}
    output = model.generate(
        **encoded, max_new_tokens=config.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, **sampling,
    )
    prompt_width = encoded["input_ids"].shape[1]
    samples = []
    for row, (prompt_index, sample_index) in enumerate(batch):
        prompt_ids = encoded["input_ids"][row][encoded["attention_mask"][row].bool()]
        response = _trim_response(output[row, prompt_width:].tolist(), tokenizer)
        stopped = bool(response) and response[-1] == tokenizer.eos_token_id
        samples.append(Sample(
            prompt_index=prompt_index,
            sample_index=sample_index,
            prompt_ids=tuple(prompt_ids.tolist()),
            response_ids=tuple(response),
            text=tokenizer.decode(response, skip_special_tokens=True),
            finish_reason="stop" if stopped else "length",
        ))
    return samples


def _trim_response(token_ids: list[int], tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Cut at the first EOS (kept); generate() pads finished rows after it."""
    eos = tokenizer.eos_token_id
    return token_ids[: token_ids.index(eos) + 1] if eos in token_ids else token_ids
