"""Rollout: prompts in, sampled responses out, one interface for every generation backend.

Prompts are rendered through the tokenizer's chat template with a named prompt template (part of
every result's identity). The Hugging Face backend batches prompts with left padding, uses the
KV cache, stops at EOS and is deterministic for a given seed: each batch reseeds from
(seed, batch index), so the same call gives the same samples whatever ran before.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Protocol

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tasks.compute import ComputeMeter
from tasks.data import Problem
from tasks.files import atomic_open
from tasks.progress import Progress

log = logging.getLogger(__name__)

# Named prompt templates; {problem} is replaced by the problem text. The default task's models
# are trained on the bare problem; real instruction-tuned models get the usual math instruction.
PROMPT_TEMPLATES = {
    "bare": "{problem}",
    "boxed": "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}.",
    "worked-example": "{problem}",
    "three-worked-examples": "{problem}",
}
# Chat turns shown before the problem, as (user, assistant) pairs through the same template. A
# 135M instruct model does not follow "put your final answer within \boxed{}" (SmolLM2 boxed 0 of
# 10 GSM answers and wrote prose to the cap at temperature 1); one worked example of the answer's
# form as an earlier turn makes it answer in that form (docs/real-weights.md measures it).
_ASK = "State the final answer to the following arithmetic problem:"
WORKED_EXAMPLES: dict[str, tuple[tuple[str, str], ...]] = {
    "worked-example": ((f"{_ASK} 12 + 7 =", "12 + 7 = 19. The answer is \\boxed{19}."),),
    "three-worked-examples": (
        (f"{_ASK} 12 + 7 =", "12 + 7 = 19. The answer is \\boxed{19}."),
        (f"{_ASK} 3 - 8 =", "3 - 8 = -5. The answer is \\boxed{-5}."),
        (f"{_ASK} 6 + 9 =", "6 + 9 = 15. The answer is \\boxed{15}."),
    ),
}

FinishReason = Literal["stop", "length"]

# Tokens of the text this project meets span about 4 characters, rarely more than 16: a prompt's
# last 16 × context characters hold every token its context can keep. Tokenising no more than
# that bounds what one huge prompt costs (a 50 MB problem, tokenised whole, took 15.7 GB).
CHARS_PER_TOKEN_BOUND = 16


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample responses.

    n: samples per prompt. temperature: 0 means greedy. top_p: nucleus mass in (0, 1].
    max_new_tokens: response length cap (a response that hits it is "truncated").
    seed: makes sampling reproducible. batch_size: sequences per generate() call.
    strict_context: a prompt too long for the model's context is an error (default: cut it
    from the left with a warning; Sample.prompt_truncated counts the tokens cut).
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 128
    seed: int = 0
    batch_size: int = 32
    strict_context: bool = False  # refuse prompts too long for the context instead of cutting

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
    # prompt tokens cut from the left to fit the context (of a prompt over text_budget, those
    # of the end that was tokenised)
    prompt_truncated: int = 0

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"

    @property
    def length(self) -> int:
        return len(self.response_ids)


class RolloutBackend(Protocol):
    """What every generation backend offers: rendered prompt strings in, samples out, ordered by
    (prompt, sample), deterministic for a given config.seed."""

    def generate(self, prompts: list[str], config: SamplingConfig,
                 progress: Progress | None = None) -> list[Sample]: ...


@dataclass
class HFBackend:
    """Generation with a live transformers model. On-policy training passes the student being
    trained, so every call samples from the current weights; no hand-off is needed."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase

    def generate(self, prompts: list[str], config: SamplingConfig,
                 progress: Progress | None = None) -> list[Sample]:
        return generate_hf(self.model, self.tokenizer, prompts, config, progress=progress)


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
        tokenizer.apply_chat_template(chat_messages(p.problem, template), tokenize=False,
                                      add_generation_prompt=True)
        for p in problems
    ]


def chat_messages(problem: str, template: str) -> list[dict[str, str]]:
    """The chat a problem is asked in: the template's worked examples, then the problem."""
    instruction = PROMPT_TEMPLATES[template]
    messages = []
    for question, answer in WORKED_EXAMPLES.get(template, ()):
        messages += [{"role": "user", "content": instruction.format(problem=question)},
                     {"role": "assistant", "content": answer}]
    return [*messages, {"role": "user", "content": instruction.format(problem=problem)}]


def text_budget(context_length: int) -> int:
    """The most characters of one text that are tokenised for a model of this context."""
    return CHARS_PER_TOKEN_BOUND * context_length


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[str], context_length: int,
                   strict: bool = False) -> list[list[int]]:
    """Each prompt's token ids; of a prompt longer than text_budget(context_length) characters
    only its end that long is tokenised (``fit_prompts`` cuts further from the left), or with
    strict such a prompt is refused."""
    budget = text_budget(context_length)
    long = [index for index, prompt in enumerate(prompts) if len(prompt) > budget]
    if long and strict:
        raise ValueError(f"prompt {long[0]} has {len(prompts[long[0]]):,} characters, far more "
                         f"than the model's context of {context_length} tokens holds; shorten "
                         "it, or set strict_context=False to cut it from the left")
    if long:
        log.warning("%d of %d prompts are over %d characters: only their last %d are tokenised",
                    len(long), len(prompts), budget, budget)
    return tokenizer([prompt[-budget:] for prompt in prompts],
                     add_special_tokens=False)["input_ids"]


def fit_prompts(
    prompt_ids: list[list[int]], context_length: int, max_new_tokens: int, strict: bool = False
) -> tuple[list[list[int]], list[int]]:
    """Prompts cut from the left so prompt + max_new_tokens fits the model's context.

    Returns (prompts, tokens dropped per prompt). strict=True raises instead of cutting.
    """
    limit = context_length - max_new_tokens
    if limit < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the "
                         f"model's context of {context_length} tokens")
    fitted, dropped = [], []
    for index, ids in enumerate(prompt_ids):
        excess = max(0, len(ids) - limit)
        if excess and strict:
            raise ValueError(
                f"prompt {index} has {len(ids)} tokens; with max_new_tokens={max_new_tokens} "
                f"the model's context of {context_length} allows {limit}. Shorten the prompt, "
                "lower max_new_tokens, or set strict_context=False to cut it from the left"
            )
        fitted.append(ids[excess:])
        dropped.append(excess)
    if any(dropped):
        log.warning("%d of %d prompts were longer than %d tokens and were cut from the left",
                    sum(1 for d in dropped if d), len(dropped), limit)
    return fitted, dropped


def context_length(model: PreTrainedModel) -> int:
    """The longest sequence the model takes (its max_position_embeddings)."""
    return int(getattr(model.config, "max_position_embeddings", None) or 1 << 30)


@torch.no_grad()
def generate_hf(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    config: SamplingConfig,
    meter: ComputeMeter | None = None,
    progress: Progress | None = None,
) -> list[Sample]:
    """Sample config.n responses per prompt with model.generate; ordered by (prompt, sample).

    Prompts longer than the context allows are cut from the left (Sample.prompt_truncated
    says by how much) or, with config.strict_context, refused. progress counts samples.
    """
    context = context_length(model)
    encoded = encode_prompts(tokenizer, prompts, context, config.strict_context)
    prompt_ids, dropped = fit_prompts(encoded, context, config.max_new_tokens,
                                      config.strict_context)
    jobs = [(p, s) for p in range(len(prompts)) for s in range(config.n)]
    samples: list[Sample] = []
    was_training = model.training
    model.eval()
    try:
        for batch_index, start in enumerate(range(0, len(jobs), config.batch_size)):
            batch = jobs[start : start + config.batch_size]
            samples.extend(_generate_batch(model, tokenizer, prompt_ids, dropped, batch, config,
                                           batch_index))
            if progress is not None:
                progress.update(len(batch))
    finally:
        model.train(was_training)
    if meter is not None:
        meter.generate(sum(len(s.prompt_ids) + len(s.response_ids) for s in samples))
    return samples


def _left_padded(rows: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, ids in enumerate(rows):
        if ids:
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            attention_mask[row, width - len(ids):] = 1
    return input_ids, attention_mask


def _generate_batch(model, tokenizer, prompt_ids, dropped, batch, config,
                    batch_index) -> list[Sample]:
    input_ids, attention_mask = _left_padded([prompt_ids[p] for p, _ in batch],
                                             tokenizer.pad_token_id)
    torch.manual_seed(config.seed * 1_000_003 + batch_index)
    sampling = {"do_sample": False}
    if config.temperature > 0:
        sampling = {"do_sample": True, "temperature": config.temperature, "top_p": config.top_p,
                    "top_k": 0}
    output = model.generate(
        input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device),
        max_new_tokens=config.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, **sampling,
    )
    samples = []
    for row, (prompt_index, sample_index) in enumerate(batch):
        response = _trim_response(output[row, input_ids.shape[1]:].tolist(), tokenizer)
        stopped = bool(response) and response[-1] == tokenizer.eos_token_id
        samples.append(Sample(
            prompt_index=prompt_index,
            sample_index=sample_index,
            prompt_ids=tuple(prompt_ids[prompt_index]),
            response_ids=tuple(response),
            text=tokenizer.decode(response, skip_special_tokens=True),
            finish_reason="stop" if stopped else "length",
            prompt_truncated=dropped[prompt_index],
        ))
    return samples


def _trim_response(token_ids: list[int], tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Cut at the first EOS (kept); generate() pads finished rows after it."""
    eos = tokenizer.eos_token_id
    return token_ids[: token_ids.index(eos) + 1] if eos in token_ids else token_ids


def write_samples(samples: list[Sample], path: str | Path) -> Path:
    """Samples as JSONL, whole or not at all (tasks.files)."""
    path = Path(path)
    with atomic_open(path) as handle:
        for sample in samples:
            handle.write(json.dumps(asdict(sample)) + "\n")
    return path


def read_samples(path: str | Path) -> list[Sample]:
    samples = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            try:
                record = json.loads(line)
                record["prompt_ids"] = tuple(record["prompt_ids"])
                record["response_ids"] = tuple(record["response_ids"])
                samples.append(Sample(**record))
            except (json.JSONDecodeError, KeyError, TypeError, RecursionError) as error:
                raise ValueError(f"{path}:{line_number}: not a rollout sample "
                                 f"({type(error).__name__}: {error})") from error
    return samples


def teacher_rollouts(
    teacher_dir: str | Path,
    student_dir: str | Path,
    problems: list[Problem],
    config: SamplingConfig,
    template: str = "bare",
    root: str | Path | None = None,
    meter: ComputeMeter | None = None,
    log: Callable[[str], None] = print,
) -> tuple[Path, list[Sample]]:
    """The teacher's responses to problems, generated once and reused by every teacher-prefix
    cell and run (content-addressed by teacher, problems, template, sampling and code).

    The teacher/student pair is checked first: a mismatched vocabulary fails before any
    generation.
    """
    from tasks.artifacts import cached_build, code_version, content_hash, file_hash
    from tasks.models import check_pair, load_model, load_tokenizer

    check_pair(teacher_dir, student_dir)
    key = content_hash(file_hash(teacher_dir), [asdict(p) for p in problems], template, config,
                       code_version(["tasks.rollout"]))

    def build(out: Path) -> None:
        tokenizer = load_tokenizer(teacher_dir)
        # counted in problems when each has one response (every teacher-prefix run's case)
        unit = "problems" if config.n == 1 else f"samples ({config.n} per problem)"
        with Progress(len(problems) * config.n, "teacher rollouts", log, unit=unit,
                      uneven=f"a batch of {config.batch_size} takes as long as its longest "
                      "answer") as progress:
            samples = generate_hf(load_model(teacher_dir), tokenizer,
                                  render_prompts(tokenizer, problems, template), config, meter,
                                  progress)
        write_samples(samples, out / "samples.jsonl")

    directory, _ = cached_build("rollouts/teacher", key, build, root=root,
                                describe={"teacher": str(teacher_dir), "template": template,
                                          "sampling": config, "problems": len(problems)},
                                log=log)
    return directory, read_samples(directory / "samples.jsonl")
