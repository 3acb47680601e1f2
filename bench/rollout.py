"""Rollout and teacher-scoring benchmark: the tables in docs/rollout-and-scoring.md.

HF generation tokens/s at batch 1 vs 32, teacher scoring tokens/s, score-cache bytes per token
against full-vocabulary fp16 logits, the KL error of the cached (top-k + tail) teacher against
live scoring, and the teacher forward passes a second (cached) scoring run makes.

    python -m bench.rollout [--tiny-teacher DIR --tiny-student DIR] [--skip-smollm2]

Without directories it bootstraps (or reuses) the embedded default. Generated tokens/s counts
new tokens only (EOS included), sampled at temperature 1 with a fixed seed so lengths are alike.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import distill_core as dc
from tasks.compute import ComputeMeter
from tasks.data import load_problems, read_problems
from tasks.models import load_model, load_tokenizer
from tasks.rollout import SamplingConfig, generate_hf, render_prompts
from tasks.scoring import (
    ScoreCacheConfig,
    build_score_cache,
    response_batch,
    response_logits,
    score_live,
)


def generation_rate(model, tokenizer, prompts, batch_size, max_new_tokens) -> float:
    config = SamplingConfig(temperature=1.0, max_new_tokens=max_new_tokens, seed=0,
                            batch_size=batch_size)
    generate_hf(model, tokenizer, prompts[:batch_size], config)  # warm-up
    start = time.perf_counter()
    samples = generate_hf(model, tokenizer, prompts, config)
    return sum(s.length for s in samples) / (time.perf_counter() - start)


def scoring_rate(teacher, tokenizer, samples, batch_size=32) -> float:
    start, tokens = time.perf_counter(), 0
    for first in range(0, len(samples), batch_size):
        batch = response_batch(samples[first : first + batch_size], tokenizer.pad_token_id)
        score_live(teacher, batch, len(tokenizer))
        tokens += batch.num_tokens
    return tokens / (time.perf_counter() - start)


def cache_fidelity(teacher, student, tokenizer, samples, root, ks) -> list[tuple]:
    """(k, bytes/token, forward KL rel. error, reverse KL rel. error) against live scoring."""
    batch = response_batch(samples, tokenizer.pad_token_id)
    vocab = len(tokenizer)
    with torch.no_grad():
        teacher_logits = score_live(teacher, batch, vocab)
        student_logits = response_logits(student, batch, vocab)
    live_forward, live_reverse, _ = dc.kl_terms(student_logits, teacher_logits)
    mask = batch.response_mask_BT
    rows = []
    for k in ks:
        scores = build_score_cache(lambda: teacher, "bench-teacher", samples,
                                   tokenizer.pad_token_id, vocab, ScoreCacheConfig(k=k),
                                   root=root)
        logprobs, ids = scores.batch(range(len(samples)), batch)
        forward, reverse = dc.sparse_kl_terms(student_logits, logprobs, ids)
        rows.append((k, scores.bytes_per_token(),
                     float((live_forward - forward)[mask].abs().sum() / live_forward[mask].sum()),
                     float((live_reverse - reverse)[mask].abs().sum() / live_reverse[mask].sum())))
    return rows


def cached_rerun_forwards(teacher_dir, tokenizer, samples, root) -> tuple[int, int]:
    """Teacher forward passes of a first and a second scoring run over the same rollouts."""
    counts = []
    for _ in range(2):
        meter = ComputeMeter(0, 1)
        build_score_cache(lambda: load_model(teacher_dir), f"bench:{teacher_dir}", samples,
                          tokenizer.pad_token_id, len(tokenizer), ScoreCacheConfig(k=20),
                          root=root, meter=meter)
        counts.append(meter.tokens["teacher_score"])
    return counts[0], counts[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny-teacher", type=Path)
    parser.add_argument("--tiny-student", type=Path)
    parser.add_argument("--problems", type=Path, help="held_out.jsonl of the default task")
    parser.add_argument("--skip-smollm2", action="store_true")
    parser.add_argument("--root", type=Path, default=Path("artifacts/bench"))
    args = parser.parse_args()
    if args.tiny_teacher is None:
        from tasks.bootstrap import bootstrap_default
        default = bootstrap_default()
        args.tiny_teacher, args.tiny_student = default.teacher_dir, default.student_dir
        args.problems = default.split("held_out")
    problems = read_problems(args.problems)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    tokenizer = load_tokenizer(args.tiny_teacher)
    teacher, student = load_model(args.tiny_teacher), load_model(args.tiny_student)
    prompts = render_prompts(tokenizer, problems[:64])
    one = generation_rate(teacher, tokenizer, prompts[:16], 1, 96)
    many = generation_rate(teacher, tokenizer, prompts[:64], 32, 96)
    print(f"| tiny default teacher (1.05M) | HF generate | {one:,.0f} tok/s | {many:,.0f} tok/s "
          f"| {many / one:.1f}× |")
    samples = generate_hf(teacher, tokenizer, prompts, SamplingConfig(temperature=1.0, seed=0,
                                                                      max_new_tokens=96))
    print(f"| tiny default teacher | scoring (prompt + response) | "
          f"{scoring_rate(teacher, tokenizer, samples):,.0f} tok/s |")
    first, second = cached_rerun_forwards(args.tiny_teacher, tokenizer, samples,
                                          args.root / "rerun")
    print(f"teacher forward tokens: first scoring run {first:,}, second (cached) run {second:,}")
    print(f"full-vocabulary fp16 row: {2 * len(tokenizer):,} bytes/token (V = {len(tokenizer)})")
    for k, size, forward, reverse in cache_fidelity(teacher, student, tokenizer, samples,
                                                    args.root / "fidelity", (1, 5, 20, 100)):
        print(f"| k = {k} | {size:.0f} bytes/token | {2 * len(tokenizer) / size:.1f}× smaller "
              f"| forward KL error {forward:.2%} | reverse KL error {reverse:.2%} |")

    if args.skip_smollm2:
        return
    from tasks.bootstrap import smollm2_teacher
    teacher_dir = smollm2_teacher()
    tokenizer = load_tokenizer(teacher_dir)
    model = load_model(teacher_dir)
    problems = load_problems("reasoning_gym:gsm_symbolic", size=32, seed=0).problems
    prompts = render_prompts(tokenizer, problems, "boxed")
    one = generation_rate(model, tokenizer, prompts[:2], 1, 32)
    many = generation_rate(model, tokenizer, prompts[:32], 32, 32)
    print(f"| SmolLM2-135M | HF generate | {one:,.1f} tok/s | {many:,.1f} tok/s "
          f"| {many / one:.1f}× |")
    samples = generate_hf(model, tokenizer, prompts[:16], SamplingConfig(temperature=1.0,
                                                                         max_new_tokens=32))
    print(f"| SmolLM2-135M | scoring (prompt + response) | "
          f"{scoring_rate(model, tokenizer, samples, 16):,.0f} tok/s |")
    scores = build_score_cache(lambda: model, "bench-smollm2", samples, tokenizer.pad_token_id,
                               len(tokenizer), ScoreCacheConfig(k=20), root=args.root / "smol")
    print(f"SmolLM2 cache k=20: {scores.bytes_per_token():.0f} bytes/token vs "
          f"{2 * len(tokenizer):,} for fp16 logits (V = {len(tokenizer):,})")


if __name__ == "__main__":
    main()
