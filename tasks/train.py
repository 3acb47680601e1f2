"""Distillation training: one loop for every cell of the grid, λ mixes and the length curriculum.

``train(config)`` trains a student with any objective — ``sft`` (teacher prefixes, forward KL),
``dagger`` (student prefixes, forward KL), ``offline_rl`` (teacher prefixes, reverse KL),
``opd`` (student prefixes, reverse KL) or ``prefix:λ`` — and returns the final checkpoint and
metrics. Per step:

1. Prefixes. Teacher-prefix cells draw the teacher's cached rollouts (``teacher_rollouts``: made
   once, reused by every cell and run). Student-prefix cells sample fresh responses from the
   current student: ``generate`` on the live model, or with ``rollout_backend: vllm`` a vLLM
   engine handed the weights every ``handoff_every`` steps (``tasks.policy_sampling``).
2. Teacher scores. From the top-k score cache when ``cache_k > 0`` (teacher-prefix only: no
   teacher forward pass at all), else a live full-vocabulary teacher forward.
3. Loss from ``distill_core``: ``exact`` (full vocabulary; chunked automatically for long
   sequences and large vocabularies), ``sparse`` (against the top-k + tail cache), or
   ``sampled`` (REINFORCE surrogate for the reverse-KL part on the sampled tokens, exact forward
   KL for the rest). Every micro-batch's loss is divided by the step's global number of response
   tokens (all micro-batches, all processes), so accumulation and DDP weigh tokens equally.
4. Optimiser step through ``accelerate`` (CPU, one GPU, or DDP from a config in infra/),
   after a finite-gradient check.

Several processes (``torchrun --nproc_per_node N -m tasks.train`` on CPUs, ``accelerate launch``
on GPUs): ``batch_size`` is the global batch. Every process draws the same step's prompts from
the cursor and trains on its own shard of them (``tasks.loop.shard``); each shard's loss is
divided by the global token count and DDP sums the gradients, so a teacher-prefix run reaches the
weights one process reaches (up to float32 summation order). On-policy cells sample each shard
on its own process with its own seed (``tasks.loop.sampling_seed``): the samples follow the same
distribution but are not the ones a one-process run draws, because ``generate`` draws a whole
batch's sampling noise from one generator, so a row's noise depends on the batch it sits in.
Logged metrics are global (summed or maxed over processes); ``time/...`` are the main
process's. ``micro_batch_size`` counts sequences per process.

Resume, the data cursor, checkpoints (every ``checkpoint_every`` steps and at the end: the
student as safetensors, optimiser, scheduler, RNG, data position, curriculum state, a hash of
the config, all checksummed) and the finite-gradient guard come from ``tasks.loop``, which GRPO
shares: a restarted run with the same config resumes from the newest trustworthy checkpoint and
reaches the same weights.
Metrics are returned as dicts per step (``train/...``); this module does not log to MLflow.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast

import distill_core as dc
from tasks.artifacts import content_hash
from tasks.compute import ComputeMeter
from tasks.data import Problem, read_problems
from tasks.entropy import entropy_probe
from tasks.loop import (
    DataCursor,
    NonFiniteError,
    TrainingLoop,
    check_data,
    check_finite,
    check_finite_weights,
    global_sums,
    shard,
)
from tasks.models import (
    check_pair,
    fused_head,
    load_model,
    load_tokenizer,
    non_embedding_parameters,
)
from tasks.policy_sampling import (
    check_rollout_backend,
    decoding_threads,
    handoff_every_setting,
    policy_sampler,
    rollout_backend_setting,
    rollout_fingerprint,
    vllm_device_setting,
    vllm_eager_setting,
    vllm_gpu_memory_setting,
)
from tasks.progress import Progress
from tasks.rollout import (
    PROMPT_TEMPLATES,
    Sample,
    SamplingConfig,
    context_length,
    render_prompts,
    teacher_rollouts,
)
from tasks.scoring import (
    ResponseBatch,
    ScoreCacheConfig,
    SparseTeacherScores,
    build_score_cache,
    response_batch,
    response_hidden_states,
    response_logits,
)
from tasks.settings import check_settings, fill_profile_defaults, setting

FUSED_LOSS_CHOICES = ("auto", "on", "off")
OVERLAP_K = 20
__all__ = ["TrainConfig", "TrainResult", "NonFiniteError", "train", "teacher_prefixes",
           "teacher_scores"]


@dataclass(frozen=True)
class TrainConfig:
    """One distillation run: what it trains (objective, models, problems, where its checkpoints
    go) and its knobs. Each knob is declared once, here (``tasks.settings.setting``): the study
    and distill forms, the Prefect UI and ``python -m tasks.train`` all take its default, bounds
    and description from this declaration.

    objective: a ``distill_core.Objective``; given as its config text ("sft", "dagger",
        "offline_rl", "opd", "teacher:λ" / "student:λ") it is parsed once, here.
    teacher, student: model directories or hub ids (the student is the starting point).
    train_problems, held_out_problems: Problem JSONL files (held-out: the curriculum's entropy).
    seed: data order and the student's sampling.
    keep_steps: steps whose checkpoints are kept (evaluated later), beyond the newest few.
    """

    objective: dc.Objective
    teacher: str
    student: str
    train_problems: str
    output_dir: str
    held_out_problems: str | None = None
    seed: int = 0
    keep_steps: tuple[int, ...] = ()
    artifacts_root: str | None = None
    # -- optimisation
    steps: int = setting(60, "Optimiser steps per run.", ge=1, le=10_000_000)
    batch_size: int = setting(16, "Prompts per optimiser step (the global batch over all "
                              "processes).", ge=1)
    micro_batch_size: int | None = setting(
        None, "Sequences per forward/backward pass on each process; a step accumulates "
        "gradients over its micro-batches (empty: the whole per-process batch at once). Lower "
        "it when a step does not fit in GPU memory.", ge=1)
    learning_rate: float = setting(5e-4, "AdamW learning rate (5e-4: the validation pilot's "
                                   "best on the embedded default).", gt=0)
    warmup_steps: int = setting(0, "Steps of linear learning-rate warm-up from 0.", ge=0)
    weight_decay: float = setting(0.0, "AdamW weight decay.", ge=0, le=1)
    mixed_precision: str = setting("no", "Autocast precision of the forward passes: bf16 on "
                                   "GPUs that have it (A100, H100), fp16 with loss scaling on "
                                   "older ones, no: float32.", choices=("no", "fp16", "bf16"))
    checkpoint_every: int = setting(10, "Steps between checkpoints; the same command after a "
                                    "kill resumes from the newest.", ge=1)
    # -- responses
    max_new_tokens: int | None = setting(
        None, "Response cap while training without a curriculum (empty: the profile's train "
        "cap).", ge=1, le=1_000_000, profile="train_cap")
    curriculum: tuple[int, ...] = setting(
        (), "Increasing response caps of the entropy-gated length curriculum, e.g. [32, 64, "
        "128] (empty: none).", ge=1)
    min_entropy: float = setting(0.0, "The curriculum gate's H_min in nats: a rung is climbed "
                                 "only while held-out entropy is at least this.", ge=0)
    stage_steps: int = setting(10, "Steps between curriculum gate decisions.", ge=1)
    entropy_prompts: int = setting(32, "Held-out prompts whose responses' entropy each "
                                   "curriculum gate measures.", ge=1)
    rollout_temperature: float = setting(1.0, "Sampling temperature of the teacher's and the "
                                         "student's training responses.", ge=0)
    rollout_seed: int = setting(0, "Sampling seed of the teacher's rollouts: one set, shared "
                                "by every seed and teacher-prefix cell of a study.")
    rollout_backend: str = rollout_backend_setting("the on-policy cells' student samples")
    handoff_every: int = handoff_every_setting()
    vllm_gpu_memory: float = vllm_gpu_memory_setting()
    vllm_device: str = vllm_device_setting()
    vllm_eager: bool = vllm_eager_setting()
    prompt_template: str | None = setting(
        None, "bare: the default task's prompt; boxed: asks instruction-tuned models to box "
        "their answer; empty: the profile's.", choices=tuple(PROMPT_TEMPLATES),
        profile="prompt_template")
    # -- the loss
    loss: str = setting("exact", "exact: full-vocabulary KL; sparse: against the teacher's "
                        "top-k score cache (needs cache_k); sampled: REINFORCE reverse KL on "
                        "the student's samples.", choices=tuple(dc.LOSSES))
    cache_k: int = setting(0, "Top-k of the teacher score cache that teacher-prefix cells "
                           "train from (0: a live teacher; needs loss sparse).", ge=0)
    temperature: float = setting(1.0, "Softmax temperature of both models' distributions in "
                                 "the loss.", gt=0)
    fused_loss: str = setting("auto", "auto: the loss fused with the LM heads (no (B, T, V) "
                              "logits) where it applies (exact or sparse loss, plain linear "
                              "heads); on: refuse a run where it does not; off: from logits.",
                              choices=FUSED_LOSS_CHOICES)

    def __post_init__(self) -> None:
        if not isinstance(self.objective, dc.Objective):  # config text, or a dict from JSON
            object.__setattr__(self, "objective", dc.Objective.parse(self.objective)
                               if not isinstance(self.objective, dict)
                               else dc.Objective(**self.objective))
        object.__setattr__(self, "curriculum", tuple(self.curriculum))
        object.__setattr__(self, "keep_steps", tuple(self.keep_steps))
        fill_profile_defaults(self)
        check_settings(self)
        check_train_rules(self)

    @property
    def longest_response(self) -> int:
        return max(self.curriculum) if self.curriculum else self.max_new_tokens

    def fingerprint(self) -> str:
        """Hash of everything that determines the trained weights (not the output place)."""
        settings = asdict(self) | {"objective": self.objective.name}
        for where_not_what in ("output_dir", "artifacts_root", "keep_steps"):
            settings.pop(where_not_what)
        return content_hash(rollout_fingerprint(settings, self.objective.on_policy))


def check_train_rules(config: TrainConfig) -> None:
    """The rules between a run's knobs (each knob's own bounds: check_settings). A study's form
    runs them for every cell through tasks.plan's translator, so a bad mix is refused when the
    form is submitted, not after the run has waited in a queue."""
    objective = config.objective
    dc.check_loss_choice(config.loss, objective, temperature=config.temperature,
                         sampling_temperature=config.rollout_temperature,
                         hidden_states=config.fused_loss == "on")
    if (config.loss == "sparse") != (config.cache_k >= 1):
        raise ValueError(f"loss={config.loss!r} with cache_k={config.cache_k}: the sparse loss "
                         "and only it trains from the top-k score cache (cache_k >= 1)")
    if config.cache_k and objective.on_policy:
        raise ValueError(f"cache_k={config.cache_k}: a score cache serves teacher-prefix "
                         f"cells only; {objective.name!r} samples student prefixes")
    if config.curriculum:
        dc.EntropyGatedLengthCurriculum(config.curriculum, config.min_entropy)  # validates
        if not config.held_out_problems:
            raise ValueError("a curriculum measures entropy on held_out_problems: set it")
    check_rollout_backend(config, objective.on_policy)


@dataclass
class TrainResult:
    checkpoint: Path
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    gate_decisions: list[dict] = field(default_factory=list)


# ----------------------------------------------------------------------------- the loop


@dataclass
class _Run:
    """Everything the steps of one run share, built once by _set_up."""

    config: TrainConfig
    objective: dc.Objective
    accelerator: Accelerator
    tokenizer: object
    student: torch.nn.Module
    teacher: torch.nn.Module | None
    vocab: int
    optimizer: torch.optim.Optimizer
    scheduler: object
    meter: ComputeMeter
    prompts: list[str]
    rollouts: list[Sample]
    scores: SparseTeacherScores | None
    entropy_prompts: list[str]
    curriculum: dc.EntropyGatedLengthCurriculum | None
    cursor: DataCursor
    fused: bool  # the loss fused with the LM heads (no logits); see _fused_path
    sampler: object = None  # on-policy cells: tasks.policy_sampling's HFSampler / VLLMSampler


def _learning_rate_lambda(config: TrainConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        return min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    return factor


def _check_data(config: TrainConfig, problems: list[Problem], student, processes: int) -> None:
    cap_field = "max(curriculum)" if config.curriculum else "max_new_tokens"
    check_data(len(problems), config.train_problems, processes,
               prompts=("batch_size", config.batch_size),
               response_cap=(cap_field, config.longest_response),
               context=("student", context_length(student)))


def _cut(sample: Sample, length: int) -> Sample:
    """A teacher rollout cut to the curriculum's current max length (then it is truncated)."""
    if sample.length <= length:
        return sample
    return Sample(sample.prompt_index, sample.sample_index, sample.prompt_ids,
                  sample.response_ids[:length], sample.text, "length", sample.prompt_truncated)


def teacher_prefixes(config: TrainConfig, meter: ComputeMeter | None = None,
                     log: Callable[[str], None] = print) -> tuple[Path, list[Sample]]:
    """The teacher's rollouts a teacher-prefix run of config trains on (cached: every cell and
    run with the same teacher, problems, template and sampling shares them); log hears their
    progress while they are generated."""
    return teacher_rollouts(
        config.teacher, config.student, read_problems(config.train_problems),
        SamplingConfig(temperature=config.rollout_temperature,
                       max_new_tokens=config.longest_response, seed=config.rollout_seed),
        config.prompt_template, root=config.artifacts_root, meter=meter, log=log)


def teacher_scores(config: TrainConfig, rollouts: list[Sample],
                   meter: ComputeMeter | None = None,
                   log: Callable[[str], None] = print) -> SparseTeacherScores:
    """The top-k score cache of the teacher on its rollouts (cached like them)."""
    tokenizer = load_tokenizer(config.student)
    vocab = check_pair(config.teacher, config.student)
    return build_score_cache(lambda: load_model(config.teacher), config.teacher, rollouts,
                             tokenizer.pad_token_id, vocab, ScoreCacheConfig(k=config.cache_k),
                             root=config.artifacts_root, meter=meter, log=log)


def train(config: TrainConfig, log: Callable[[str], None] = print,
          on_step: Callable[[int, dict[str, float]], None] | None = None) -> TrainResult:
    """Train config.student by config.objective; resumes from config.output_dir if it holds a
    checkpoint of the same config. Returns the final checkpoint and metrics.

    on_step(step, metrics) is called after every optimiser step (e.g. to stream to MLflow).
    """
    loop = TrainingLoop(config.output_dir, config.fingerprint(), config.steps,
                        config.checkpoint_every, log, keep_steps=config.keep_steps)
    run = _set_up(config, loop)
    loop.log(f"  loss: {config.loss}, " + ("fused with the LM heads" if run.fused
                                             else "from the models' logits"))
    loop.restore(run.accelerator, run.cursor)
    metrics: dict[str, float] = {}
    history: list[dict[str, float]] = []
    with contextlib.ExitStack() as stack:
        if run.objective.on_policy:
            run.sampler = _sampler(run, loop)
            stack.callback(run.sampler.close)
        progress = stack.enter_context(Progress(config.steps, f"training {config.objective.name}",
                                                loop.log, start=loop.start_step))
        for step in range(loop.start_step, config.steps):
            started = time.perf_counter()
            counted = dict(run.meter.tokens)
            samples, indices, max_length = _prefixes(run, step)
            generated = time.perf_counter()
            metrics, score_seconds = _train_step(run, samples, indices)
            _count_every_process(run, counted)
            check_finite(step + 1, metrics["train/loss"], metrics["train/grad_norm"],
                         loop.checkpoint, run.optimizer, "Lower learning_rate or check the "
                         "teacher's logits")
            _apply_update(run)
            metrics.update({
                "train/learning_rate": run.scheduler.get_last_lr()[0],
                "train/max_response_length": float(max_length),
                "time/generate": generated - started,
                "time/score": score_seconds,
                "time/train": time.perf_counter() - generated - score_seconds,
                **run.meter.metrics("train"),
                **(run.sampler.metrics() if run.sampler else {}),
            })
            metrics.update(_gate(run, step, max_length, loop.log))
            metrics["step"] = float(step + 1)
            history.append(dict(metrics))
            if on_step is not None:
                on_step(step + 1, metrics)
            loop.end_step(step + 1, run.accelerator, run.student, run.tokenizer, run.cursor,
                          _extra_state(run))
            progress.update(note=f"loss {metrics['train/loss']:.4f}  fkl "
                                 f"{metrics['train/forward_kl']:.4f}  rkl "
                                 f"{metrics['train/reverse_kl']:.4f}  len "
                                 f"{metrics['train/response_length']:.1f}")
    loop.finish(metrics)
    return TrainResult(loop.checkpoint, metrics, history,
                       list(run.curriculum.history) if run.curriculum else [])


def _set_up(config: TrainConfig, loop: TrainingLoop) -> _Run:
    """Models, data, teacher products, optimiser and curriculum of a run (resumed or fresh)."""
    objective = config.objective
    vocab = check_pair(config.teacher, config.student)
    accelerator = Accelerator(mixed_precision=config.mixed_precision,
                              cpu=not torch.cuda.is_available())
    tokenizer = load_tokenizer(config.student)
    student = load_model(loop.weights or config.student, device=accelerator.device)
    check_finite_weights(student, loop.weights or config.student)
    teacher = None if config.cache_k else load_model(config.teacher, device=accelerator.device)
    if teacher is not None:
        teacher.eval().requires_grad_(False)
        check_finite_weights(teacher, config.teacher)
    problems = read_problems(config.train_problems)
    _check_data(config, problems, student, accelerator.num_processes)
    meter = ComputeMeter(non_embedding_parameters(student),
                         _teacher_parameters(config.teacher, teacher))
    rollouts: list[Sample] = []
    scores = None
    if not objective.on_policy:
        _, rollouts = teacher_prefixes(config, log=loop.log)
        if config.cache_k:
            scores = teacher_scores(config, rollouts, log=loop.log)
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _learning_rate_lambda(config))
    student, optimizer, scheduler = accelerator.prepare(student, optimizer, scheduler)
    curriculum = (dc.EntropyGatedLengthCurriculum(config.curriculum, config.min_entropy)
                  if config.curriculum else None)
    if curriculum is not None and loop.saved("curriculum") is not None:
        curriculum = dc.EntropyGatedLengthCurriculum.from_state_dict(loop.saved("curriculum"))
    meter.tokens.update(loop.saved("compute_tokens", {}))
    return _Run(config, objective, accelerator, tokenizer, student, teacher, vocab, optimizer,
                scheduler, meter, render_prompts(tokenizer, problems, config.prompt_template),
                rollouts, scores, _entropy_prompts(config, tokenizer), curriculum,
                DataCursor(len(problems), config.seed),
                _fused_path(config, accelerator.unwrap_model(student), teacher, loop.log))


def _fused_path(config: TrainConfig, student, teacher, log: Callable[[str], None]) -> bool:
    """Whether the loss is computed fused with the LM heads: the loss has a fused form and both
    heads are plain (no bias, soft-capping or logit scale). fused_loss='on' refuses otherwise,
    'auto' falls back to logits and says why."""
    if config.fused_loss == "off" or not dc.LOSSES[config.loss].hidden_states:
        return False
    try:
        dc.check_fused_head(fused_head(student)[1], "student")
        if teacher is not None:  # None: the sparse loss reads a score cache, not a teacher
            dc.check_fused_head(fused_head(teacher)[1], "teacher")
    except ValueError as refusal:
        if config.fused_loss == "on":
            raise ValueError(f"fused_loss='on': {refusal} (or set fused_loss='auto')") from None
        log(f"  fused_loss='auto' computes this run's loss from logits: {refusal}")
        return False
    return True


def _sampler(run: _Run, loop: TrainingLoop):
    """The on-policy cell's sampler, from the weights the run starts with (step start_step);
    a vLLM engine starts here, once per run."""
    return policy_sampler(run.config, run.accelerator,
                          lambda: run.accelerator.unwrap_model(run.student), run.tokenizer,
                          run.prompts[0], weights_version=loop.start_step,
                          mixed_precision=run.config.mixed_precision, meter=run.meter,
                          log_line=loop.log)


def _entropy_prompts(config: TrainConfig, tokenizer) -> list[str]:
    """The held-out prompts the curriculum gate measures the student's entropy on."""
    if not config.held_out_problems:
        return []
    held_out = read_problems(config.held_out_problems)[: config.entropy_prompts]
    return render_prompts(tokenizer, held_out, config.prompt_template)


def _prefixes(run: _Run, step: int) -> tuple[list[Sample], list[int], int]:
    """This process's share of the step: (responses, problem indices, max length) — fresh
    student samples on student prefixes, the teacher's cached rollouts (cut to the current
    length) on teacher prefixes."""
    config = run.config
    step_indices = run.cursor.take(config.batch_size, step)
    indices = shard(step_indices, run.accelerator)
    max_length = run.curriculum.max_response_length if run.curriculum else config.max_new_tokens
    if not run.objective.on_policy:
        return [_cut(run.rollouts[i], max_length) for i in indices], indices, max_length
    samples = run.sampler.sample(
        step, [run.prompts[i] for i in step_indices],
        SamplingConfig(temperature=config.rollout_temperature, max_new_tokens=max_length,
                       seed=config.seed * 1_000_003 + step, batch_size=config.batch_size))
    return samples, indices, max_length


def _count_every_process(run: _Run, counted: dict[str, int]) -> None:
    """The meter counted this process's tokens since counted; make it count every process's, so
    FLOPs are the run's and a checkpoint's counters resume on any number of processes."""
    step_tokens = global_sums(run.accelerator, {stage: run.meter.tokens[stage] - counted[stage]
                                                for stage in run.meter.tokens})
    run.meter.tokens = {stage: counted[stage] + round(tokens)
                        for stage, tokens in step_tokens.items()}


def _apply_update(run: _Run) -> None:
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)


def _gate(run: _Run, step: int, max_length: int, log: Callable[[str], None]) -> dict[str, float]:
    """At a stage boundary, the curriculum gate's decision on the student's held-out entropy."""
    config = run.config
    if run.curriculum is None or (step + 1) % config.stage_steps:
        return {}
    student = run.accelerator.unwrap_model(run.student)
    with decoding_threads(run.accelerator.device, student.num_parameters()):  # it samples
        entropy = entropy_probe(student, run.tokenizer, run.entropy_prompts, max_length,
                                config.seed + step, config.rollout_temperature, run.vocab)
    # Every process measures the same prompts with the same weights and seed; all follow the
    # main process's number, so a kernel's nondeterminism cannot split their curricula.
    entropy = float(broadcast(torch.tensor([entropy], device=run.accelerator.device))[0])
    decision = run.curriculum.update(entropy)
    log(f"  curriculum gate at step {step + 1}: entropy {entropy:.3f} vs H_min "
        f"{config.min_entropy:.3f} → max length {decision['length_after']}")
    return {f"curriculum/{k}": float(v) for k, v in decision.items()}


def _extra_state(run: _Run) -> dict:
    """What a checkpoint keeps beyond the cursor: curriculum position, compute counters."""
    return {"curriculum": run.curriculum.state_dict() if run.curriculum else None,
            "compute_tokens": dict(run.meter.tokens)}


def _teacher_parameters(teacher_id: str, teacher) -> int:
    if teacher is not None:
        return non_embedding_parameters(teacher)
    return non_embedding_parameters(load_model(teacher_id))


def _micro_batches(samples: list[Sample], indices: list[int], size: int | None):
    size = size or len(samples)
    for start in range(0, len(samples), size):
        yield samples[start : start + size], indices[start : start + size]


def _train_step(run: _Run, samples: list[Sample], indices: list[int]
                ) -> tuple[dict[str, float], float]:
    """Forward/backward over the step's micro-batches; returns metrics and scoring seconds."""
    accelerator = run.accelerator
    local_tokens = sum(s.length for s in samples)
    global_tokens = float(accelerator.reduce(
        torch.tensor(float(local_tokens), device=accelerator.device), "sum"))
    # DDP averages gradients over processes; scale so the sum over all tokens is what counts.
    scale = float(accelerator.num_processes)
    sums = {"loss": 0.0, "forward_kl": 0.0, "reverse_kl": 0.0, "entropy": 0.0, "overlap": 0.0}
    score_seconds = 0.0
    parts = list(_micro_batches(samples, indices, run.config.micro_batch_size))
    for number, (part, part_indices) in enumerate(parts):
        batch = response_batch(part, run.tokenizer.pad_token_id)
        mask = batch.response_mask_BT.to(accelerator.device)
        sync = number == len(parts) - 1
        context = accelerator.no_sync(run.student) if not sync else contextlib.nullcontext()
        with context, accelerator.autocast():
            student_side = _student_side(run, batch)
            began = time.perf_counter()
            loss, terms, overlap = _loss(run, batch, part_indices, student_side, mask,
                                         global_tokens)
            score_seconds += time.perf_counter() - began
            accelerator.backward(loss * scale)
        run.meter.student_train(batch.num_tokens)
        sums["loss"] += float(loss.detach())
        for name in ("forward_kl", "reverse_kl", "entropy"):
            sums[name] += float((terms[name] * mask).sum()) / max(global_tokens, 1.0)
        if overlap is not None:
            sums["overlap"] += float((overlap * mask).sum()) / max(global_tokens, 1.0)
    grad_norm = accelerator.clip_grad_norm_(run.student.parameters(), 1.0)  # of the global grad
    # Each process's sums are already divided by the global token count: summed, they are the
    # step's; so are the counts behind the means.
    sums = global_sums(accelerator, {**sums, "responses": len(samples),
                                     "truncated": sum(s.truncated for s in samples)})
    longest = accelerator.reduce(torch.tensor(float(max(s.length for s in samples)),
                                              device=accelerator.device), "max")
    overlap = {} if run.fused else {"train/teacher_topk_mass": sums["overlap"]}
    return {
        "train/loss": sums["loss"],
        "train/forward_kl": sums["forward_kl"],
        "train/reverse_kl": sums["reverse_kl"],
        "train/entropy": sums["entropy"],
        **overlap,
        "train/response_length": global_tokens / sums["responses"],
        "train/response_length_max": float(longest),
        "train/truncation_rate": sums["truncated"] / sums["responses"],
        "train/grad_norm": float(grad_norm),
        "train/response_tokens": float(global_tokens),
    }, score_seconds


def _student_side(run: _Run, batch: ResponseBatch) -> torch.Tensor | dc.HiddenStates:
    """The student's input to the loss: its (B, T, V) logits, or on the fused path its final
    hidden states and LM head (tied: the embedding Parameter), with no logits formed."""
    if not run.fused:
        return response_logits(run.student, batch, run.vocab)
    head_weight, _ = fused_head(run.accelerator.unwrap_model(run.student))
    return dc.HiddenStates(response_hidden_states(run.student, batch), head_weight, run.vocab)


@torch.no_grad()
def _teacher_side(run: _Run, batch: ResponseBatch) -> dc.TeacherLogits | dc.HiddenStates:
    """The live teacher's input to the loss: its logits, or on the fused path its forward
    stopped before the head (hidden states and head weight)."""
    run.meter.teacher_forward(batch.num_tokens)
    if not run.fused:
        return dc.TeacherLogits(response_logits(run.teacher, batch, run.vocab))
    head_weight, _ = fused_head(run.teacher)
    return dc.HiddenStates(response_hidden_states(run.teacher, batch), head_weight, run.vocab)


def _loss(run: _Run, batch: ResponseBatch, indices: list[int],
          student: torch.Tensor | dc.HiddenStates, mask: torch.Tensor, global_tokens: float):
    """(loss for backward, detached per-token terms, student mass on the teacher's top-k — None
    on the fused path, which forms no full logits to read it from)."""
    config, device = run.config, mask.device
    if config.loss == "sparse":
        topk_logprobs, topk_ids = run.scores.batch(indices, batch)
        teacher = dc.TeacherTopK(topk_logprobs.to(device), topk_ids.to(device))
    else:
        teacher = _teacher_side(run, batch)
    out = dc.LOSSES[config.loss](student, teacher, mask, run.objective,
                                 temperature=config.temperature, num_valid_tokens=global_tokens,
                                 response_ids_BT=batch.response_ids_BT.to(device))
    terms = {"forward_kl": out.forward_kl_BT, "reverse_kl": out.reverse_kl_BT,
             "entropy": out.student_entropy_BT}
    if run.fused:
        return out.loss, terms, None
    overlap_ids = (teacher.ids_BTK if isinstance(teacher, dc.TeacherTopK) else
                   teacher.logits_BTV.topk(min(OVERLAP_K, run.vocab), dim=-1).indices)
    return out.loss, terms, _topk_mass(student.detach(), overlap_ids)


def _topk_mass(student_logits: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
    """Student probability mass on the teacher's top-k tokens, per position (B, T)."""
    probabilities = torch.softmax(student_logits.float(), dim=-1)
    return probabilities.gather(-1, topk_ids.long()).sum(-1)


def main(argv: list[str] | None = None) -> None:
    """python -m tasks.train --config run.json (TrainConfig fields); works under
    `accelerate launch --config_file infra/accelerate/<setup>.yaml`."""
    import argparse

    from accelerate import PartialState

    parser = argparse.ArgumentParser(prog="python -m tasks.train", description=main.__doc__)
    parser.add_argument("--config", required=True, type=Path, help="JSON file of TrainConfig")
    args = parser.parse_args(argv)
    try:
        fields = json.loads(args.config.read_text())
        config = TrainConfig(**fields)
    except (json.JSONDecodeError, TypeError) as error:
        raise SystemExit(f"{args.config}: not a TrainConfig JSON object ({error})") from error
    result = train(config)
    if PartialState().is_main_process:
        print(json.dumps({"checkpoint": str(result.checkpoint), **result.metrics}, indent=2))


if __name__ == "__main__":
    main()
