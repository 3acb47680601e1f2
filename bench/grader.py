"""Benchmark: the grader's throughput (answers/s) and its agreement on the labelled suite.

Two workloads, both graded by one warm Grader (start-up is timed apart):
- "labelled suite": the cases of tests/fixtures/grader_cases.jsonl, each behind about 1.5 kB of
  reasoning, repeated to --responses; repeats are the same (answer, gold) pairs, as samples of
  one problem often are, so math-verify runs once per distinct pair.
- "distinct answers": --responses fraction problems whose answers are all different (equal
  decimals, equivalent fractions, wrong numbers, units, several boxes), so nearly every response
  costs a math-verify call: the worst case for throughput.

The agreement table compares, per category, the grader's verdict and math-verify's own (called
directly on the whole response) with the hand labels. The machine's load average is printed
before and after, since two shared cores make the numbers move with it.

    python -m bench.grader                                  # 2 workers, 2,000 responses each
    python -m bench.grader --workers 1 --responses 500      # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from pathlib import Path

from tasks.grader import GRADER_VERSION, Grader

CASES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "grader_cases.jsonl"
REASONING = (
    "First we write down what is known and set up the equation. Multiplying both sides by 4 "
    "gives 4x + 12 = 3x + 20, so x = 8; checking, 4(8) + 12 = 44 and 3(8) + 20 = 44. "
) * 8


def load_cases() -> list[dict]:
    return [json.loads(line) for line in CASES.read_text().splitlines() if line.strip()]


def suite_workload(cases: list[dict], count: int) -> tuple[list[str], list[str]]:
    """The labelled cases behind some reasoning, cycled to `count` responses."""
    picked = [cases[i % len(cases)] for i in range(count)]
    return [REASONING + c["response"] for c in picked], [c["gold"] for c in picked]


def distinct_workload(count: int) -> tuple[list[str], list[str]]:
    """`count` responses with pairwise different answers to fraction problems."""
    responses, golds = [], []
    for i in range(count):
        numerator, denominator = i % 97 + 1, i % 13 + 2
        forms = [
            f"\\frac{{{numerator * 3}}}{{{denominator * 3}}}",
            f"{numerator / denominator:.6f}",
            f"{numerator + i}",
            f"\\frac{{{numerator}}}{{{denominator}}} \\text{{ cm}}",
        ]
        answer = forms[i % len(forms)]
        box = f"\\boxed{{{answer}}}" if i % 5 else f"\\boxed{{{answer}}} and \\boxed{{{i}}}"
        responses.append(f"{REASONING}So the answer is {box}.")
        golds.append(f"\\frac{{{numerator}}}{{{denominator}}}")
    return responses, golds


def throughput(grader: Grader, responses: list[str], golds: list[str]) -> float:
    start = time.perf_counter()
    grader.grade(responses, golds)
    return len(responses) / (time.perf_counter() - start)


def agreement(grader: Grader, cases: list[dict]) -> dict[str, tuple[int, float, float]]:
    """Per category (and "all"): cases, grader agreement, math-verify-direct agreement."""
    responses, golds = [c["response"] for c in cases], [c["gold"] for c in cases]
    grades = grader.grade(responses, golds)
    direct = grader.math_verify_direct(responses, golds)
    tally: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for case, grade, mv in zip(cases, grades, direct, strict=True):
        verdict = grade.flexible_correct if case["rule"] == "flexible" else grade.strict_correct
        for key in (case["category"], "all"):
            tally[key][0] += 1
            tally[key][1] += verdict == case["expected"]
            tally[key][2] += mv == case["expected"]
    return {key: (n, ours / n, theirs / n) for key, (n, ours, theirs) in sorted(tally.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--responses", type=int, default=2000)
    args = parser.parse_args()
    print(f"{GRADER_VERSION}; load average before: {os.getloadavg()}")
    cases = load_cases()
    start = time.perf_counter()
    with Grader(workers=args.workers) as grader:
        # Workers start in the background: a first small batch waits for them, untimed below.
        grader.grade(*distinct_workload(16 * args.workers))
        print(f"start-up of {args.workers} workers: {time.perf_counter() - start:.1f} s")
        for name, (responses, golds) in {
            "labelled suite": suite_workload(cases, args.responses),
            "distinct answers": distinct_workload(args.responses),
        }.items():
            rate = throughput(grader, responses, golds)
            print(f"{name}: {len(responses)} responses, {rate:.0f} answers/s")
        table = agreement(grader, cases)
    print("\n| category | cases | grader | math-verify direct |\n|---|---|---|---|")
    for key, (count, ours, theirs) in table.items():
        print(f"| {key} | {count} | {ours:.1%} | {theirs:.1%} |")
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
