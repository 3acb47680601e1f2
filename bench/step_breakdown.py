"""Where one training step's time goes, per cell, through the real trainer (tasks.train.train).

A step is split into generation (student sampling; teacher-prefix cells only cut cached
rollouts), the teacher's forward, the student's forward, the loss (the loss functions' own
forward, on the fused path including the head matmuls and their analytic gradient), backward,
the optimiser (gradient clipping + AdamW + scheduler) and "other": the rest of the interval
between two step ends (metrics, reductions, the step callback, bookkeeping). The parts are
timed by wrapping these functions of ``tasks.train`` by name — ``_prefixes``,
``_student_side``, ``_teacher_side``, ``_loss``, ``_apply_update`` — and ``Accelerator.backward``
/ ``clip_grad_norm_``; a renamed function fails the bench loudly rather than timing nothing.
On a GPU every clock reading is preceded by ``torch.cuda.synchronize()``, so each part holds
its own kernels. ``time_training`` is that measurement for any TrainConfig (bench.gpu_check's
shapes section runs it at Qwen3's shapes).

Each (code, profile, cell) run is its own process: one untimed warm-up step (it builds the
teacher rollouts on first use), then ``--steps`` timed steps; the table gives medians over
``--runs`` runs of the per-step mean, each column on its own (so the parts of a noisy run
need not add up to the median step; every run's numbers go to stderr). ``--compare REV`` also
measures the code of git revision REV (exported with ``git archive``, not checked out) and
alternates the two run by run, so "before" and "after" see the same load. Wall and CPU seconds
(the process's, all threads).

    python -m bench.step_breakdown [--profiles default real-weights] [--cells sft dagger ...]
        [--runs 3] [--steps 3] [--threads N] [--compare REV] [--rollout-backends hf vllm]

``--rollout-backends hf vllm`` times the on-policy cells sampling with each backend (the vLLM
engine in the environment DISTILL_LAB_VLLM_PYTHON names; ``--vllm-eager`` skips its compile),
alternating run by run like ``--compare``; its start-up happens before the first step and is
not timed, its weight hand-offs are (inside "generate").
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PARTS = ("generate", "teacher_forward", "student_forward", "loss", "backward", "optimizer",
         "other")
CELLS = ("sft", "dagger", "offline_rl", "opd")
REPOSITORY = Path(__file__).resolve().parents[1]
PROBLEMS = 64  # problems a bench run draws from: enough for 4 steps of batch 16
# The functions of tasks.train timed, with their part (and a part timed inside them).
TRAINER_PARTS = (("_prefixes", "generate"), ("_student_side", "student_forward"),
                 ("_teacher_side", "teacher_forward"), ("_loss", "loss", "teacher_forward"),
                 ("_apply_update", "optimizer"))


@dataclass(frozen=True)
class Profile:
    """One model pair with its problems and step shape (what both benches train on)."""

    name: str
    teacher: Path
    student: Path
    problems: Path  # the first PROBLEMS of the profile's train.jsonl (see resolve_profile)
    prompt_template: str
    batch_size: int
    max_new_tokens: int


# The step's shape each profile was measured at (docs/performance.md); a profile not listed
# here is timed at batch 8 and its own train cap.
SHAPES = {"default": (16, 96), "real-weights": (4, 64)}


def resolve_profile(name: str, root: Path, batch_size: int | None = None,
                    max_new_tokens: int | None = None) -> Profile:
    """A profile of tasks.profiles (the embedded default: batch 16, responses ≤ 96 tokens; the
    SmolLM2-135M profile, real-weights: batch 4, ≤ 64 tokens), bootstrapped or reused."""
    from tasks.profiles import PROFILES

    if name not in PROFILES:
        raise SystemExit(f"--profiles: {name!r} is not one of {', '.join(PROFILES)}")
    chosen = PROFILES[name]
    built = chosen.build(root=root, log=lambda line: None)
    shape, template = SHAPES.get(name, (8, chosen.train_cap)), chosen.prompt_template
    # Teacher-prefix cells roll the teacher out over the whole problem file on first use: a
    # short run gets the first PROBLEMS (cached under root/bench, like every other product).
    from tasks.data import read_problems, write_problems

    subset = root / "bench" / f"{name}-{built.data_dir.name}-{PROBLEMS}.jsonl"
    if not subset.exists():
        subset.parent.mkdir(parents=True, exist_ok=True)
        write_problems(read_problems(built.data_dir / "train.jsonl")[:PROBLEMS], subset)
    return Profile(name, built.teacher_dir, built.student_dir, subset, template,
                   batch_size or shape[0], max_new_tokens or shape[1])


# ------------------------------------------------------------------ memory (Linux /proc)


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE).group(1))


def reset_peak_rss() -> int:
    """Reset the kernel's resident high-water mark (VmHWM) to the current RSS; returns it (KiB)."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS")


def peak_rss_kib() -> int:
    """The process's resident high-water mark since the last reset_peak_rss (KiB)."""
    return _status_kib("VmHWM")


# ------------------------------------------------------------------ one measured run


def _no_sync() -> None:
    pass


class _Timer:
    """Seconds per part, summed over the wrapped calls of the current step.

    synchronize runs before each clock reading: on a GPU, torch.cuda.synchronize, so a part's
    kernels are counted in that part, not in whichever later part waits for them."""

    def __init__(self, synchronize: Callable[[], None] = _no_sync) -> None:
        self.seconds = dict.fromkeys(PARTS, 0.0)
        self.synchronize = synchronize

    def wrap(self, owner, name: str, part: str, minus: str | None = None) -> None:
        """Time owner.name into part; minus: a part timed inside it, subtracted from it."""
        inner = getattr(owner, name)  # AttributeError: the trainer renamed it; update the bench

        def timed(*args, **kwargs):
            self.synchronize()
            began, nested = time.perf_counter(), self.seconds[minus] if minus else 0.0
            try:
                return inner(*args, **kwargs)
            finally:
                self.synchronize()
                spent = time.perf_counter() - began
                self.seconds[part] += spent - ((self.seconds[minus] - nested) if minus else 0.0)

        setattr(owner, name, timed)


def _child(spec: dict) -> dict:
    """Train one cell through tasks.train.train with every part timed; returns per-step means.
    spec["config"], if there, holds further TrainConfig fields (e.g. mixed_precision)."""
    sys.path.insert(0, spec["code"])  # the code measured: this tree or an exported revision
    import torch

    import tasks.train as trainer

    if not Path(trainer.__file__).is_relative_to(spec["code"]):
        raise SystemExit(f"imported {trainer.__file__}, not the code in {spec['code']}")
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    with tempfile.TemporaryDirectory() as scratch:
        config = trainer.TrainConfig(
            objective=spec["cell"], teacher=spec["teacher"], student=spec["student"],
            train_problems=spec["problems"], output_dir=scratch, steps=spec["steps"] + 1,
            batch_size=spec["batch_size"], max_new_tokens=spec["max_new_tokens"],
            prompt_template=spec["prompt_template"], checkpoint_every=10_000,
            artifacts_root=spec["root"], **spec.get("config", {}))
        return time_training(trainer, config)


def time_training(trainer, config) -> dict:
    """Train config through trainer (the tasks.train module measured) with every part of a step
    timed; the mean over the steps after the first (the warm-up) of each part, wall and CPU
    seconds, response tokens and the sampler's weight hand-off (metric time/handoff, inside
    "generate"), and the peak memory of those steps: torch's CUDA peak on a GPU, and the
    process's resident high-water mark (neither sees a sampler in another process)."""
    import torch
    from accelerate import Accelerator

    cuda = torch.cuda.is_available()
    timer = _Timer(torch.cuda.synchronize if cuda else _no_sync)
    for name, part, *minus in TRAINER_PARTS:
        timer.wrap(trainer, name, part, *minus)
    timer.wrap(Accelerator, "backward", "backward")
    timer.wrap(Accelerator, "clip_grad_norm_", "optimizer")
    steps: list[dict] = []
    mark = {"wall": 0.0, "cpu": 0.0}

    def on_step(step: int, metrics: dict[str, float]) -> None:
        timer.synchronize()
        wall, cpu = time.perf_counter(), time.process_time()
        if step > 1:  # step 1 is the warm-up
            parts = dict(timer.seconds)
            parts["other"] = (wall - mark["wall"]) - sum(parts.values())
            steps.append({**parts, "wall": wall - mark["wall"], "cpu": cpu - mark["cpu"],
                          "tokens": metrics["train/response_tokens"],
                          "handoff": metrics.get("time/handoff", 0.0)})
        else:
            reset_peak_rss()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
        timer.seconds = dict.fromkeys(PARTS, 0.0)
        mark.update(wall=time.perf_counter(), cpu=time.process_time())

    trainer.train(config, log=lambda line: None, on_step=on_step)
    means = {key: sum(s[key] for s in steps) / len(steps) for key in steps[0]}
    return {**means, "peak_rss_mib": peak_rss_kib() / 1024,
            "peak_cuda_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0}


# ------------------------------------------------------------------ driver


def run_child(module: str, spec: dict, python: str = sys.executable) -> dict:
    """Run module's --child with spec in a fresh process (of python: another environment's, for
    a child that imports nothing of the platform); its last stdout line is the result."""
    done = subprocess.run([python, "-m", module, "--child", json.dumps(spec)],
                          cwd=REPOSITORY, capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if done.returncode:
        raise SystemExit(f"{module} child {spec} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """--root (the artifacts a bench bootstraps into or reuses) and the hidden --child."""
    parser.add_argument("--root", type=Path,
                        default=Path(os.environ.get("DISTILL_LAB_ARTIFACTS", "artifacts")))
    parser.add_argument("--child", help=argparse.SUPPRESS)


def answered_as_child(args: argparse.Namespace, child) -> bool:
    """In a --child process: run child on the spec and print its result (run_child reads it)."""
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
    return bool(args.child)


def load_average() -> str:
    return "/".join(f"{value:.1f}" for value in os.getloadavg())


def _export(revision: str, into: Path) -> Path:
    """The tree of revision, exported (git archive), for a before/after comparison."""
    archive = subprocess.run(["git", "archive", revision], cwd=REPOSITORY, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", default=["default", "real-weights"])
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=CELLS)
    parser.add_argument("--runs", type=int, default=3, help="runs per (code, cell): medians")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run (+1 warm-up)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (0: torch's default, the core count)")
    parser.add_argument("--compare", metavar="REV", help="also measure git revision REV")
    parser.add_argument("--max-new-tokens", type=int, help="response cap (default: the profile's)")
    parser.add_argument("--rollout-backends", nargs="+", default=["hf"], choices=("hf", "vllm"),
                        help="samplers of the on-policy cells to time (teacher-prefix: hf only)")
    parser.add_argument("--vllm-eager", action="store_true", help="vLLM without torch.compile")
    add_common_arguments(parser)
    args = parser.parse_args()
    if answered_as_child(args, _child):
        return
    with contextlib.ExitStack() as stack:
        codes = {"this tree": str(REPOSITORY)}
        if args.compare:
            before = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            codes = {args.compare: str(_export(args.compare, before)), **codes}
        _measure(args, codes)


def _measure(args, codes: dict[str, str]) -> None:
    import torch

    print(f"{datetime.datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, threads {args.threads or torch.get_num_threads()}; load "
          f"{load_average()} at start; medians of {args.runs} runs × {args.steps} steps")
    header = " | ".join(PARTS)
    print(f"| profile | cell | code | wall s/step | CPU s/step | {header} | tokens/s |")
    print("|---|---|---|---|---|" + "---|" * len(PARTS) + "---|")
    for name in args.profiles:
        profile = resolve_profile(name, args.root, max_new_tokens=args.max_new_tokens)
        for cell in args.cells:
            backends = args.rollout_backends if cell in ("dagger", "opd") else ["hf"]
            variants = {(code if backends == ["hf"] else f"{code}, {backend}"): (path, backend)
                        for code, path in codes.items() for backend in backends}
            results: dict[str, list[dict]] = {variant: [] for variant in variants}
            for _ in range(args.runs):
                for variant, (path, backend) in variants.items():  # alternating: same load
                    sampler = {} if backend == "hf" else {
                        "rollout_backend": backend, "vllm_eager": args.vllm_eager}
                    spec = {"code": path, "cell": cell, "teacher": str(profile.teacher),
                            "student": str(profile.student), "problems": str(profile.problems),
                            "prompt_template": profile.prompt_template,
                            "batch_size": profile.batch_size,
                            "max_new_tokens": profile.max_new_tokens, "steps": args.steps,
                            "threads": args.threads, "root": str(args.root), "config": sampler}
                    results[variant].append(run_child("bench.step_breakdown", spec))
                    print(f"  {name} {cell} {variant}: " + ", ".join(
                        f"{k} {v:.3f}" for k, v in results[variant][-1].items()),
                        file=sys.stderr)
            for code, runs in results.items():
                median = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
                parts = " | ".join(f"{median[p]:.3f}" for p in PARTS)
                rate = statistics.median(r["tokens"] / r["wall"] for r in runs)
                print(f"| {name} | {cell} | {code} | {median['wall']:.3f} | "
                      f"{median['cpu']:.3f} | {parts} | {rate:.0f} |", flush=True)
    print(f"load {load_average()} at the end")


if __name__ == "__main__":
    main()
