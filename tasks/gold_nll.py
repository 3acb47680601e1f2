"""Gold NLL: how surprised a model is by a benchmark's reference worked solutions.

For every problem that carries a worked solution (``Problem.solution``), the model reads the
prompt exactly as sampling renders and encodes it (same chat template, same prompt template),
followed by the solution and EOS — the target SFT trains on — and each solution token's negative
log-likelihood (nats, softmax at temperature 1, teacher-forced) is taken from one forward pass
(``tasks.scoring.response_batch`` / ``response_logits``, batched like ``tasks.entropy``). The
tokens are split in two:

- **answer digits**: tokens whose decoded text, whitespace aside, is all digits 0–9. In the
  embedded default every digit of a solution is determined by the problem (the operands copied
  from the story, each column's result, the boxed total): exactly one continuation is right;
- **other**: everything else (echoed words, which of the valid forms a step takes, the box,
  EOS), where several continuations are right.

Learning the task lowers the first; sharpening alone (lower entropy, the same mode) does not, and
raises both wherever the model's mode is not the reference's. Reported per benchmark as
``gold_nll_digits`` / ``gold_nll_other`` (mean nats per token, token-weighted over problems,
like entropy) and ``gold_nll_problems``; a benchmark without worked solutions reports none of
them (absent, not 0). A solution longer than the room the model's context leaves after its
prompt is scored on its first tokens that fit; a prompt that fills the context is not scored
(``gold_nll_problems`` counts the problems that were).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

import distill_core as dc
from tasks.data import Problem
from tasks.rollout import Sample, context_length, encode_prompts, text_budget
from tasks.scoring import response_batch, response_logits


@dataclass(frozen=True)
class GoldNLL:
    """One problem's NLL of its reference solution, summed (nats) over each kind of token."""

    benchmark: str
    problem_id: str
    digit_tokens: int
    digit_nll: float  # Σ −log q(token) over the answer-digit tokens
    other_tokens: int
    other_nll: float  # Σ −log q(token) over every other token (EOS included)


def is_answer_digit(text: str) -> bool:
    """A token's decoded text is all ASCII digits once whitespace is set aside."""
    text = text.strip()
    return bool(text) and text.isascii() and text.isdigit()


def gold_samples(tokenizer, problems: Sequence[Problem], prompts: Sequence[str],
                 context: int) -> list[Sample]:
    """The problems that have a worked solution as teacher-forced samples: the prompt encoded
    as ``generate_hf`` encodes it, the solution + EOS as the response (cut to fit context)."""
    chosen = [(i, p) for i, p in enumerate(problems) if p.solution]
    if not chosen:
        return []
    prompt_ids = encode_prompts(tokenizer, [prompts[i] for i, _ in chosen], context)
    # a solution is scored on its first tokens that fit: its start is all that is tokenised
    solution_ids = tokenizer([p.solution[:text_budget(context)] for _, p in chosen],
                             add_special_tokens=False)["input_ids"]
    samples = []
    for (index, problem), prompt, solution in zip(chosen, prompt_ids, solution_ids, strict=True):
        response = (solution + [tokenizer.eos_token_id])[: max(0, context - len(prompt))]
        if prompt and response:
            samples.append(Sample(index, 0, tuple(prompt), tuple(response), problem.solution,
                                  "stop"))
    return samples


@torch.no_grad()
def gold_nll(model, tokenizer, benchmark: str, problems: Sequence[Problem],
             prompts: Sequence[str], batch_size: int = 16) -> list[GoldNLL]:
    """Each worked solution's NLL under model, split into answer digits and other tokens (see
    the module docstring); [] when no problem has a solution. prompts: the rendered prompts,
    one per problem (``tasks.rollout.render_prompts``)."""
    samples = gold_samples(tokenizer, problems, prompts, context_length(model))
    known: dict[int, bool] = {}  # token id -> is it an answer digit (decoded once)
    rows: list[GoldNLL] = []
    for start in range(0, len(samples), batch_size):
        part = samples[start : start + batch_size]
        batch = response_batch(part, tokenizer.pad_token_id)
        nll_BT = -dc.sampled_token_logprobs(response_logits(model, batch),
                                            batch.response_ids_BT.to(model.device)).cpu()
        for row, sample in enumerate(part):
            rows.append(_split(benchmark, problems[sample.prompt_index].id,
                               nll_BT[row, : sample.length].tolist(),
                               answer_digit_flags(tokenizer, sample.response_ids, known)))
    return rows


def answer_digit_flags(tokenizer, token_ids: Sequence[int], known: dict[int, bool]) -> list[bool]:
    """For each token id, whether it decodes to an answer digit; known caches the decoding of
    every id seen (pass the same dict across calls)."""
    for token in token_ids:
        if token not in known:
            known[token] = is_answer_digit(tokenizer.decode([token]))
    return [known[token] for token in token_ids]


def _split(benchmark: str, problem_id: str, nll: list[float], digits: list[bool]) -> GoldNLL:
    """One solution's token NLLs summed over its answer digits and over its other tokens."""
    digit = [x for x, is_digit in zip(nll, digits, strict=True) if is_digit]
    other = [x for x, is_digit in zip(nll, digits, strict=True) if not is_digit]
    return GoldNLL(benchmark, problem_id, len(digit), sum(digit), len(other), sum(other))


def gold_nll_metrics(rows: Sequence[GoldNLL]) -> dict[str, float]:
    """``gold_nll_digits`` and ``gold_nll_other`` (mean nats per token of each kind,
    token-weighted over problems) and ``gold_nll_problems``; {} without rows. A kind with no
    tokens at all is left out rather than reported as 0."""
    if not rows:
        return {}
    metrics = {"gold_nll_problems": float(len(rows))}
    digit_tokens = sum(r.digit_tokens for r in rows)
    other_tokens = sum(r.other_tokens for r in rows)
    if digit_tokens:
        metrics["gold_nll_digits"] = sum(r.digit_nll for r in rows) / digit_tokens
    if other_tokens:
        metrics["gold_nll_other"] = sum(r.other_nll for r in rows) / other_tokens
    return metrics
