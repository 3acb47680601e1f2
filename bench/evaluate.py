"""Evaluation throughput on the embedded default: the table in docs/evaluation.md.

Runs the full procedure (HF batched generation, the grader's worker processes, the entropy
forward pass) for the default teacher and student on the default test split, and prints
problems/s and the time split between generation, grading and entropy.

    python -m bench.evaluate [--root DIR] [--limit 200] [--n 4]

The default is bootstrapped (or reused) under --root first; that time is not counted.
"""

from __future__ import annotations

import argparse
import os
import time

from tasks.bootstrap import bootstrap_default
from tasks.evaluate import EvalConfig, evaluate


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.evaluate", description=__doc__)
    parser.add_argument("--root", help="artifact root (default $DISTILL_LAB_ARTIFACTS)")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--n", type=int, default=4)
    args = parser.parse_args()
    default = bootstrap_default(root=args.root)
    print(f"{args.limit} test problems × n={args.n}, max 96 new tokens, temperature 1, "
          f"batch 64; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print("| model | problems/s | samples/s | avg@1 | pass@4 | mean length | entropy | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for role, model in (("teacher", default.teacher_dir), ("student", default.student_dir)):
        config = EvalConfig(model=str(model), benchmarks=(f"default={default.split('test')}",),
                            n=args.n, ks=(1, args.n), limit=args.limit, max_new_tokens=96)
        evaluate(config, artifacts_root=args.root, log=lambda _: None)  # warm-up: caches, pages
        started = time.perf_counter()
        metrics = evaluate(config, artifacts_root=args.root, log=lambda _: None).metrics
        seconds = time.perf_counter() - started
        m = {k.removeprefix("eval/overall/"): v for k, v in metrics.items()
             if k.startswith("eval/overall/")}
        print(f"| {role} | {args.limit / seconds:.1f} | {args.limit * args.n / seconds:.1f} | "
              f"{m['avg_at_1']:.3f} | {m[f'pass_at_{args.n}']:.3f} | "
              f"{m['response_length_mean']:.1f} | {m['entropy']:.3f} | {seconds:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
