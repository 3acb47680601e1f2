"""Token entropy of a model on its own responses: what evaluation reports and what the length
curriculum's gate measures on held-out prompts (one implementation, used by both stages)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

import distill_core as dc
from tasks.rollout import Sample, SamplingConfig, generate_hf
from tasks.scoring import response_batch, response_logits


@torch.no_grad()
def response_entropies(model, samples: Sequence[Sample], pad_token_id: int,
                       batch_size: int = 16, vocab_size: int | None = None) -> list[float | None]:
    """Mean per-token entropy (nats, softmax at temperature 1, full vocabulary) of each sample's
    response under model; None for an empty response. One forward pass per batch_size samples."""
    entropies: list[float | None] = []
    for start in range(0, len(samples), batch_size):
        part = samples[start : start + batch_size]
        batch = response_batch(part, pad_token_id)
        logits_BTV = response_logits(model, batch, vocab_size)
        entropy_BT = dc.token_entropy(logits_BTV)
        mask_BT = batch.response_mask_BT.to(entropy_BT.device)
        sums = (entropy_BT * mask_BT).sum(-1)
        counts = mask_BT.sum(-1)
        entropies.extend(float(s / c) if c else None for s, c in zip(sums, counts, strict=True))
    return entropies


def token_weighted_entropy(samples: Sequence[Sample], entropies: Sequence[float | None]) -> float:
    tokens = sum(s.length for s, h in zip(samples, entropies, strict=True) if h is not None)
    if not tokens:
        raise ValueError("every response is empty: no tokens to measure entropy on")
    return sum(h * s.length for s, h in zip(samples, entropies, strict=True)
               if h is not None) / tokens


def entropy_probe(model, tokenizer, prompts: list[str], max_new_tokens: int, seed: int,
                  temperature: float = 1.0, vocab_size: int | None = None) -> float:
    """Held-out entropy for the length curriculum's gate: the model samples one response per
    prompt (at most max_new_tokens), then the mean token entropy over those responses."""
    if not prompts:
        raise ValueError("entropy_probe needs held-out prompts; none were given")
    samples = generate_hf(model, tokenizer, prompts,
                          SamplingConfig(temperature=temperature, max_new_tokens=max_new_tokens,
                                         seed=seed, batch_size=len(prompts)))
    entropies = response_entropies(model, samples, tokenizer.pad_token_id, vocab_size=vocab_size)
    return token_weighted_entropy(samples, entropies)


