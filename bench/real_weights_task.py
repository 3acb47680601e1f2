"""Which task can SmolLM2-135M-Instruct teach? The measurement behind the real-weights profile.

For each candidate (a problem generator, its settings and a prompt template) the teacher answers
--problems generated problems once at temperature 1, as a study's evaluation samples it, and the
table gives its strict accuracy (the rule Avg@k counts: a box or ``####``) with a 95 % Wilson
interval, the share of answers the strict rule could read at all, the share cut at the cap and
the wall time. The profile needs a candidate whose accuracy is at least 0.30 with its answers in
a form the grader reads (docs/real-weights.md).

    python -m bench.real_weights_task [--root DIR] [--problems 64] [--seed 1]
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass, field

from bench.step_breakdown import load_average
from tasks.bootstrap import CHAIN_SUM_DIGITS, smollm2_teacher
from tasks.data import load_problems
from tasks.grader import Grader
from tasks.models import load_model, load_tokenizer
from tasks.rollout import SamplingConfig, generate_hf, render_prompts


@dataclass(frozen=True)
class Candidate:
    label: str
    generator: str
    template: str
    max_new_tokens: int
    options: dict = field(default_factory=dict)


TWO_DIGITS = {**CHAIN_SUM_DIGITS, "max_digits": 2}
CANDIDATES = (
    Candidate("GSM-style word problems, instruction to box (the old profile)", "gsm_symbolic",
              "boxed", 256),
    Candidate("one-digit sums, bare question", "chain_sum", "bare", 64, CHAIN_SUM_DIGITS),
    Candidate("one-digit sums, instruction to box", "chain_sum", "boxed", 64, CHAIN_SUM_DIGITS),
    Candidate("one-digit sums, one worked example (the profile)", "chain_sum",
              "worked-example", 64, CHAIN_SUM_DIGITS),
    Candidate("one-digit sums, three worked examples", "chain_sum", "three-worked-examples", 64,
              CHAIN_SUM_DIGITS),
    Candidate("one- and two-digit sums, one worked example", "chain_sum", "worked-example", 64,
              TWO_DIGITS),
    Candidate("basic_arithmetic, two terms of 1-2 digits, one worked example",
              "basic_arithmetic", "worked-example", 64,
              {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2,
               "operators": ("+", "-")}),
)


def wilson(successes: int, count: int, z: float = 1.96) -> tuple[float, float]:
    """The 95 % Wilson score interval of a proportion."""
    share = successes / count
    centre = (share + z * z / (2 * count)) / (1 + z * z / count)
    half = z * math.sqrt(share * (1 - share) / count + z * z / (4 * count * count)) / (
        1 + z * z / count)
    return centre - half, centre + half


def measure(model, tokenizer, candidate: Candidate, problems: int, seed: int,
            grader: Grader) -> str:
    found = load_problems(f"reasoning_gym:{candidate.generator}", size=problems, seed=seed,
                          generator_options=candidate.options).problems
    started = time.perf_counter()
    samples = generate_hf(model, tokenizer, render_prompts(tokenizer, found, candidate.template),
                          SamplingConfig(temperature=1.0, max_new_tokens=candidate.max_new_tokens,
                                         batch_size=64, seed=seed))
    seconds = time.perf_counter() - started
    grades = grader.grade([s.text for s in samples], [p.answer for p in found])
    right = sum(g.strict_correct for g in grades)
    low, high = wilson(right, len(grades))
    read = sum(g.strict_answer is not None for g in grades) / len(grades)
    cut = sum(s.finish_reason == "length" for s in samples) / len(samples)
    return (f"| {candidate.label} | `{candidate.template}` | {right / len(grades):.3f} "
            f"[{low:.3f}, {high:.3f}] | {read:.0%} | {cut:.0%} | {seconds:.0f} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="artifact root (default $DISTILL_LAB_ARTIFACTS)")
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1, help="problems and sampling (the "
                        "profile's own problems come from seed 0)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    teacher_dir = smollm2_teacher(args.root, log=lambda line: None)
    model, tokenizer = load_model(teacher_dir), load_tokenizer(teacher_dir)
    print(f"SmolLM2-135M-Instruct, {args.problems} problems each, one answer at temperature 1 "
          f"(load before: {load_average()})\n")
    print("| task and prompt | template | strict accuracy [95 %] | answers read | cut at cap "
          "| time |\n|---|---|---|---|---|---|")
    with Grader() as grader:
        for candidate in CANDIDATES:
            print(measure(model, tokenizer, candidate, args.problems, args.seed, grader),
                  flush=True)
    print(f"\nload after: {load_average()}")


if __name__ == "__main__":
    main()
