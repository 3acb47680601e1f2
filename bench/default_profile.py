"""Profile of the embedded default: can distillation teach on it? (docs/embedded-default.md).

Bootstraps (or reuses) the default, then evaluates teacher and starting student on the first
--limit test problems with the evaluation procedure (tasks/evaluate.py: --n samples at
temperature 1 and one greedy answer per problem) and prints two tables.

Accuracy and where the uncertainty sits: avg@1, pass@n, greedy accuracy; the mean token entropy
on the model's own samples, split into answer digits (one right token) and the other tokens
(where the written forms leave several); on the test split's gold solutions, the entropy at the
digits and the NLL of digits and other tokens (tasks.gold_nll). A teacher fit to teach is right
where the task has one right answer and free where it has several: high greedy accuracy and
avg@1, digit entropy near 0, entropy on its own answers mostly on the other tokens.

Lengths: response length min / median / p90 / max (tokens, EOS included), the share of
responses a cap of 64 / 96 / 128 / 192 / 256 tokens would cut, and how often the optional lines
of the worked solutions appear per step. A "gold" row gives the test split's own solutions.
Then the bootstrap's build times, accuracy by number of steps, and a few teacher samples.

    python -m bench.default_profile [--root DIR] [--limit 200] [--n 4] [--max-new-tokens 256]
    python -m bench.default_profile --pilot 60 [--pilot-cells sft opd] [--pilot-lr 5e-4 1e-3]
        [--pilot-seeds 0 1] [--pilot-cap 128]

--pilot STEPS: instead of the profile, the tuning pilot, on the validation split (the held-out
problems; never the test split, which only the study reads). Each cell × learning rate × seed
trains the bootstrapped student for STEPS steps as a study cell does (tasks/train.py: exact
loss, batch 16, the first 512 train problems, cap --pilot-cap) and is evaluated like the
profile; one row each, with its avg@n difference to the starting student.

The evaluation cap must stay above every answer, so a cap column counts real lengths: the bench
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

import distill_core as dc
from tasks.arithmetic import TOTAL_WORDS
from tasks.bootstrap import (
    BootstrapArtifacts,
    DefaultBootstrapConfig,
    bootstrap_default,
    bootstrap_metrics,
)
from tasks.data import Problem, read_problems, write_problems
from tasks.evaluate import EvalConfig, SampleResult, evaluate
from tasks.gold_nll import answer_digit_flags, gold_samples
from tasks.models import load_model, load_tokenizer
from tasks.rollout import Sample, SamplingConfig, context_length, generate_hf, render_prompts
from tasks.scoring import response_batch, response_logits
from tasks.train import TrainConfig, train

CAPS = (64, 96, 128, 192, 256)
ACCURACY = ("avg_at_1", "pass_at_n", "greedy_accuracy")


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
        "total": sum(line.split(" ")[0] in TOTAL_WORDS for line in lines) / steps,
        "quote": sum(line.startswith("> ") and line[2:3].isupper() for line in lines) / steps,
    }


@torch.no_grad()
def entropy_split(model, tokenizer, samples: list[Sample]) -> dict[str, float]:
    """Mean token entropy (nats, temperature 1) of model over samples' response tokens, on the
    answer digits and on the other tokens (tasks.gold_nll.is_answer_digit)."""
    sums = {"digits": [0.0, 0], "other": [0.0, 0]}
    digit: dict[int, bool] = {}
    for start in range(0, len(samples), 32):
        part = samples[start : start + 32]
        entropy_BT = dc.token_entropy(response_logits(model, response_batch(
            part, tokenizer.pad_token_id)))
        for row, sample in enumerate(part):
            flags = answer_digit_flags(tokenizer, sample.response_ids, digit)
            for position, is_digit in enumerate(flags):
                kind = sums["digits" if is_digit else "other"]
                kind[0] += float(entropy_BT[row, position])
                kind[1] += 1
    return {kind: total / count for kind, (total, count) in sums.items() if count}


def uncertainty(model_dir: Path, problems: list[Problem], max_new_tokens: int) -> dict:
    """Where the model's uncertainty sits: entropy on one of its own answers per problem and on
    the gold solutions, each split into answer digits and other tokens."""
    model, tokenizer = load_model(model_dir), load_tokenizer(model_dir)
    prompts = render_prompts(tokenizer, problems)
    own = generate_hf(model, tokenizer, prompts, SamplingConfig(
        temperature=1.0, max_new_tokens=max_new_tokens, seed=1, batch_size=64))
    gold = gold_samples(tokenizer, problems, prompts, context_length(model))
    return {"own": entropy_split(model, tokenizer, own),
            "gold": entropy_split(model, tokenizer, gold)}


def profile_model(model_dir: Path, benchmark: Path, limit: int, n: int, max_new_tokens: int,
                  root: str | None) -> tuple[dict[str, float], list[SampleResult]]:
    """The evaluation's overall metrics (avg@1, pass@n, greedy, entropy, gold NLL) and rows."""
    config = EvalConfig(model=str(model_dir), benchmarks=(f"default={benchmark}",), n=n,
                        ks=(1, n), limit=limit, max_new_tokens=max_new_tokens)
    result = evaluate(config, artifacts_root=root, log=lambda _: None)
    metrics = {k.removeprefix("eval/overall/"): v for k, v in result.metrics.items()
               if k.startswith("eval/overall/")}
    metrics["pass_at_n"] = metrics[f"pass_at_{n}"]
    metrics["avg_at_n"] = metrics[f"avg_at_{n}"]
    return metrics, result.samples


def _f(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def accuracy_row(name: str, metrics: dict, split: dict | None) -> str:
    """avg@1 | pass@n | greedy | entropy own: all / digits / other | gold: digit entropy,
    NLL digits / other."""
    own, gold = (split or {}).get("own", {}), (split or {}).get("gold", {})
    return (f"| {name} | " + " | ".join(_f(metrics.get(k)) for k in ACCURACY)
            + f" | {_f(metrics.get('entropy'))} / {_f(own.get('digits'))} / "
            f"{_f(own.get('other'))} | {_f(gold.get('digits'))} | "
            f"{_f(metrics.get('gold_nll_digits'))} / {_f(metrics.get('gold_nll_other'))} |")


def length_row(name: str, lengths: list[int], forms: dict[str, float]) -> str:
    cut = " | ".join(f"{sum(n > cap for n in lengths) / len(lengths):.1%}" for cap in CAPS)
    return (f"| {name} | {min(lengths)} / {statistics.median(lengths):.0f} / "
            f"{percentile(lengths, 0.9)} / {max(lengths)} | {cut} | "
            f"{forms['check']:.2f} / {forms['total']:.2f} / {forms['quote']:.2f} |")


def print_profile(artifacts: BootstrapArtifacts, limit: int, n: int, max_new_tokens: int,
                  root: str | None) -> dict[str, list[SampleResult]]:
    """The two tables for a bootstrapped default; returns each model's samples."""
    problems = read_problems(artifacts.split("test"))[:limit]
    by_id = {p.id: p for p in problems}
    measured = {}
    for role in ("teacher", "student"):
        model_dir = getattr(artifacts, f"{role}_dir")
        metrics, rows = profile_model(model_dir, artifacts.split("test"), limit, n,
                                      max_new_tokens, root)
        measured[role] = (metrics, rows, uncertainty(model_dir, problems, max_new_tokens))
    print(f"| model | avg@1 | pass@{n} | greedy | entropy on its answers: all / digits / "
          "other | gold: digit entropy | gold NLL: digits / other |")
    print("|---|---|---|---|---|---|---|")
    for role, (metrics, _, split) in measured.items():
        print(accuracy_row(role, metrics, split), flush=True)
    tokenizer = load_tokenizer(artifacts.teacher_dir)
    gold = [len(ids) + 1 for ids in tokenizer([p.solution for p in problems],
                                              add_special_tokens=False)["input_ids"]]
    print("\n| model | length min / median / p90 / max | "
          + " | ".join(f"cut at {cap}" for cap in CAPS) + " | per step: check / total / quote |")
    print("|---|---|" + "---|" * len(CAPS) + "---|")
    print(length_row("gold (test split)", gold, form_rates([p.solution for p in problems],
                                                          problems)))
    for role, (_, rows, _) in measured.items():
        first = [r for r in rows if r.sample_index == 0]
        forms = form_rates([r.response for r in first], [by_id[r.problem_id] for r in first])
        print(length_row(role, [r.length for r in rows], forms), flush=True)
    longest = max(r.length for r in measured["teacher"][1])
    if longest * 1.5 > max_new_tokens:
        print(f"note: the teacher's longest answer ({longest} tokens) × 1.5 exceeds the "
              f"evaluation cap {max_new_tokens}; raise --max-new-tokens")
    return {role: rows for role, (_, rows, _) in measured.items()}


def print_pilot(artifacts: BootstrapArtifacts, args: argparse.Namespace) -> None:
    """Train each cell × learning rate × seed from the bootstrapped student; evaluate each on
    the validation split (the held-out problems), one row per model."""
    validation = artifacts.split("held_out")
    workdir = Path(args.root or os.environ.get("DISTILL_LAB_ARTIFACTS", "artifacts")) / "pilot"
    train_file = write_problems(read_problems(artifacts.split("train"))[:512],
                                workdir / "train-512.jsonl")
    print(f"| model | avg@1 | pass@{args.n} | greedy | entropy | gold NLL: digits / other | "
          f"avg@{args.n} | Δ avg@{args.n} vs start | train s |")
    print("|---|---|---|---|---|---|---|---|---|")
    start, _ = profile_model(artifacts.student_dir, validation, args.limit, args.n,
                             args.max_new_tokens, args.root)
    print(pilot_row("student (start)", start, start, 0.0), flush=True)
    for cell in args.pilot_cells:
        for learning_rate in args.pilot_lr:
            for seed in args.pilot_seeds:
                name = f"{cell} lr {learning_rate:g} seed {seed}"
                config = TrainConfig(
                    objective=cell, teacher=str(artifacts.teacher_dir),
                    student=str(artifacts.student_dir), train_problems=str(train_file),
                    output_dir=str(workdir / f"{cell}-{args.pilot}-{learning_rate:g}-{seed}"),
                    steps=args.pilot, batch_size=16, learning_rate=learning_rate,
                    max_new_tokens=args.pilot_cap, checkpoint_every=args.pilot, seed=seed,
                    artifacts_root=args.root)
                started = time.perf_counter()
                checkpoint = train(config, log=lambda _: None).checkpoint
                seconds = time.perf_counter() - started
                metrics, _ = profile_model(Path(checkpoint), validation, args.limit, args.n,
                                           args.max_new_tokens, args.root)
                print(pilot_row(name, metrics, start, seconds), flush=True)


def pilot_row(name: str, metrics: dict, start: dict, seconds: float) -> str:
    return (f"| {name} | " + " | ".join(_f(metrics.get(k)) for k in ACCURACY)
            + f" | {_f(metrics.get('entropy'))} | {_f(metrics.get('gold_nll_digits'))} / "
            f"{_f(metrics.get('gold_nll_other'))} | {_f(metrics['avg_at_n'])} | "
            f"{metrics['avg_at_n'] - start['avg_at_n']:+.3f} | {seconds:.0f} |")


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
    parser.add_argument("--limit", type=int, default=200, help="problems evaluated")
    parser.add_argument("--n", type=int, default=4, help="samples per problem")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="evaluation cap")
    parser.add_argument("--pilot", type=int, metavar="STEPS",
                        help="run the tuning pilot (validation split) for STEPS steps per cell")
    parser.add_argument("--pilot-cells", nargs="+", default=["sft", "opd"])
    parser.add_argument("--pilot-lr", nargs="+", type=float, default=[5e-4])
    parser.add_argument("--pilot-seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--pilot-cap", type=int, default=128, help="training response cap")
    args = parser.parse_args()
    lines: list[str] = []
    started = time.perf_counter()
    artifacts = bootstrap_default(DefaultBootstrapConfig(), root=args.root, log=lines.append)
    bootstrap_s = time.perf_counter() - started
    split = "validation (held-out)" if args.pilot else "test"
    print(f"{datetime.datetime.now():%Y-%m-%d %H:%M}; torch {torch.__version__}; "
          f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads; load average "
          f"{' / '.join(f'{x:.2f}' for x in os.getloadavg())}; {args.limit} {split} problems "
          f"× {args.n} samples at temperature 1 + 1 greedy, cap {args.max_new_tokens} tokens")
    if args.pilot:
        print_pilot(artifacts, args)
        return
    samples = print_profile(artifacts, args.limit, args.n, args.max_new_tokens, args.root)
    built = any(line.startswith("bootstrapping") for line in lines)
    print(f"bootstrap: {bootstrap_s:.0f} s this run ({'built' if built else 'reused'}); load "
          f"average now {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
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
