"""Cost of one training step per cell on the embedded default: the table in docs/training.md.

Teacher-prefix cells read cached teacher rollouts (built once, outside the timing); with
``cache_k`` they also read cached teacher scores. Student-prefix cells generate with the live
student and score with the live teacher every step. Reports the mean seconds per step (split
into generate / score / train) and FLOPs per step from tasks.compute.

    python -m bench.train_step [--teacher DIR --student DIR --problems JSONL] [--steps 10]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from bench.step_breakdown import resolve_profile
from tasks.train import TrainConfig, train

CELLS = {
    "offline_rl, top-20 score cache (teacher prefixes)": {"objective": "offline_rl",
                                                          "loss": "sparse", "cache_k": 20},
    "sft, live teacher (teacher prefixes)": {"objective": "sft"},
    "opd, live teacher (student prefixes)": {"objective": "opd"},
    "dagger, live teacher (student prefixes)": {"objective": "dagger"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path)
    parser.add_argument("--student", type=Path)
    parser.add_argument("--problems", type=Path,
                        help="problems JSONL (default: the first 64 of the default's train "
                             "split, so teacher-prefix cells roll out 64 problems, not 20,000)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--root", type=Path,
                        default=Path(os.environ.get("DISTILL_LAB_ARTIFACTS", "artifacts")))
    args = parser.parse_args()
    if args.teacher is None:
        default = resolve_profile("default", args.root)
        args.teacher, args.student = default.teacher, default.student
        args.problems = args.problems or default.problems
    elif args.problems is None:
        parser.error("--problems: give the problems JSONL that --teacher/--student train on")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch "
          f"{args.batch_size} prompts, responses ≤ 96 tokens, {args.steps} steps per cell")
    print("| cell | s/step | generate | score | train | FLOPs/step |")
    print("|---|---|---|---|---|---|")
    rows = {}
    with tempfile.TemporaryDirectory() as scratch:
        base = TrainConfig(objective="sft", teacher=str(args.teacher), student=str(args.student),
                           train_problems=str(args.problems), output_dir=scratch,
                           steps=args.steps, batch_size=args.batch_size, learning_rate=1e-4,
                           max_new_tokens=96, checkpoint_every=10_000,
                           artifacts_root=str(args.root))
        for name, change in CELLS.items():
            config = replace(base, **change, output_dir=f"{scratch}/{len(rows)}")
            train(replace(config, steps=1, output_dir=f"{scratch}/warm-{len(rows)}"),
                  log=lambda line: None)  # builds the rollouts / score cache, untimed
            history = train(config, log=lambda line: None).history
            steps = len(history)
            mean = {key: sum(h[key] for h in history) / steps
                    for key in ("time/generate", "time/score", "time/train")}
            total = sum(mean.values())
            flops = history[-1]["train/total_flops"] / steps
            rows[name] = (total, flops)
            print(f"| {name} | {total:.3f} | {mean['time/generate']:.3f} | "
                  f"{mean['time/score']:.3f} | {mean['time/train']:.3f} | {flops:.3g} |")
    cached = rows["offline_rl, top-20 score cache (teacher prefixes)"]
    on_policy = rows["opd, live teacher (student prefixes)"]
    print(f"cached teacher-prefix step / on-policy step: time {cached[0] / on_policy[0]:.2f}, "
          f"FLOPs {cached[1] / on_policy[1]:.2f}")


if __name__ == "__main__":
    main()
