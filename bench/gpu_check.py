"""GPU check: one table of what a CUDA machine does with this project, before anyone relies on it.

Rows (sections, in order; ``--sections`` picks some):

- train: a bf16 (``TrainConfig.mixed_precision``) training step of every cell — sft, dagger,
  offline_rl, opd — on the embedded default models (``tasks.bootstrap.bootstrap_default``) and
  the first 256 training problems: seconds per step (generate + score + train, the mean after
  one untimed warm-up run that also builds the teacher's rollouts) and peak GPU memory.
- loss: forward and reverse KL, forward+backward, on random logits at V = 151,936 for T = 1,024
  up to 32,768 tokens, for each case in ``bench.kl_memory.CASES`` whose implementation this
  script knows (others are listed as skipped): seconds (median of 3 after one) and the peak GPU
  memory beyond the two logits tensors. Then the fused case: distill_core.fused_kl_loss
  (λ = 0.5) on bf16 hidden states (T, 1,024) and heads (V, 1,024) of both models, no logits
  tensor: seconds and peak memory beyond its inputs, also as a multiple of one fp32 student
  logits tensor. A case that runs out of memory says so and skips its longer T.
- rollout: HF ``generate`` on the GPU vs vLLM (``tasks.vllm_backend`` in the environment named
  by ``DISTILL_LAB_VLLM_PYTHON``; skipped with a note when unset) on SmolLM2-135M-Instruct from
  the real-weights bootstrap: generated tokens/s, greedy and at temperature 1 (bench.rollout_vllm).
- accelerate: ``accelerate launch --num_processes 1 -m tasks.train`` of a short bf16 run of the
  default student: wall time and final loss.
- shapes: the on-policy (opd) step at real sizes — a Qwen3-0.6B-shaped student and a
  Qwen3-1.7B-shaped teacher (``--teacher 4b``: Qwen3-4B's) with random weights (bench.shapes),
  bf16, batch 16 × 1,024 response tokens — through tasks.train with the student sampling by HF
  generate and by vLLM (``rollout_backend``; skipped with a note when DISTILL_LAB_VLLM_PYTHON is
  unset), then TRL's DistillationTrainer with its vLLM in colocate mode at the same settings
  (in the vLLM environment, where TRL must be installed). Each its own process, one warm-up
  step, then the mean of the timed steps: seconds per step split into its parts
  (bench.step_breakdown.time_training), response tokens/s, torch's peak CUDA memory of the
  training process and nvidia-smi's peak over every process of the run. A verdict row per goal
  of issue 30 closes the section.

    python -m bench.gpu_check                  # on a CUDA machine; exits 2 with one line if none
    python -m bench.gpu_check --cpu-smoke      # the same code paths on the CPU at toy sizes
    python -m bench.gpu_check --sections shapes [--teacher 4b] [--response-tokens 512]

A section that fails puts its error in the table and the script exits 1, so one failure does not
cost the other measurements. The embedded default's bootstrap takes minutes when its artifacts
are not cached: pass ``--root`` (or set DISTILL_LAB_ARTIFACTS) to an artifact folder that holds
them. The CPU smoke bootstraps a toy default (a few SFT steps) under a temporary folder.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

NO_CUDA_EXIT = 2
SECTIONS = ("train", "loss", "rollout", "accelerate", "shapes")
CELLS = ("sft", "dagger", "offline_rl", "opd")
SHAPES_LEARNING_RATE = 1e-5  # ours and TRL's alike (random weights: only the time matters)
VLLM_GPU_MEMORY = 0.3  # the GPU fraction vLLM takes beside training, ours and TRL's
SPEED_UP_GOAL = 3.0  # issue 30: the opd step with vLLM sampling ≥ 3× faster than with HF's


@dataclass(frozen=True)
class Sizes:
    """How much each section measures: the real check on a GPU, or toy sizes for the smoke."""

    device: str
    train_steps: int = 5
    batch_size: int = 16
    train_problems: int = 256
    max_new_tokens: int = 96
    loss_vocab: int = 151_936
    loss_tokens: tuple[int, ...] = (1_024, 4_096, 16_384, 32_768)
    loss_width: int = 1_024  # hidden width D of the fused case (Qwen3-0.6B's)
    loss_repeats: int = 3
    rollout_prompts: int = 32
    rollout_new_tokens: int = 64
    toy_bootstrap: bool = False
    shapes_teacher: str = "1.7b"  # a key of bench.shapes.ARCHITECTURES
    shapes_layers: int | None = None  # decoder layers of both models (None: the published)
    shapes_batch: int = 16
    shapes_new_tokens: int = 1_024
    shapes_steps: int = 3  # timed, after one warm-up step
    shapes_precision: str = "bf16"  # TrainConfig.mixed_precision; TRL's bf16 flag


GPU = Sizes(device="cuda")
SMOKE = Sizes(device="cpu", train_steps=2, batch_size=4, train_problems=16, max_new_tokens=8,
              loss_vocab=4_096, loss_tokens=(64, 256), loss_width=64, loss_repeats=1,
              rollout_prompts=2, rollout_new_tokens=4, toy_bootstrap=True, shapes_layers=2,
              shapes_batch=2, shapes_new_tokens=8, shapes_steps=2, shapes_precision="no")


@dataclass
class Row:
    section: str
    setting: str
    result: str
    memory: str = "-"
    note: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    failed: bool = False

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print(f"  {row.section}: {row.setting}: {row.result} {row.memory} {row.note}".rstrip(),
              flush=True)

    def table(self) -> str:
        lines = ["| section | setting | result | peak GPU memory | note |", "|---|---|---|---|---|"]
        lines += [f"| {r.section} | {r.setting} | {r.result} | {r.memory} | {r.note} |"
                  for r in self.rows]
        return "\n".join(lines)


class PeakMemory:
    """Peak GPU memory torch allocated inside the block, beyond what was allocated before it
    when ``extra`` (CUDA only; on the CPU the text says so)."""

    def __init__(self, device: str, extra: bool = False):
        self.cuda, self.extra, self.bytes = device == "cuda", extra, 0

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated() if self.extra else 0
        return self

    def __exit__(self, *exc_info) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated() - self.before

    def text(self) -> str:
        return f"{self.bytes / 2**30:.2f} GiB" if self.cuda else "- (CPU)"


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- models


def default_models(sizes: Sizes, root: Path):
    """The embedded default (bootstrap_default), or for the smoke a toy one built the same way."""
    from tasks.arithmetic import ArithmeticConfig
    from tasks.bootstrap import DefaultBootstrapConfig, bootstrap_default
    from tasks.models import TinyModelConfig
    from tasks.sft import SFTConfig

    config = DefaultBootstrapConfig()
    if sizes.toy_bootstrap:
        toy = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                              max_positions=256)
        config = DefaultBootstrapConfig(
            task=ArithmeticConfig(train_size=200, held_out_size=8, test_size=8), vocab_size=300,
            teacher=toy, teacher_sft=SFTConfig(steps=2, batch_size=8, warmup_steps=1),
            student_layers=(0,),
            student_sft=SFTConfig(steps=1, batch_size=8, warmup_steps=1),
            eval_problems=4, greedy_max_new_tokens=96)  # inside the toy's 256 positions
    return bootstrap_default(config, root=root, log=lambda line: None)


def _base_config(models, sizes: Sizes, root: Path, scratch: Path):
    """An sft run of the default on its first sizes.train_problems problems (the teacher's
    rollouts cover every problem of the file: all 20,000 would take the check's whole budget)."""
    from tasks.data import read_problems, write_problems
    from tasks.train import TrainConfig

    scratch.mkdir(parents=True, exist_ok=True)
    problems = scratch / "train.jsonl"
    write_problems(read_problems(models.split("train"))[: sizes.train_problems], problems)
    return TrainConfig(objective="sft", teacher=str(models.teacher_dir),
                       student=str(models.student_dir),
                       train_problems=str(problems), output_dir=str(scratch / "unused"),
                       steps=sizes.train_steps, batch_size=sizes.batch_size, learning_rate=1e-4,
                       max_new_tokens=sizes.max_new_tokens, checkpoint_every=10_000,
                       mixed_precision="bf16", artifacts_root=str(root))


# ----------------------------------------------------------------------------- sections


def train_rows(report: Report, sizes: Sizes, root: Path, scratch: Path) -> None:
    from tasks.train import train

    models = default_models(sizes, root)
    base = _base_config(models, sizes, root, scratch)
    for cell in CELLS:
        config = replace(base, objective=cell, output_dir=str(scratch / cell))
        train(replace(config, steps=1, output_dir=str(scratch / f"warm-{cell}")),
              log=lambda line: None)  # builds the teacher's rollouts; CUDA warm-up
        _free_memory()
        with PeakMemory(sizes.device) as peak:
            history = train(config, log=lambda line: None).history
        seconds = [h["time/generate"] + h["time/score"] + h["time/train"] for h in history]
        report.add(Row("train", f"{cell}, bf16, batch {config.batch_size}, responses ≤ "
                       f"{config.max_new_tokens} tokens", f"{statistics.mean(seconds):.3f} s/step",
                       peak.text(), f"loss {history[-1]['train/loss']:.4f}"))
        _free_memory()


def _loss_steps() -> dict[str, Callable]:
    """forward+backward of each implementation bench.kl_memory names, on any device."""
    import distill_core as dc

    def textbook(student, teacher, mask, reverse_weight):  # F.kl_div(input, target) = KL(t ‖ i)
        log_q = torch.log_softmax(student, dim=-1)
        log_p = torch.log_softmax(teacher, dim=-1)
        pair = (log_q, log_p) if reverse_weight == 0.0 else (log_p, log_q)
        return torch.nn.functional.kl_div(*pair, log_target=True, reduction="sum") / mask.sum()

    def straightforward(student, teacher, mask, reverse_weight):
        direction = dc.reverse_kl if reverse_weight == 1.0 else dc.forward_kl
        return dc.masked_mean(direction(student, teacher), mask)

    def chunked(student, teacher, mask, reverse_weight):
        return dc.kl_loss(student, teacher, mask, reverse_weight).loss

    return {"textbook": textbook, "straightforward": straightforward, "chunked": chunked}


def _time_loss(step: Callable, reverse_weight: float, tokens: int, vocab: int, sizes: Sizes):
    """(median seconds, PeakMemory) of one forward+backward on (1, tokens, vocab) logits."""
    generator = torch.Generator(device=sizes.device).manual_seed(0)
    student = torch.randn(1, tokens, vocab, device=sizes.device, generator=generator,
                          requires_grad=True)
    teacher = torch.randn(1, tokens, vocab, device=sizes.device, generator=generator)
    mask = torch.ones(1, tokens, device=sizes.device)

    def once() -> None:
        step(student, teacher, mask, reverse_weight).backward()
        student.grad = None

    return _timed(once, sizes)


def _time_fused(tokens: int, sizes: Sizes):
    """(median seconds, PeakMemory) of the fused loss's forward+backward (λ = 0.5) on bf16
    hidden states (tokens, D) and heads (V, D) of both models; memory beyond those inputs."""
    import distill_core as dc

    generator = torch.Generator(device=sizes.device).manual_seed(0)

    def bf16(rows: int, scale: float = 1.0) -> torch.Tensor:
        values = torch.randn(rows, sizes.loss_width, device=sizes.device, generator=generator)
        return (values * scale).to(torch.bfloat16)

    head_scale = sizes.loss_width ** -0.5
    student = dc.HiddenStates(bf16(tokens).requires_grad_(True),
                              bf16(sizes.loss_vocab, head_scale).requires_grad_(True))
    teacher = dc.HiddenStates(bf16(tokens), bf16(sizes.loss_vocab, head_scale))
    mask = torch.ones(tokens, device=sizes.device)

    def once() -> None:
        dc.fused_kl_loss(student, teacher, mask, 0.5).loss.backward()
        student.hidden_BTD.grad = student.head_weight_VD.grad = None

    return _timed(once, sizes)


def _timed(step: Callable[[], None], sizes: Sizes):
    """(median seconds of sizes.loss_repeats runs after a first one, PeakMemory of the first)."""
    def once() -> float:
        start = time.perf_counter()
        step()
        if sizes.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    with PeakMemory(sizes.device, extra=True) as peak:
        once()
    return statistics.median(once() for _ in range(sizes.loss_repeats)), peak


def loss_rows(report: Report, sizes: Sizes) -> None:
    try:
        from bench.kl_memory import CASES
    except ImportError as error:
        report.add(Row("loss", "-", "skipped", note=f"bench.kl_memory has no CASES ({error})"))
        return
    steps = _loss_steps()
    for name, spec in CASES.items():
        implementation, reverse_weight = spec[0], spec[1]
        if implementation not in steps:
            report.add(Row("loss", name, "skipped", note=f"gpu_check does not know how to run "
                           f"implementation {implementation!r} of bench.kl_memory yet"))
            continue
        for tokens in sizes.loss_tokens:
            setting = f"{name}, V={sizes.loss_vocab:,}, T={tokens:,}, fp32"
            try:
                seconds, peak = _time_loss(steps[implementation], reverse_weight, tokens,
                                           sizes.loss_vocab, sizes)
            except torch.OutOfMemoryError:
                _free_memory()
                report.add(Row("loss", setting, "out of memory", note="longer T skipped"))
                break
            report.add(Row("loss", setting, f"{seconds:.3f} s fwd+bwd", peak.text(),
                           "memory beyond the two logits tensors"))
            _free_memory()
    fused_rows(report, sizes)


def fused_rows(report: Report, sizes: Sizes) -> None:
    """The fused case per T: no logits tensor, so its peak is compared with one."""
    for tokens in sizes.loss_tokens:
        setting = (f"fused λ=0.5, V={sizes.loss_vocab:,}, D={sizes.loss_width:,}, "
                   f"T={tokens:,}, bf16")
        try:
            seconds, peak = _time_fused(tokens, sizes)
        except torch.OutOfMemoryError:
            _free_memory()
            report.add(Row("loss", setting, "out of memory", note="longer T skipped"))
            break
        logits_bytes = tokens * sizes.loss_vocab * 4
        ratio = (f" = {peak.bytes / logits_bytes:.2f}× one fp32 student logits tensor"
                 if peak.cuda else "")
        report.add(Row("loss", setting, f"{seconds:.3f} s fwd+bwd", peak.text(),
                       f"memory beyond hidden states and heads{ratio}"))
        _free_memory()


def rollout_rows(report: Report, sizes: Sizes, root: Path) -> None:
    from bench.rollout_vllm import SETTINGS, measure_vllm
    from tasks.bootstrap import RealWeightsProfile, bootstrap_real_weights
    from tasks.data import read_problems
    from tasks.models import load_tokenizer
    from tasks.rollout import render_prompts

    real = bootstrap_real_weights(root=root, log=lambda line: None)
    tokenizer = load_tokenizer(real.teacher_dir)
    problems = read_problems(real.split("held_out"))[: sizes.rollout_prompts]
    prompts = render_prompts(tokenizer, problems, RealWeightsProfile().prompt_template)
    setting = (f"SmolLM2-135M-Instruct fp32, {len(prompts)} prompts in one batch, "
               f"{sizes.rollout_new_tokens} new tokens")
    rates, peak = _hf_rates(real.teacher_dir, tokenizer, prompts, sizes)
    report.add(Row("rollout", f"HF generate on {sizes.device}, {setting}", _rates(rates),
                   peak.text()))
    _free_memory()
    if not os.environ.get("DISTILL_LAB_VLLM_PYTHON"):
        report.add(Row("rollout", f"vLLM, {setting}", "skipped",
                       note="DISTILL_LAB_VLLM_PYTHON is unset: no vLLM environment (pip install "
                       "vllm in its own venv; see tasks/vllm_backend.py)"))
        return
    results = measure_vllm(real.teacher_dir, prompts, sizes.rollout_new_tokens, eager=False)
    report.add(Row("rollout", f"vLLM, {setting}",
                   _rates({name: results[name][1] for name in SETTINGS}),
                   "- (own process)", f"start-up {results['start-up s']:.0f} s"))


def _hf_rates(model_dir: Path, tokenizer, prompts: list[str], sizes: Sizes):
    """Generated tokens/s of HF generate on sizes.device per setting (bench.rollout_vllm's)."""
    from bench.rollout_vllm import SETTINGS, timed
    from tasks.models import load_model
    from tasks.rollout import SamplingConfig, generate_hf

    model = load_model(model_dir, device=sizes.device)
    rates = {}
    with PeakMemory(sizes.device) as peak:
        for name, temperature in SETTINGS.items():
            config = SamplingConfig(temperature=temperature, batch_size=len(prompts), seed=0,
                                    max_new_tokens=sizes.rollout_new_tokens)
            rates[name] = timed(lambda p, c: generate_hf(model, tokenizer, p, c), prompts,
                                config, f"HF generate {name}")[1]
    return rates, peak


def _rates(rates: dict[str, float]) -> str:
    return ", ".join(f"{name} {rate:,.0f} tok/s" if rate >= 100 else f"{name} {rate:.2g} tok/s"
                     for name, rate in rates.items())


def accelerate_row(report: Report, sizes: Sizes, root: Path, scratch: Path) -> None:
    """One process through `accelerate launch`, as a GPU run of one training run starts."""
    models = default_models(sizes, root)
    config = replace(_base_config(models, sizes, root, scratch), steps=2,
                     output_dir=str(scratch / "launched"))
    path = scratch / "launched.json"
    path.write_text(json.dumps(asdict(config)))
    device_flags = ["--cpu"] if sizes.device == "cpu" else []
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1",
               "--num_machines", "1", "--mixed_precision", "bf16", "--dynamo_backend", "no",
               *device_flags, "-m", "tasks.train", "--config", str(path)]
    started = time.perf_counter()
    path_entries = [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
    completed = subprocess.run(command, capture_output=True, text=True, check=False,
                               env={**os.environ,
                                    "PYTHONPATH": os.pathsep.join(filter(None, path_entries))})
    seconds = time.perf_counter() - started
    setting = (f"accelerate launch --num_processes 1 -m tasks.train (sft, bf16, "
               f"{config.steps} steps)")
    if completed.returncode != 0:
        raise RuntimeError(f"exit {completed.returncode}: {_first_error(completed)}")
    metrics = json.loads((scratch / "launched" / "final_metrics.json").read_text())
    report.add(Row("accelerate", setting, f"{seconds:.1f} s wall, exit 0", "- (own process)",
                   note=f"final loss {metrics['train/loss']:.4f} (wall includes start-up)"))


def _first_error(completed: subprocess.CompletedProcess) -> str:
    """The launched process's own error line (the launcher's CalledProcessError comes after)."""
    lines = (completed.stderr or completed.stdout or "").strip().splitlines() or ["no output"]
    errors = [line for line in lines if "Error" in line and not line.startswith(" ")]
    return errors[0] if errors else lines[-1]


# ----------------------------------------------------------------------------- shapes


class DeviceMemory:
    """Peak GPU memory in use on the machine while the block runs, above what was in use when
    it began: nvidia-smi's memory.used summed over the GPUs, sampled every 0.2 s. It counts
    every process of the run — the trainer and a vLLM worker beside it — with their CUDA
    contexts and the KV cache vLLM reserves; a peak shorter than 0.2 s can be missed. CUDA
    only (the check has the machine to itself)."""

    def __init__(self, device: str):
        self.active = device == "cuda" and shutil.which("nvidia-smi") is not None
        self.peak_mib = self.baseline_mib = 0.0

    def __enter__(self) -> DeviceMemory:
        if self.active:
            self.baseline_mib = self.peak_mib = self._used_mib()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.active:
            self._stop.set()
            self._thread.join()

    def _poll(self) -> None:
        while not self._stop.wait(0.2):
            self.peak_mib = max(self.peak_mib, self._used_mib())

    @staticmethod
    def _used_mib() -> float:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             check=True).stdout
        return sum(float(line) for line in out.split())

    @property
    def gib(self) -> float | None:
        return (self.peak_mib - self.baseline_mib) / 1024 if self.active else None


def shapes_rows(report: Report, sizes: Sizes, root: Path) -> dict[str, dict]:
    """The opd step at Qwen3's shapes: ours with HF and with vLLM sampling, TRL with vLLM (on
    the CPU smoke: with HF generate), then the goals' verdicts. Returns what was measured, by
    row: "hf", "vllm", "trl" (each a bench.step_breakdown / bench.vs_trl child's result)."""
    from bench.shapes import build_pair

    pair = build_pair(root, "0.6b", sizes.shapes_teacher, sizes.shapes_layers,
                      device=sizes.device, log=lambda line: None)
    _free_memory()  # the build's blocks, cached by torch in this process
    shape = (f"{pair.describe()}, {'bf16' if sizes.shapes_precision == 'bf16' else 'fp32'}, "
             f"batch {sizes.shapes_batch} × {sizes.shapes_new_tokens:,} tokens")
    measured: dict[str, dict] = {}
    for backend, sampler in (("hf", "HF generate"), ("vllm", "vLLM")):
        setting = f"opd step, {sampler} sampling, {shape}"
        skip = _why_not_sampling_with(backend)
        if skip:
            report.add(Row("shapes", setting, "skipped", note=skip))
            continue
        with DeviceMemory(sizes.device) as device_memory:
            result = _child_or_error(report, setting, lambda backend=backend:
                                     _ours_at_shapes(pair, sizes, backend, root))
        if result is None:
            continue
        measured[backend] = {**result, "device_gib": device_memory.gib}
        report.add(Row("shapes", setting, _step_rate(measured[backend]),
                       _memory_text(measured[backend], sizes), _parts_text(result)))
    trl = _trl_at_shapes(report, pair, sizes, shape)
    if trl is not None:
        measured["trl"] = trl
    for row in verdicts(measured, sizes.device):
        report.add(row)
    return measured


def _why_not_sampling_with(backend: str) -> str:
    """Why our trainer cannot sample with backend here ("" when it can)."""
    from dataclasses import fields

    from tasks.train import TrainConfig

    if backend == "hf":
        return ""
    if "rollout_backend" not in {f.name for f in fields(TrainConfig)}:
        return ("this tree's TrainConfig has no rollout_backend: vLLM sampling inside training "
                "(issue 30) is not merged here yet")
    if not os.environ.get("DISTILL_LAB_VLLM_PYTHON"):
        return ("DISTILL_LAB_VLLM_PYTHON is unset: no vLLM environment (GPU: pip install vllm in "
                "its own venv; CPU: bash infra/vllm-cpu-env.sh)")
    return ""


def _ours_at_shapes(pair, sizes: Sizes, backend: str, root: Path) -> dict:
    """One bench.step_breakdown child: our opd run at the pair's shapes, sampling with backend."""
    from bench.step_breakdown import REPOSITORY, run_child

    config = {"mixed_precision": sizes.shapes_precision, "learning_rate": SHAPES_LEARNING_RATE}
    if backend == "vllm":
        config.update(rollout_backend="vllm", vllm_gpu_memory=VLLM_GPU_MEMORY,
                      vllm_eager=sizes.device == "cpu")  # a CPU smoke skips the compile
    spec = {"code": str(REPOSITORY), "cell": "opd", "teacher": str(pair.teacher_dir),
            "student": str(pair.student_dir), "problems": str(pair.problems),
            "prompt_template": "boxed", "batch_size": sizes.shapes_batch,
            "max_new_tokens": sizes.shapes_new_tokens, "steps": sizes.shapes_steps,
            "threads": 0, "root": str(root), "config": config}
    return run_child("bench.step_breakdown", spec)


def _trl_at_shapes(report: Report, pair, sizes: Sizes, shape: str) -> dict | None:
    """TRL's DistillationTrainer (bench.vs_trl's child) at the same settings: with its vLLM in
    colocate mode on a GPU, run by $DISTILL_LAB_TRL_PYTHON, else the vLLM environment's python
    (TRL's vLLM mode imports vllm in its own process, which this project's environment cannot
    hold); on the CPU smoke with
    HF generate, by this python. Skipped with a note where TRL is not importable there."""
    from bench.step_breakdown import run_child
    from bench.vs_trl import distillation_inputs

    use_vllm = sizes.device == "cuda"
    # TRL pins its own vLLM range (trl[vllm] 1.16: 0.22-0.31); its python may be another env's.
    python = (os.environ.get("DISTILL_LAB_TRL_PYTHON") or os.environ.get(
        "DISTILL_LAB_VLLM_PYTHON", "")) if use_vllm else sys.executable
    setting = (f"opd step, TRL DistillationTrainer, "
               f"{'vLLM colocate' if use_vllm else 'HF generate'} sampling, {shape}")
    skip = _why_not_trl(python, use_vllm)
    if skip:
        report.add(Row("shapes", setting, "skipped", note=skip))
        return None
    spec = {"trainer": "DistillationTrainer", "cell": "opd", "teacher": str(pair.teacher_dir),
            "student": str(pair.student_dir), "batch_size": sizes.shapes_batch,
            "max_new_tokens": sizes.shapes_new_tokens, "steps": sizes.shapes_steps,
            "warmup": 1, "threads": 0, "learning_rate": SHAPES_LEARNING_RATE,
            "bf16": sizes.shapes_precision == "bf16", "use_vllm": use_vllm,
            "vllm_gpu_memory": VLLM_GPU_MEMORY, "fixed_length": True,
            **distillation_inputs(str(pair.problems), "boxed", str(pair.student_dir))}
    with DeviceMemory(sizes.device) as device_memory:
        result = _child_or_error(report, setting,
                                 lambda: run_child("bench.vs_trl", spec, python=python))
    if result is None:
        return None
    steps = result["steps"]
    trl = {"wall": result["wall"] / steps, "tokens": result["tokens"] / steps,
           "generate": result["generate"], "peak_rss_mib": result["peak_mib"],
           "peak_cuda_gib": result["peak_cuda_gib"], "device_gib": device_memory.gib,
           "use_vllm": use_vllm, "same_prompt_ids": result["same_prompt_ids"]}
    versions = ", ".join(f"{name} {version}" for name, version in result["versions"].items())
    note = (f"generate {trl['generate']:.3f} s (weight sync included), the rest "
            f"{trl['wall'] - trl['generate']:.3f} s; same prompt ids as ours: "
            f"{result['same_prompt_ids']}; {versions}")
    report.add(Row("shapes", setting, _step_rate(trl), _memory_text(trl, sizes), note))
    return trl


def _child_or_error(report: Report, setting: str, measure: Callable[[], dict]) -> dict | None:
    """measure()'s result; None after an ERROR row (its process's own error line) when the
    process failed, e.g. out of memory: the other rows still run, the check exits 1."""
    try:
        return measure()
    except SystemExit as failure:  # bench.step_breakdown.run_child: the child's stderr tail
        lines = [line.strip() for line in str(failure).splitlines() if line.strip()]
        errors = [line for line in lines if "Error" in line or "error" in line]
        report.failed = True
        report.add(Row("shapes", setting, "ERROR", note=(errors or lines or ["?"])[-1][:300]))
        return None


def _why_not_trl(python: str, use_vllm: bool) -> str:
    """Why TRL's run cannot start under python ("" when it can)."""
    if not python:
        return ("DISTILL_LAB_TRL_PYTHON and DISTILL_LAB_VLLM_PYTHON are unset: TRL's vLLM mode "
                "needs an environment with 'trl[vllm]>=1.16,<2' and datasets")
    modules = "trl, datasets" + (", vllm" if use_vllm else "")
    probe = subprocess.run([python, "-c", f"import {modules}"], capture_output=True, text=True,
                           check=False)
    if probe.returncode:
        missing = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return (f"{python} cannot import {modules} ({missing}): pip install 'trl>=1.16,<2' "
                "datasets there (the bench extra)")
    return ""


def _step_rate(result: dict) -> str:
    rate = result["tokens"] / result["wall"]
    return f"{result['wall']:.3f} s/step, " + (f"{rate:,.0f} tok/s" if rate >= 100
                                                else f"{rate:.2g} tok/s")


def _memory_text(result: dict, sizes: Sizes) -> str:
    if sizes.device == "cuda":
        device = result.get("device_gib")
        every = f"; all processes {device:.1f} GiB (nvidia-smi)" if device is not None else ""
        return f"torch {result['peak_cuda_gib']:.1f} GiB{every}"
    return f"RSS {result['peak_rss_mib']:,.0f} MiB (training process only)"


def _parts_text(result: dict) -> str:
    handoff = f" (hand-off {result['handoff']:.3f})" if result.get("handoff") else ""
    return (f"generate {result['generate']:.3f}{handoff} · teacher "
            f"{result['teacher_forward']:.3f} · student {result['student_forward']:.3f} · loss "
            f"{result['loss']:.3f} · backward {result['backward']:.3f} · optimiser "
            f"{result['optimizer']:.3f} · other {result['other']:.3f} s")


def verdicts(measured: dict[str, dict], device: str) -> list[Row]:
    """One row per goal of issue 30: met, missed (and why, from the step's parts) or not
    measured. measured: shapes_rows' results ("hf", "vllm", "trl")."""
    where = "" if device == "cuda" else " (CPU smoke: the goals are for a GPU)"
    return [_speed_up_verdict(measured, where), _against_trl_verdict(measured, device, where)]


def _speed_up_verdict(measured: dict[str, dict], where: str) -> Row:
    goal = f"opd step with vLLM sampling ≥ {SPEED_UP_GOAL:g}× faster than with HF's"
    hf, vllm = measured.get("hf"), measured.get("vllm")
    if hf is None or vllm is None:
        return Row("goal", goal, "not measured", note="needs both opd rows above" + where)
    speed_up = hf["wall"] / vllm["wall"]
    verdict = f"{'met' if speed_up >= SPEED_UP_GOAL else 'missed'}: {speed_up:.2f}×"
    rest = hf["wall"] - hf["generate"]  # what HF's step spends besides sampling
    note = (f"sampling {hf['generate']:.3f} → {vllm['generate']:.3f} s/step (hand-off "
            f"{vllm.get('handoff', 0.0):.3f}), the rest {rest:.3f} → "
            f"{vllm['wall'] - vllm['generate']:.3f} s; ")
    note += (f"with no sampling time at all a step would take the rest, {rest:.3f} s: no sampler "
             f"can beat {hf['wall'] / rest:.2f}× here" if hf["wall"] < SPEED_UP_GOAL * rest
             else f"largest part of the vLLM step: {_largest_part(vllm)}")
    return Row("goal", goal, verdict, note=note + where)


def _against_trl_verdict(measured: dict[str, dict], device: str, where: str) -> Row:
    trl = measured.get("trl")
    ours = measured.get("vllm" if trl is None or trl["use_vllm"] else "hf")
    sampler = "vLLM" if trl is None or trl["use_vllm"] else "HF generate"
    goal = f"our tokens/s ≥ TRL DistillationTrainer's ({sampler}) at ≤ its peak memory"
    if trl is None or ours is None:
        return Row("goal", goal, "not measured", note="needs our row and TRL's above" + where)
    rate = (ours["tokens"] / ours["wall"]) / (trl["tokens"] / trl["wall"])
    memory_key = "device_gib" if device == "cuda" else "peak_rss_mib"
    memory = ours[memory_key] / trl[memory_key] if ours.get(memory_key) and trl.get(
        memory_key) else None
    met = rate >= 1.0 and memory is not None and memory <= 1.0
    memory_text = "memory not compared" if memory is None else f"{memory:.2f}× its memory"
    note = (f"sampling {ours['generate']:.3f} vs TRL {trl['generate']:.3f} s/step, the rest "
            f"{ours['wall'] - ours['generate']:.3f} vs {trl['wall'] - trl['generate']:.3f} s; "
            f"largest part of ours: {_largest_part(ours)}")
    if device != "cuda":
        note += "; memory: resident sets, a sampler in another process not counted"
    return Row("goal", goal, f"{'met' if met else 'missed'}: {rate:.2f}× its tokens/s at "
               f"{memory_text}", note=note + where)


def _largest_part(result: dict) -> str:
    from bench.step_breakdown import PARTS

    part = max(PARTS, key=lambda name: result[name])
    return f"{part} {result[part]:.3f} s ({result[part] / result['wall']:.0%})"


# ----------------------------------------------------------------------------- main


def _header(sizes: Sizes) -> str:
    if sizes.device == "cuda":
        properties = torch.cuda.get_device_properties(0)
        device = (f"{properties.name}, {properties.total_memory / 2**30:.0f} GiB, CUDA "
                  f"{torch.version.cuda}, bf16 {torch.cuda.is_bf16_supported()}")
    else:
        device = f"CPU smoke at toy sizes ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})"
    return f"gpu_check: {device}; torch {torch.__version__}"


def run(sizes: Sizes, sections: list[str], root: Path) -> Report:
    report = Report()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        work = {
            "train": lambda: train_rows(report, sizes, root, Path(scratch) / "train"),
            "loss": lambda: loss_rows(report, sizes),
            "rollout": lambda: rollout_rows(report, sizes, root),
            "accelerate": lambda: accelerate_row(report, sizes, root,
                                                 Path(scratch) / "accelerate"),
            "shapes": lambda: shapes_rows(report, sizes, root),
        }
        for section in sections:
            try:
                work[section]()
            except Exception as error:  # noqa: BLE001  (reported in the table; exit code 1)
                report.failed = True
                first_line = (str(error).strip().splitlines() or [""])[0][:200]
                report.add(Row(section, "-", "ERROR", note=f"{type(error).__name__}: "
                               f"{first_line}"))
            _free_memory()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", "--dry-run", action="store_true", dest="cpu_smoke",
                        help="run every section on the CPU at toy sizes (no GPU needed)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated, from {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--root", type=Path, default=None,
                        help="artifact root holding (or to hold) the bootstrapped models")
    parser.add_argument("--max-loss-tokens", type=int, default=None,
                        help="longest T of the loss section (e.g. 16384 on an 80 GB card)")
    parser.add_argument("--teacher", choices=("1.7b", "4b"), default=None,
                        help="shapes: the teacher's Qwen3 shape (default 1.7b)")
    parser.add_argument("--layers", type=int, default=None,
                        help="shapes: decoder layers of both models (default: the published "
                        "depth; the CPU smoke's 2)")
    parser.add_argument("--response-tokens", type=int, default=None,
                        help="shapes: response length (default 1,024; the CPU smoke's 8)")
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections: unknown {unknown}; choose from {', '.join(SECTIONS)}")
    if not args.cpu_smoke and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device here (torch {torch.__version__}, CUDA build "
              f"{torch.version.cuda}); run it on a GPU machine, or pass --cpu-smoke to try its "
              "code paths on the CPU", file=sys.stderr)
        return NO_CUDA_EXIT
    sizes = SMOKE if args.cpu_smoke else GPU
    if args.max_loss_tokens:
        sizes = replace(sizes, loss_tokens=tuple(t for t in sizes.loss_tokens
                                                 if t <= args.max_loss_tokens))
    shapes = {"shapes_teacher": args.teacher, "shapes_layers": args.layers,
              "shapes_new_tokens": args.response_tokens}
    sizes = replace(sizes, **{name: value for name, value in shapes.items() if value})
    print(_header(sizes), flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu-check-artifacts-") as toy_root:
        root = Path(toy_root) if args.cpu_smoke and args.root is None else args.root
        report = run(sizes, sections, root if root is not None else _default_root())
    print()
    print(report.table())
    return 1 if report.failed else 0


def _default_root() -> Path:
    from tasks.artifacts import artifact_root

    return artifact_root()


if __name__ == "__main__":
    sys.exit(main())
