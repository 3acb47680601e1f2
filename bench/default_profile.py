"""Profile of the embedded default: can the study's effects show on it? (README: "The embedded
default").

Bootstraps (or reuses) the default, then samples teacher and student on the first --limit test
problems × --n samples at temperature 1 with the evaluation procedure (tasks/evaluate.py) and
prints one table: avg@1 / pass@n, mean token entropy on the model's own samples, response
length min / median / p90 / max (tokens, EOS included), the share of responses a cap of
64 / 96 / 128 / 192 / 256 tokens would cut, and how often the optional lines of the worked
solutions appear per step. A "gold" row gives the test split's own worked solutions. Then the
bootstrap's build times, the mean length by number of steps, and a few teacher samples.

    python -m bench.default_profile [--root DIR] [--limit 200] [--n 4] [--max-new-tokens 384]
    python -m bench.default_profile --pilot 150 [--pilot-cells sft offline_rl] ...

--pilot STEPS: instead of the profile, a forward-vs-reverse KL pilot. Each cell trains the
bootstrapped student for STEPS steps (tasks/train.py, exact loss, batch 16, learning rate
--pilot-lr, responses up to --max-new-tokens so nothing is cut) on the first 512 train
problems, then gets the same table row (entropy, lengths, optional lines per step).

The evaluation cap must stay above every answer, so a cap row counts real lengths: the bench
says so when the teacher's longest answer exceeds --max-new-tokens / 1.5.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import time
from pathlib import Path

import torch

from tasks.bootstrap import (
    BootstrapArtifacts,
    DefaultBootstrapConfig,
    bootstrap_default,
    bootstrap_metrics,
)
from tasks.data import Problem, read_problems, write_problems
from tasks.evaluate import EvalConfig, SampleResult, evaluate
from tasks.models import load_tokenizer
from tasks.train import TrainConfig, train

CAPS = (64, 96, 128, 192, 256)


def percentile(values: list[int], fraction: float) -> int:
    """The value below which `fraction` of values lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def form_rates(texts: list[str], problems: list[Problem]) -> dict[str, float]:
    """Per step: how often a response carries a check line, a running-total line, a quoted
    sentence as a step header (the optional forms of tasks.arithmetic)."""
    steps = sum(int(p.source.removeprefix("arithmetic-").removesuffix("step")) for p in problems)
    lines = [line for text in texts for line in text.split("\n")]
    return {
        "check": sum(line.startswith("check ") for line in lines) / steps,
        "now": sum(line.startswith("now ") for line in lines) / steps,
        "quote": sum(line.startswith("> ") and line[2:3].isupper() for line in lines) / steps,
    }


def length_row(name: str, lengths: list[int], forms: dict[str, float],
               accuracy: dict[str, float] | None = None) -> str:
    accuracy = accuracy or {}
    cut = " | ".join(f"{sum(n > cap for n in lengths) / len(lengths):.1%}" for cap in CAPS)
    score = " | ".join(f"{accuracy[key]:.3f}" if key in accuracy else "–"
                       for key in ("avg_at_1", "pass_at_n", "entropy"))
    return (f"| {name} | {score} | {min(lengths)} / {statistics.median(lengths):.0f} / "
            f"{percentile(lengths, 0.9)} / {max(lengths)} | {cut} | "
            f"{forms['check']:.2f} / {forms['now']:.2f} / {forms['quote']:.2f} |")


def profile_model(model_dir: Path, test: Path, limit: int, n: int, max_new_tokens: int,
                  root: str | None) -> tuple[dict[str, float], list[SampleResult]]:
    config = EvalConfig(model=str(model_dir), benchmarks=(f"default={test}",), n=n,
                        ks=(1, n), limit=limit, max_new_tokens=max_new_tokens)
    result = evaluate(config, artifacts_root=root, log=lambda _: None)
    metrics = {k.removeprefix("eval/overall/"): v for k, v in result.metrics.items()
               if k.startswith("eval/overall/")}
    metrics["pass_at_n"] = metrics[f"pass_at_{n}"]
    return metrics, result.samples


def print_profile(artifacts: BootstrapArtifacts, limit: int, n: int, max_new_tokens: int,
                  root: str | None) -> dict[str, list[SampleResult]]:
    """The table for a bootstrapped default; returns each model's samples."""
    problems = read_problems(artifacts.split("test"))[:limit]
    by_id = {p.id: p for p in problems}
    tokenizer = load_tokenizer(artifacts.teacher_dir)
    gold = [len(ids) + 1 for ids in tokenizer([p.solution for p in problems],
                                              add_special_tokens=False)["input_ids"]]
    print(f"| model | avg@1 | pass@{n} | entropy | length min / median / p90 / max | "
          + " | ".join(f"cut at {cap}" for cap in CAPS) + " | per step: check / now / quote |")
    print("|---|---|---|---|---|" + "---|" * len(CAPS) + "---|")
    print(length_row("gold (test split)", gold, form_rates([p.solution for p in problems],
                                                          problems)), flush=True)
    samples = {}
    for role, model_dir in (("teacher", artifacts.teacher_dir),
                            ("student", artifacts.student_dir)):
        metrics, rows = profile_model(model_dir, artifacts.split("test"), limit, n,
                                      max_new_tokens, root)
        samples[role] = rows
        first = [r for r in rows if r.sample_index == 0]
        forms = form_rates([r.response for r in first], [by_id[r.problem_id] for r in first])
        print(length_row(role, [r.length for r in rows], forms, metrics), flush=True)
    longest = max(r.length for r in samples["teacher"])
    if longest * 1.5 > max_new_tokens:
        print(f"note: the teacher's longest answer ({longest} tokens) × 1.5 exceeds the "
              f"evaluation cap {max_new_tokens}; raise --max-new-tokens")
    return samples


def print_pilot(artifacts: BootstrapArtifacts, cells: list[str], steps: int,
                learning_rate: float, limit: int, n: int, max_new_tokens: int,
                root: str | None) -> None:
    """Train each cell from the bootstrapped student, then one profile row per cell."""
    problems = read_problems(artifacts.split("test"))[:limit]
    by_id = {p.id: p for p in problems}
    workdir = Path(root or os.environ.get("DISTILL_LAB_ARTIFACTS", "artifacts")) / "pilot"
    train_file = workdir / "train-512.jsonl"
    write_problems(read_problems(artifacts.split("train"))[:512], train_file)
    print(f"| cell | avg@1 | pass@{n} | entropy | length min / median / p90 / max | "
          + " | ".join(f"cut at {cap}" for cap in CAPS) + " | per step: check / now / quote |"
          " train s |")
    print("|---|---|---|---|---|" + "---|" * len(CAPS) + "---|---|")
    models = [("student (start)", artifacts.student_dir, 0.0)]
    for cell in cells:
        config = TrainConfig(objective=cell, teacher=str(artifacts.teacher_dir),
                             student=str(artifacts.student_dir), train_problems=str(train_file),
                             output_dir=str(workdir / f"{cell}-{steps}-{learning_rate:g}"),
                             steps=steps, batch_size=16, learning_rate=learning_rate,
                             max_new_tokens=max_new_tokens, checkpoint_every=steps,
                             artifacts_root=root)
        started = time.perf_counter()
        result = train(config, log=lambda _: None)
        models.append((cell, result.checkpoint, time.perf_counter() - started))
    for name, model_dir, seconds in models:
        metrics, rows = profile_model(Path(model_dir), artifacts.split("test"), limit, n,
                                      max_new_tokens, root)
        first = [r for r in rows if r.sample_index == 0]
        forms = form_rates([r.response for r in first], [by_id[r.problem_id] for r in first])
        print(length_row(name, [r.length for r in rows], forms, metrics)
              + f" {seconds:.0f} |", flush=True)


def print_by_steps(samples: list[SampleResult], problems: dict[str, Problem]) -> None:
    groups: dict[str, list[SampleResult]] = {}
    for row in samples:
        groups.setdefault(problems[row.problem_id].source, []).append(row)
    cells = []
    for source in sorted(groups, key=lambda s: int(s.split("-")[1].removesuffix("step"))):
        rows = groups[source]
        steps = source.removeprefix("arithmetic-").removesuffix("step")
        cells.append(f"{steps}: {statistics.mean(r.length for r in rows):.0f} tok, "
                     f"{statistics.mean(r.correct for r in rows):.0%} ({len(rows)})")
    print("  " + "; ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.default_profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", help="artifact root (default $DISTILL_LAB_ARTIFACTS)")
    parser.add_argument("--limit", type=int, default=200, help="test problems")
    parser.add_argument("--n", type=int, default=4, help="samples per problem")
    parser.add_argument("--max-new-tokens", type=int, default=384, help="evaluation cap")
    parser.add_argument("--pilot", type=int, metavar="STEPS",
                        help="run the forward-vs-reverse KL pilot for STEPS steps per cell")
    parser.add_argument("--pilot-cells", nargs="+", default=["sft", "offline_rl"])
    parser.add_argument("--pilot-lr", type=float, default=1e-3)
    args = parser.parse_args()
    lines: list[str] = []
    started = time.perf_counter()
    artifacts = bootstrap_default(DefaultBootstrapConfig(), root=args.root, log=lines.append)
    bootstrap_s = time.perf_counter() - started
    print(f"{datetime.date.today()}; torch {torch.__version__}; {os.cpu_count()} CPUs; load "
          f"average {' / '.join(f'{x:.2f}' for x in os.getloadavg())}; {args.limit} test "
          f"problems × {args.n} samples, temperature 1, cap {args.max_new_tokens} tokens")
    if args.pilot:
        print_pilot(artifacts, args.pilot_cells, args.pilot, args.pilot_lr, args.limit, args.n,
                    args.max_new_tokens, args.root)
        return
    samples = print_profile(artifacts, args.limit, args.n, args.max_new_tokens, args.root)
    built = any(line.startswith("bootstrapping") for line in lines)
    print(f"bootstrap: {bootstrap_s:.0f} s this run ({'built' if built else 'reused'})")
    for role, path in (("teacher", artifacts.teacher_dir), ("student", artifacts.student_dir)):
        metrics = bootstrap_metrics(path)
        print(f"  {role}: SFT {metrics['sft/seconds']:.0f} s, built in "
              f"{metrics.get('build_seconds', float('nan')):.0f} s, final loss "
              f"{metrics['sft/final_loss']:.3f}, held-out greedy accuracy "
              f"{metrics['strict_accuracy']:.1%}")
    problems = {p.id: p for p in read_problems(artifacts.split("test"))}
    print("mean length and accuracy by number of steps (samples):")
    for role, rows in samples.items():
        print(f" {role}")
        print_by_steps(rows, problems)
    example = samples["teacher"][0].problem_id
    print(f"\nteacher samples for {example}: {problems[example].problem}")
    for row in samples["teacher"][: args.n]:
        print(json.dumps(row.response))


if __name__ == "__main__":
    main()
