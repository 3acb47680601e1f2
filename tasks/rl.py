"""GRPO after distillation: RL with an accuracy-only reward from the project's one grader.

``train_grpo(config)`` starts from a distilled student (``config.policy``) and, per step:

1. Samples G responses for each of ``prompts_per_step`` prompts from the current policy
   (``tasks.policy_sampling``: ``generate`` on the live policy, or a vLLM engine handed the
   weights every ``handoff_every`` steps; the seed depends on the step, so a resumed run samples
   the same responses). The log-probs of step 4 come from the trainer's policy, so with
   ``handoff_every`` N > 1 samples up to N - 1 steps old are treated as the current policy's:
   the staleness is logged (``rollout/staleness``), not corrected.
2. Rewards each response with ``tasks.grader`` (one ``Grader`` for the whole run):
   1 if its strict answer is correct, else 0, plus ``format_reward`` for a ``\\boxed{}`` answer.
3. Turns rewards into group-relative advantages (``distill_core.group_advantages``). A step in
   which every group's rewards are all equal has no learning signal: it is skipped (no optimiser
   step), counted in ``skipped_steps`` and logged — never a NaN.
4. Computes the sampling policy's log-probs (no gradient) and, for the ``rl/kl_to_initial``
   metric and the optional penalty, those of a frozen copy of the initial policy; then one
   clipped update (``distill_core.grpo_token_loss``, global token normalisation), AdamW, gradient
   clipping at 1.0 and a finite check.

One update per batch means the ratio starts at 1; the clipped objective is still the real one,
so more updates per batch would need no change to the loss. Checkpoints, exact resume and the
finite guard come from ``tasks.loop``, the skeleton distillation uses too. Metrics per step
are ``rl/...`` dicts; this module does not log to MLflow (``on_step`` streams them).

Several processes (``torchrun``/``accelerate launch`` of a script calling ``train_grpo``):
``prompts_per_step`` is global; each process samples, rewards and trains on its own shard of the
step's prompts (whole groups, so advantages need no exchange), with its own sampling seed. The
loss is divided by the global token count, the skip decision is global (a process whose groups
are all equal still takes part when another's are not), and metrics are global. Samples depend
on the number of processes (each shard is drawn with its own seed), so a resume on another
number continues the run validly but not bit for bit.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator

import distill_core as dc
from tasks.artifacts import content_hash
from tasks.data import Problem, read_problems
from tasks.grader import Grader, check_training_rule
from tasks.loop import (
    DataCursor,
    TrainingLoop,
    check_data,
    check_finite,
    check_finite_weights,
    global_sums,
    shard,
)
from tasks.models import check_pair, load_model, load_tokenizer
from tasks.policy_sampling import (
    check_rollout_backend,
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
)
from tasks.scoring import response_batch, response_logits
from tasks.settings import check_settings, fill_profile_defaults, setting


@dataclass(frozen=True)
class GRPOConfig:
    """One GRPO run from a distilled student. Each knob is declared once, here
    (``tasks.settings.setting``); the RL flow's form and a study's rl_* fields are generated
    from these declarations.

    policy: model directory (or hub id) of the starting policy, e.g. a distilled student.
    train_problems: Problem JSONL the prompts come from; output_dir: checkpoints and metrics.
    reference: optional model directory whose tokenizer the policy must match.
    answer_rule: which extraction decides the reward; only "strict" may (the flexible
        last-number rule has false positives: a diagnostic, never a training signal).
    """

    policy: str
    train_problems: str
    output_dir: str
    reference: str | None = None
    answer_rule: str = "strict"
    steps: int = setting(20, "GRPO steps (skipped steps, whose groups all score alike, "
                         "count).", ge=1)
    prompts_per_step: int = setting(8, "Prompts per GRPO step.", ge=1)
    group_size: int = setting(4, "Responses sampled per prompt (the group G, whose mean reward "
                              "is the baseline: at least 2).", ge=2)
    learning_rate: float = setting(1e-5, "AdamW learning rate.", gt=0, le=1)
    max_new_tokens: int | None = setting(None, "Response cap while training (empty: the "
                                         "profile's train cap).", ge=1, profile="train_cap")
    temperature: float = setting(1.0, "Sampling temperature of the training responses (the "
                                 "loss's log-probs use it too).", gt=0)
    clip_eps: float = setting(0.2, "PPO trust region ε of the clipped ratio.", gt=0)
    kl_coef: float = setting(0.0, "Weight of the KL penalty (k3) to the policy the run starts "
                             "from (0: none, the accuracy reward alone).", ge=0)
    normalise_std: bool = setting(True, "Divide advantages by their group's reward std.")
    format_reward: float = setting(0.0, "Bonus for a \\boxed{} answer (0: the accuracy reward "
                                   "alone).", ge=0)
    prompt_template: str | None = setting(
        None, "bare: the default task's prompt; boxed: asks instruction-tuned models to box "
        "their answer; empty: the profile's.", choices=tuple(PROMPT_TEMPLATES),
        profile="prompt_template")
    seed: int = setting(0, "Seed of the prompt order and the sampling.")
    checkpoint_every: int = setting(10, "Steps between checkpoints.", ge=1)
    rollout_backend: str = rollout_backend_setting("the policy's samples")
    handoff_every: int = handoff_every_setting()
    vllm_gpu_memory: float = vllm_gpu_memory_setting()
    vllm_device: str = vllm_device_setting()
    vllm_eager: bool = vllm_eager_setting()

    def __post_init__(self) -> None:
        check_training_rule(self.answer_rule)
        fill_profile_defaults(self)
        check_settings(self)
        check_rollout_backend(self, on_policy=True)

    def fingerprint(self) -> str:
        """Hash of everything that determines the trained weights (not the output place)."""
        settings = asdict(self)
        settings.pop("output_dir")
        return content_hash(rollout_fingerprint(settings, on_policy=True))


@dataclass
class RLResult:
    checkpoint: Path
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    skipped_steps: int = 0


# ----------------------------------------------------------------------------- pieces


def rewards(grader: Grader, samples: Sequence[Sample], gold_answers: Sequence[str],
            format_reward: float = 0.0) -> list[float]:
    """Accuracy reward per sample: 1.0 if the strict answer is correct, else 0.0, plus
    format_reward when the response has a \\boxed{} answer."""
    grades = grader.grade([s.text for s in samples], gold_answers)
    return [float(g.strict_correct) + (format_reward if g.method == "boxed" else 0.0)
            for g in grades]


def _check_data(config: GRPOConfig, problems: list[Problem], policy, processes: int) -> None:
    check_data(len(problems), config.train_problems, processes,
               prompts=("prompts_per_step", config.prompts_per_step),
               response_cap=("max_new_tokens", config.max_new_tokens),
               context=("policy", context_length(policy)))


def _masked_sum(values_BT: torch.Tensor, mask_BT: torch.Tensor) -> float:
    return float((values_BT * mask_BT).sum())


@torch.no_grad()
def _frozen_logprobs(model, batch, vocab: int, temperature: float):
    """(sampled-token log-probs, logits) of a model without gradient, e.g. the sampling policy."""
    logits = response_logits(model, batch, vocab)
    tokens = batch.response_ids_BT.to(logits.device)
    return dc.sampled_token_logprobs(logits, tokens, temperature), logits


# ----------------------------------------------------------------------------- the loop


def train_grpo(config: GRPOConfig, log: Callable[[str], None] = print,
               on_step: Callable[[int, dict[str, float]], None] | None = None) -> RLResult:
    """GRPO on config.policy; resumes from config.output_dir if it holds a checkpoint of the same
    config. on_step(step, metrics) is called after every step, skipped ones included."""
    try:
        vocab = check_pair(config.reference or config.policy, config.policy)
    except ValueError as error:  # name the fields: check_pair speaks of teacher and student
        raise ValueError(f"GRPO reference {config.reference!r} (as teacher) and policy "
                         f"{config.policy!r} (as student): {error}") from error
    loop = TrainingLoop(config.output_dir, config.fingerprint(), config.steps,
                        config.checkpoint_every, log)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    tokenizer = load_tokenizer(config.policy)
    policy = load_model(loop.weights or config.policy, device=accelerator.device)
    check_finite_weights(policy, loop.weights or config.policy)
    initial = load_model(config.policy, device=accelerator.device).eval().requires_grad_(False)
    problems = read_problems(config.train_problems)
    _check_data(config, problems, policy, accelerator.num_processes)
    prompts = render_prompts(tokenizer, problems, config.prompt_template)

    optimizer = torch.optim.AdamW(policy.parameters(), lr=config.learning_rate, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    policy, optimizer, scheduler = accelerator.prepare(policy, optimizer, scheduler)
    cursor = DataCursor(len(problems), config.seed)
    loop.restore(accelerator, cursor)
    skipped, history, metrics = int(loop.saved("skipped_steps", 0)), [], {}
    sampler = policy_sampler(config, accelerator, lambda: accelerator.unwrap_model(policy),
                             tokenizer, prompts[0], weights_version=loop.start_step,
                             log_line=loop.log)
    step_context = _Step(config, accelerator, policy, initial, optimizer, tokenizer, vocab,
                         sampler)
    with contextlib.closing(sampler), Grader() as grader, Progress(
            config.steps, "GRPO", loop.log, start=loop.start_step) as progress:
        for step in range(loop.start_step, config.steps):
            step_indices = cursor.take(config.prompts_per_step, step)
            indices = shard(step_indices, accelerator)
            metrics = _grpo_step(step_context, step, grader, [prompts[i] for i in step_indices],
                                 [problems[i].answer for i in indices], loop.checkpoint)
            skipped += int(metrics["rl/skipped"])
            metrics.update({"rl/skipped_steps": float(skipped), "step": float(step + 1)})
            history.append(dict(metrics))
            if on_step is not None:
                on_step(step + 1, metrics)
            loop.end_step(step + 1, accelerator, policy, tokenizer, cursor,
                          {"skipped_steps": skipped})
            if metrics["rl/skipped"]:
                loop.log(f"  grpo step {step + 1}: skipped, no reward signal (every group's "
                         "rewards equal)")
            progress.update(note=f"reward {metrics['rl/reward_mean']:.3f}  all-equal groups "
                                 f"{metrics['rl/all_equal_group_fraction']:.2f}  kl "
                                 f"{metrics['rl/kl_to_initial']:.4f}")
    loop.finish(metrics)
    return RLResult(loop.checkpoint, metrics, history, skipped)


@dataclass
class _Step:
    """What every GRPO step of one run uses (built once by train_grpo)."""

    config: GRPOConfig
    accelerator: Accelerator
    policy: torch.nn.Module
    initial: torch.nn.Module
    optimizer: torch.optim.Optimizer
    tokenizer: object
    vocab: int
    sampler: object  # tasks.policy_sampling's HFSampler / VLLMSampler


def _grpo_step(run: _Step, step: int, grader: Grader, prompts: list[str],
               gold_answers: list[str], checkpoint: Path | None) -> dict[str, float]:
    """Sample, reward, and (unless no group of any process has a signal) one clipped update on
    this process's prompts; returns the step's global metrics. prompts: the step's (every
    process's); gold_answers: this process's shard's."""
    config, accelerator = run.config, run.accelerator
    started = time.perf_counter()
    G = config.group_size
    samples = run.sampler.sample(
        step, prompts,
        SamplingConfig(n=G, temperature=config.temperature, max_new_tokens=config.max_new_tokens,
                       seed=config.seed * 1_000_003 + step, batch_size=len(prompts) * G))
    generated = time.perf_counter()
    prompts = shard(prompts, accelerator)
    reward_list = rewards(grader, samples, [gold_answers[s.prompt_index] for s in samples],
                          config.format_reward)
    rewards_G_N = torch.tensor(reward_list).view(len(prompts), G)
    advantages, all_equal = dc.group_advantages(rewards_G_N, config.normalise_std)

    batch = response_batch(samples, run.tokenizer.pad_token_id)
    mask = batch.response_mask_BT.to(accelerator.device)
    old_logprobs, old_logits = _frozen_logprobs(run.policy, batch, run.vocab, config.temperature)
    ref_logprobs, _ = _frozen_logprobs(run.initial, batch, run.vocab, config.temperature)
    totals = global_sums(accelerator, {
        "reward": float(rewards_G_N.sum()), "responses": len(samples), "groups": len(prompts),
        "all_equal_groups": float(all_equal.sum()), "tokens": float(mask.sum()),
        "entropy": _masked_sum(dc.token_entropy(old_logits), mask),
        "kl_to_initial": _masked_sum(dc.k3_kl(old_logprobs, ref_logprobs), mask),
        "truncated": sum(s.truncated for s in samples),
    })
    tokens = max(totals["tokens"], 1.0)
    skipped = totals["all_equal_groups"] == totals["groups"]
    metrics = {
        "rl/reward_mean": totals["reward"] / totals["responses"],
        "rl/all_equal_group_fraction": totals["all_equal_groups"] / totals["groups"],
        "rl/entropy": totals["entropy"] / tokens,
        "rl/response_length_mean": totals["tokens"] / totals["responses"],
        "rl/truncation_rate": totals["truncated"] / totals["responses"],
        "rl/kl_to_initial": totals["kl_to_initial"] / tokens,
        "rl/skipped": float(skipped),
        "rl/clip_fraction": 0.0, "rl/loss": 0.0, "rl/grad_norm": 0.0,
    }
    del old_logits
    if not skipped:
        metrics.update(_update(run, step, batch, mask, old_logprobs, ref_logprobs,
                               advantages.flatten().to(mask.device), totals["tokens"],
                               checkpoint))
    metrics.update({"time/generate": generated - started,
                    "time/train": time.perf_counter() - generated, **run.sampler.metrics()})
    return metrics


def _update(run: _Step, step: int, batch, mask, old_logprobs, ref_logprobs, advantages_B,
            global_tokens: float, checkpoint: Path | None) -> dict[str, float]:
    """One clipped GRPO update on the step's batch; raises NonFiniteError before applying NaN.
    The loss is divided by the global token count; DDP averages gradients over processes, so
    scaling by their number makes the sum over all tokens what counts."""
    config, accelerator = run.config, run.accelerator
    logits = response_logits(run.policy, batch, run.vocab)
    logprobs = dc.sampled_token_logprobs(logits, batch.response_ids_BT.to(logits.device),
                                         config.temperature)
    loss, stats = dc.grpo_token_loss(
        logprobs, old_logprobs, advantages_B, mask, clip_eps=config.clip_eps,
        ref_logprobs_BT=ref_logprobs if config.kl_coef > 0 else None, kl_coef=config.kl_coef,
        num_valid_tokens=max(global_tokens, 1.0))
    accelerator.backward(loss * accelerator.num_processes)
    grad_norm = float(accelerator.clip_grad_norm_(run.policy.parameters(), 1.0))
    totals = global_sums(accelerator, {
        "loss": float(loss.detach()),
        "clipped_tokens": stats["clip_fraction"] * float(mask.sum())})
    check_finite(step + 1, totals["loss"], grad_norm, checkpoint, run.optimizer,
                 "Lower learning_rate")
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return {"rl/loss": totals["loss"], "rl/grad_norm": grad_norm,
            "rl/clip_fraction": totals["clipped_tokens"] / max(global_tokens, 1.0)}
