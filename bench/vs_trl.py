"""Our trainer against TRL's, end to end: tokens per second and peak memory per optimiser step.

Same student, teacher, prompts, batch, response cap, learning rate and optimiser, fp32, no
gradient checkpointing (so TRL's generation keeps its KV cache), temperature 1 for sampling and
for the loss, one process. Two cells:

- ``opd`` (student prefixes, reverse KL): ours ``objective="opd"`` through ``tasks.train.train``;
  TRL's ``GKDTrainer`` (``trl.experimental.gkd``) with ``lmbda=1`` (always on-policy),
  ``beta=1``; TRL's ``DistillationTrainer`` (``trl``, promoted from experimental in 1.x) with
  ``beta=1``. In TRL 1.16 ``beta=1`` is reverse KL in both: GKD's ``generalized_jsd_loss`` takes
  ``F.kl_div(teacher_log_probs, student_log_probs, log_target=True)`` = KL(q_student ‖ p_teacher)
  at ``beta == 1`` and KL(p_teacher ‖ q_student) at ``beta == 0``; DistillationConfig documents
  0 = forward, 1 = reverse.
- ``sft`` (teacher prefixes, forward KL against the live teacher): ours ``objective="sft"`` on
  the teacher's cached rollouts; GKD with ``lmbda=0``, ``beta=0``, ``seq_kd=False`` on the same
  rollouts' token ids (a collator hands it exactly our prompt + response ids).
  DistillationTrainer always samples from the student: it has no teacher-prefix mode. Ours
  also runs sft from the teacher's top-k score cache (``loss="sparse"``, k = 20: top-k + tail,
  an approximation of the exact forward KL), with no teacher forward in a step; the cache's
  build (one teacher forward over every rollout, shared by every run on those rollouts with
  that k) is timed on its own and printed with the rate of one epoch that pays for it alone.

Tokens are the response tokens the loss sees (each trainer's own mask: sampled lengths differ
between trainers, so rates are per token). Time is the interval between two optimiser-step
ends (everything a step does, logging included), wall and the process's CPU time. Memory is
the resident set (RSS): the kernel's high-water mark, reset after the warm-up step, read after
the last step — it sees everything (tensors, allocator caches, Python); tracemalloc does not see
torch's buffers and torch has no CPU peak counter. Every (trainer, cell, run) is its own process;
runs alternate ours / GKD / DistillationTrainer, and the table gives medians over runs.

    python -m bench.vs_trl [--profiles default real-weights] [--runs 3] [--steps 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from bench.step_breakdown import (
    add_common_arguments,
    answered_as_child,
    load_average,
    peak_rss_kib,
    reset_peak_rss,
    resolve_profile,
    run_child,
)

TRAINERS = {"opd": ("ours", "GKDTrainer", "DistillationTrainer"),
            "sft": ("ours", "ours, top-k cache", "GKDTrainer")}
LEARNING_RATE = 1e-4
CACHE_K = 20  # the score cache's k in docs/training.md


class _StepMeter:
    """Times between optimiser-step ends, the seconds a trainer's sampling took in each step,
    and the memory peaks over the steps after the warm-up: the RSS and, on a GPU, torch's CUDA
    peak (synchronised before every clock reading, so a step's kernels count in it)."""

    def __init__(self, warmup: int, tokens: list[float]):
        self.warmup, self.tokens, self.ends = warmup, tokens, []
        self.rss_before = self.peak = 0
        self.sampling, self.sampling_per_step = 0.0, []

    def step_ended(self) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.ends.append((time.perf_counter(), time.process_time()))
        self.sampling_per_step.append(self.sampling)
        self.sampling = 0.0
        if len(self.ends) == self.warmup:
            self.rss_before = reset_peak_rss()
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
        self.peak = peak_rss_kib()

    def sampled(self, sample: Callable):
        """sample(), its seconds counted as the current step's sampling."""
        import torch

        sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
        sync()
        began = time.perf_counter()
        try:
            return sample()
        finally:
            sync()
            self.sampling += time.perf_counter() - began

    def result(self) -> dict:
        import torch

        timed = len(self.ends) - self.warmup
        tokens = sum(self.tokens[self.warmup:])
        (wall0, cpu0), (wall1, cpu1) = self.ends[self.warmup - 1], self.ends[-1]
        cuda_peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
        return {"steps": timed, "tokens": tokens, "wall": wall1 - wall0, "cpu": cpu1 - cpu0,
                "peak_mib": self.peak / 1024, "extra_mib": (self.peak - self.rss_before) / 1024,
                "peak_cuda_gib": cuda_peak / 2**30,
                "generate": sum(self.sampling_per_step[self.warmup:]) / max(timed, 1)}


def _config(spec: dict, output_dir: str, **extra):
    from tasks.train import TrainConfig

    return TrainConfig(objective=spec["cell"], teacher=spec["teacher"], student=spec["student"],
                       **extra, train_problems=spec["problems"], output_dir=output_dir,
                       steps=spec["warmup"] + spec["steps"], batch_size=spec["batch_size"],
                       learning_rate=LEARNING_RATE, max_new_tokens=spec["max_new_tokens"],
                       prompt_template=spec["prompt_template"], checkpoint_every=10_000,
                       artifacts_root=spec["root"])


def _ours(spec: dict, scratch: str) -> dict:
    return _train_ours(_config(spec, scratch), spec["warmup"])


def _train_ours(config, warmup: int) -> dict:
    from tasks.train import train

    tokens: list[float] = []
    meter = _StepMeter(warmup, tokens)

    def on_step(step: int, metrics: dict[str, float]) -> None:
        tokens.append(metrics["train/response_tokens"])
        meter.step_ended()

    train(config, log=lambda line: None, on_step=on_step)
    return meter.result()


def _ours_cached(spec: dict, scratch: str) -> dict:
    """Ours on sft from the teacher's top-k score cache (the sparse loss: top-k + tail, not
    the exact forward KL): no teacher forward in a step. The cache is built once per teacher
    rollouts and k and shared by every run on them; its build is timed here on its own (into
    scratch, so every run builds it) and reported beside the steps."""
    from tasks.train import teacher_prefixes, teacher_scores

    config = _config(spec, scratch, loss="sparse", cache_k=CACHE_K)
    _, rollouts = teacher_prefixes(config)
    began = time.perf_counter()
    teacher_scores(replace(config, artifacts_root=str(Path(scratch) / "cache")), rollouts)
    build_seconds = time.perf_counter() - began
    return {**_train_ours(config, spec["warmup"]), "cache_build_s": build_seconds,
            "cache_tokens": sum(sample.length for sample in rollouts)}


def _trl_common(spec: dict, scratch: str) -> dict:
    """TrainingArguments shared by both TRL trainers: ours' optimiser and precision (fp32, or
    bf16 autocast over fp32 weights as ours' mixed_precision="bf16" when spec["bf16"])."""
    import torch

    return dict(output_dir=scratch, per_device_train_batch_size=spec["batch_size"],
                gradient_accumulation_steps=1, max_steps=spec["warmup"] + spec["steps"],
                learning_rate=spec.get("learning_rate", LEARNING_RATE),
                lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                max_grad_norm=1.0, optim="adamw_torch", bf16=spec.get("bf16", False),
                fp16=False, gradient_checkpointing=False,
                use_cpu=not torch.cuda.is_available(), report_to="none", save_strategy="no",
                seed=0, dataloader_num_workers=0, temperature=1.0)


def _models(spec: dict):
    from tasks.models import load_model, load_tokenizer

    student, teacher = load_model(spec["student"]), load_model(spec["teacher"])
    tokenizer = load_tokenizer(spec["student"])
    for model in (student, teacher):  # both stop at EOS, as ours does
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return student, teacher, tokenizer


def _gkd(spec: dict, scratch: str) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from tasks.train import teacher_prefixes

    student, teacher, tokenizer = _models(spec)
    _, rollouts = teacher_prefixes(_config(spec, scratch))  # cached: the prompts + teacher ids
    tokens: list[float] = []
    meter = _StepMeter(spec["warmup"], tokens)
    denominators: list[float] = []

    def collate(rows: list[dict]) -> dict:
        """GKD's batch from our token ids: full rows (right-padded), prompt-only rows
        (left-padded) for its on-policy generation, labels -100 outside the response."""
        samples = [rollouts[row["index"]] for row in rows]
        width = max(len(s.prompt_ids) + s.length for s in samples)
        prompt_width = max(len(s.prompt_ids) for s in samples)
        batch = {"input_ids": torch.full((len(rows), width), tokenizer.pad_token_id),
                 "attention_mask": torch.zeros(len(rows), width, dtype=torch.long),
                 "labels": torch.full((len(rows), width), -100),
                 "prompts": torch.full((len(rows), prompt_width), tokenizer.pad_token_id),
                 "prompt_attention_mask": torch.zeros(len(rows), prompt_width,
                                                      dtype=torch.long)}
        for row, sample in enumerate(samples):
            prompt, full = len(sample.prompt_ids), sample.prompt_ids + sample.response_ids
            batch["input_ids"][row, : len(full)] = torch.tensor(full)
            batch["attention_mask"][row, : len(full)] = 1
            batch["labels"][row, prompt : len(full)] = torch.tensor(sample.response_ids)
            batch["prompts"][row, prompt_width - prompt :] = torch.tensor(sample.prompt_ids)
            batch["prompt_attention_mask"][row, prompt_width - prompt :] = 1
        return batch

    class Counted(GKDTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            tokens.append(float((inputs["labels"][:, 1:] != -100).sum()))
            denominators.append(float(num_items_in_batch or 0))
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    class Meter(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            meter.step_ended()

    on_policy = spec["cell"] == "opd"
    trainer = Counted(
        model=student, teacher_model=teacher, processing_class=tokenizer,
        train_dataset=Dataset.from_list([{"index": i} for i in range(len(rollouts))]),
        data_collator=collate, callbacks=[Meter()],
        args=GKDConfig(**_trl_common(spec, scratch), lmbda=1.0 if on_policy else 0.0,
                       beta=1.0 if on_policy else 0.0, seq_kd=False,
                       max_new_tokens=spec["max_new_tokens"], disable_dropout=True))
    trainer.train()
    steps = slice(spec["warmup"], None)
    return {**meter.result(), "gkd_divides_by": sum(denominators[steps]),
            "gkd_loss_tokens": sum(tokens[steps])}


def distillation_inputs(problems: str, template: str, tokenizer_dir: str) -> dict:
    """What _distillation needs from the platform, computed here so that its process imports
    none of it (it may run in the vLLM environment, where TRL's vLLM mode lives): the prompts as
    chat conversations, and our token ids of the first four (it checks TRL's are the same)."""
    from tasks.data import read_problems
    from tasks.models import load_tokenizer
    from tasks.rollout import PROMPT_TEMPLATES, render_prompts

    rows = read_problems(problems)
    tokenizer = load_tokenizer(tokenizer_dir)
    ours = tokenizer(render_prompts(tokenizer, rows[:4], template),
                     add_special_tokens=False)["input_ids"]
    return {"conversations": [PROMPT_TEMPLATES[template].format(problem=p.problem)
                              for p in rows], "our_prompt_ids": ours}


def _distillation(spec: dict, scratch: str) -> dict:
    """TRL's DistillationTrainer (beta=1: reverse KL, always on-policy) on spec's prompts.

    spec["use_vllm"]: sample with TRL's vLLM in colocate mode (same process and GPU, taking
    spec["vllm_gpu_memory"] of it), else HF generate. spec["fixed_length"]: the models declare
    no EOS (bench.shapes); TRL needs one, so <|im_end|> is declared here and TRL is told to
    ignore it (vLLM ignore_eos, HF min_new_tokens): every response runs to the cap."""
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DistillationConfig, DistillationTrainer

    tokenizer = AutoTokenizer.from_pretrained(spec["student"], padding_side="left")
    if spec.get("fixed_length"):
        tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    student, teacher = (AutoModelForCausalLM.from_pretrained(spec[role], dtype=torch.float32)
                        for role in ("student", "teacher"))
    for model in (student, teacher):  # both stop at EOS, as ours does
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    conversations = [[{"role": "user", "content": text}] for text in spec["conversations"]]
    tokens: list[float] = []
    meter = _StepMeter(spec["warmup"], tokens)

    class Counted(DistillationTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            tokens.append(float(inputs["completion_mask"].sum()))
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        def _generate_single_turn(self, *args, **kwargs):  # weight sync + sampling
            return meter.sampled(lambda: super(Counted, self)._generate_single_turn(*args,
                                                                                     **kwargs))

    class Meter(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            meter.step_ended()

    use_vllm = spec.get("use_vllm", False)
    fixed_length = ({"ignore_eos": True} if use_vllm
                    else {"min_new_tokens": spec["max_new_tokens"]})
    vllm = (dict(use_vllm=True, vllm_mode="colocate",
                 vllm_gpu_memory_utilization=spec.get("vllm_gpu_memory", 0.3))
            if use_vllm else {})
    trainer = Counted(
        model=student, teacher_model=teacher, processing_class=tokenizer,
        train_dataset=Dataset.from_list([{"prompt": c} for c in conversations]),
        callbacks=[Meter()],
        args=DistillationConfig(**_trl_common(spec, scratch), beta=1.0, top_k=0, top_p=1.0,
                                max_completion_length=spec["max_new_tokens"], **vllm,
                                generation_kwargs=fixed_length if spec.get("fixed_length")
                                else None))
    same_prompts = trainer._tokenize_prompts(conversations[:4])[0] == spec["our_prompt_ids"]
    trainer.train()
    versions = {"trl": trl.__version__, "torch": torch.__version__}
    if use_vllm:
        import vllm

        versions["vllm"] = vllm.__version__
    return {**meter.result(), "same_prompt_ids": same_prompts, "versions": versions}


def _child(spec: dict) -> dict:
    import torch

    torch.manual_seed(0)
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    run = {"ours": _ours, "ours, top-k cache": _ours_cached, "GKDTrainer": _gkd,
           "DistillationTrainer": _distillation}
    with tempfile.TemporaryDirectory() as scratch:
        return run[spec["trainer"]](spec, scratch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", default=["default", "real-weights"])
    parser.add_argument("--cells", nargs="+", default=list(TRAINERS), choices=list(TRAINERS))
    parser.add_argument("--runs", type=int, default=3, help="runs per trainer and cell")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads in every run (0: torch's default)")
    parser.add_argument("--smollm2-batch", type=int, default=4)
    parser.add_argument("--smollm2-max-new-tokens", type=int, default=32)
    add_common_arguments(parser)
    args = parser.parse_args()
    if answered_as_child(args, _child):
        return
    import torch

    print(f"{datetime.datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, threads {args.threads or torch.get_num_threads()}; load "
          f"{load_average()} at start; medians of {args.runs} runs × {args.steps} steps after "
          f"{args.warmup} warm-up")
    print("| profile | cell | trainer | batch × cap | tokens/s | tokens/CPU-s | s/step | "
          "tokens/step | peak RSS | RSS above start | tokens/s ÷ TRL's |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.profiles:
        shape = ((args.smollm2_batch, args.smollm2_max_new_tokens) if name == "real-weights"
                 else (None, None))
        profile = resolve_profile(name, args.root, *shape)
        for cell in args.cells:
            _compare(args, profile, cell)
    print(f"load {load_average()} at the end")


def _compare(args, profile, cell: str) -> None:
    runs: dict[str, list[dict]] = {trainer: [] for trainer in TRAINERS[cell]}
    inputs = (distillation_inputs(str(profile.problems), profile.prompt_template,
                                  str(profile.student))
              if "DistillationTrainer" in runs else {})
    for _ in range(args.runs):
        for trainer in TRAINERS[cell]:  # alternating: every trainer sees the same load
            spec = {"trainer": trainer, "cell": cell, "teacher": str(profile.teacher),
                    "student": str(profile.student), "problems": str(profile.problems),
                    "prompt_template": profile.prompt_template,
                    "batch_size": profile.batch_size, "max_new_tokens": profile.max_new_tokens,
                    "steps": args.steps, "warmup": args.warmup, "threads": args.threads,
                    "root": str(args.root)}
            if trainer == "DistillationTrainer":
                spec.update(inputs)
            runs[trainer].append(run_child("bench.vs_trl", spec))
    rates = {t: statistics.median(r["tokens"] / r["wall"] for r in rs) for t, rs in runs.items()}
    for trainer, results in runs.items():
        median = {key: statistics.median(r[key] for r in results)
                  for key in ("wall", "cpu", "tokens", "peak_mib", "extra_mib", "steps")}
        cpu_rate = statistics.median(r["tokens"] / r["cpu"] for r in results)
        notes = [f"{k} {v}" for k, v in results[-1].items()
                 if k in ("same_prompt_ids", "gkd_divides_by", "gkd_loss_tokens")]
        ratio = "–" if not trainer.startswith("ours") else ", ".join(
            f"{rates[trainer] / rates[other]:.2f}× {other}" for other in rates
            if not other.startswith("ours"))
        print(f"| {profile.name} | {cell} | {trainer} | {profile.batch_size} × "
              f"{profile.max_new_tokens} | {rates[trainer]:.0f} | {cpu_rate:.0f} | "
              f"{median['wall'] / median['steps']:.3f} | "
              f"{median['tokens'] / median['steps']:.0f} | {median['peak_mib']:.0f} MiB | "
              f"{median['extra_mib']:.0f} MiB | {ratio} |", flush=True)
        if notes:
            print(f"<!-- {trainer}, last run: {', '.join(notes)} -->", file=sys.stderr)
    if "ours, top-k cache" in runs:
        cached = runs["ours, top-k cache"]
        build = statistics.median(r["cache_build_s"] for r in cached)
        tokens = cached[0]["cache_tokens"]
        epoch = 1 / (1 / rates["ours, top-k cache"] + build / tokens)
        print(f"\nBuilding the top-k cache (k = {CACHE_K}) over the {tokens} response tokens of "
              f"the teacher's rollouts: {build:.1f} s (median), {tokens / build:.0f} tokens/s. "
              f"One epoch that pays for it alone: {epoch:.0f} tokens/s.\n", flush=True)


if __name__ == "__main__":
    main()
