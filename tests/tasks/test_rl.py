"""GRPO on tiny real models: config checks, skipped no-signal steps, exact resume, and (slow) a
few steps from the bootstrapped teacher move the policy in the direction of its reward."""

import math
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

import tasks.rl
from tasks.checkpoints import latest_checkpoint
from tasks.data import read_problems, write_problems
from tasks.grader import Grader
from tasks.models import (
    TinyModelConfig,
    build_tiny_model,
    build_tokenizer,
    load_model,
    load_tokenizer,
)
from tasks.rl import GRPOConfig, rewards, train_grpo
from tasks.rollout import SamplingConfig, generate_hf, render_prompts


def quiet(line: str) -> None:
    pass


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_pair, tiny_problems) -> GRPOConfig:
    data = tmp_path_factory.mktemp("rl-data")
    write_problems(tiny_problems["train"][:64], data / "train.jsonl")
    return GRPOConfig(policy=str(tiny_pair[1]), train_problems=str(data / "train.jsonl"),
                      output_dir="unused", steps=4, prompts_per_step=4, group_size=4,
                      learning_rate=1e-3, max_new_tokens=12, checkpoint_every=2)


def _weights(checkpoint) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / "model.safetensors"))


def test_group_size_below_two_is_refused(base):
    with pytest.raises(ValueError, match="group_size=1 must be >= 2"):
        replace(base, group_size=1)
    with pytest.raises(ValueError, match="temperature"):
        replace(base, temperature=0.0)


def test_the_flexible_answer_rule_never_feeds_a_reward(base):
    with pytest.raises(ValueError, match="diagnostic only"):
        replace(base, answer_rule="flexible")


def test_incompatible_reference_tokenizer_is_refused(base, tmp_path):
    other = build_tokenizer(["a completely different corpus of words 0123456789 xyz"],
                            vocab_size=120)
    build_tiny_model(TinyModelConfig(hidden_size=16, num_layers=1, num_heads=2,
                                     intermediate_size=32), other).save_pretrained(tmp_path / "m")
    other.save_pretrained(tmp_path / "m")
    config = replace(base, reference=str(tmp_path / "m"), output_dir=str(tmp_path / "out"))
    with pytest.raises(ValueError, match="vocabularies differ"):
        train_grpo(config, log=quiet)


def test_constant_reward_steps_are_skipped_without_nan(base, tmp_path):
    # One new token can never hold a boxed correct answer: every reward is 0, every group equal.
    config = replace(base, max_new_tokens=1, steps=2, output_dir=str(tmp_path / "out"))
    lines: list[str] = []
    result = train_grpo(config, log=lines.append)
    assert result.skipped_steps == 2
    assert result.metrics["rl/skipped_steps"] == 2.0
    assert all(h["rl/all_equal_group_fraction"] == 1.0 and h["rl/reward_mean"] == 0.0
               for h in result.history)
    assert all(math.isfinite(v) for h in result.history for v in h.values())
    assert sum("skipped" in line for line in lines) == 2
    initial = load_model(base.policy).state_dict()
    for name, tensor in _weights(result.checkpoint).items():
        torch.testing.assert_close(tensor, initial[name], atol=0, rtol=0)


def _length_parity_reward(grader, samples, gold_answers, format_reward=0.0):
    # The untrained tiny policy never answers correctly, so the real reward would skip every
    # step; an arbitrary but deterministic reward makes each step a real update.
    return [float(sample.length % 2) for sample in samples]


def test_interrupted_run_resumes_to_the_same_weights(base, tmp_path, monkeypatch):
    monkeypatch.setattr(tasks.rl, "rewards", _length_parity_reward)
    interrupted = replace(base, output_dir=str(tmp_path / "interrupted"))

    def stop_after_first_checkpoint(step, metrics):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_grpo(interrupted, log=quiet, on_step=stop_after_first_checkpoint)
    assert latest_checkpoint(tmp_path / "interrupted").name == "checkpoint-000002"
    resumed = train_grpo(interrupted, log=quiet)
    straight = train_grpo(replace(base, output_dir=str(tmp_path / "straight")), log=quiet)

    assert [h["step"] for h in resumed.history] == [3.0, 4.0]
    assert straight.skipped_steps < 4  # the weights did move
    assert resumed.skipped_steps == straight.skipped_steps
    a, b = _weights(resumed.checkpoint), _weights(straight.checkpoint)
    initial = load_model(base.policy).state_dict()
    assert any(not torch.equal(b[name], initial[name]) for name in b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="different config"):
        train_grpo(replace(interrupted, learning_rate=2e-3), log=quiet)


def test_kl_penalty_to_the_initial_policy_runs_and_is_reported(base, tmp_path, monkeypatch):
    monkeypatch.setattr(tasks.rl, "rewards", _length_parity_reward)
    result = train_grpo(replace(base, kl_coef=0.1, steps=3, checkpoint_every=3,
                                output_dir=str(tmp_path / "kl")), log=quiet)
    assert result.history[0]["rl/kl_to_initial"] == 0.0  # the first batch: policy == initial
    assert result.history[-1]["rl/kl_to_initial"] > 0
    assert all(math.isfinite(v) for h in result.history for v in h.values())


SAMPLES_PER_PROBLEM = 4


def _held_out_accuracy(model_dir, tokenizer, problems, grader, seed: int) -> tuple[float, float]:
    """(accuracy, its standard error) of 4 samples per held-out problem at temperature 1."""
    samples = generate_hf(load_model(model_dir), tokenizer, render_prompts(tokenizer, problems),
                          SamplingConfig(n=SAMPLES_PER_PROBLEM, temperature=1.0,
                                         max_new_tokens=48, seed=777 + seed, batch_size=256))
    reward = rewards(grader, samples, [problems[s.prompt_index].answer for s in samples])
    accuracy = sum(reward) / len(reward)
    return accuracy, math.sqrt(max(accuracy * (1 - accuracy), 1e-4) / len(reward))


@pytest.mark.slow
@pytest.mark.sampled
def test_grpo_moves_the_policy_in_the_direction_of_its_reward(bootstrapped, tmp_path,
                                                              monkeypatch, test_seed):
    """The same 20 GRPO steps from the bootstrapped teacher (~77% held-out accuracy at
    temperature 1) with the accuracy reward and with its negation (1 − correct). The negated run
    must learn to answer wrongly (observed: train reward 0.12 → ~0.85, held-out accuracy 0.77 →
    0.09) while the accuracy run keeps its accuracy: a sign error in the advantages or the loss,
    or an update that does nothing, fails.

    Margins, from this test's own samples (100 held-out problems × 4 = 400 samples, standard
    error ≈ 0.02 per accuracy, ≈ 0.03 for a difference): "keeps its accuracy" allows a drop of
    4 standard errors of the difference (≈ 0.12 — a bound inside the noise failed on another
    machine's CPU); the negated run must fall by more than 0.3 (≈ 10 SE) and rise in train
    reward by more than 0.2 (≈ 5 SE of two 5-step means of 32 samples). A rise of accuracy
    itself is within noise at this budget, so it is not asserted."""
    teacher = str(bootstrapped.artifacts.teacher_dir)
    tokenizer = load_tokenizer(teacher)
    held_out = read_problems(bootstrapped.artifacts.split("held_out"))[:100]
    config = GRPOConfig(policy=teacher, train_problems=str(bootstrapped.artifacts.split("train")),
                        output_dir=str(tmp_path / "accuracy"), steps=20, prompts_per_step=8,
                        group_size=4, learning_rate=1e-4, max_new_tokens=48, temperature=1.0,
                        checkpoint_every=20, seed=test_seed)
    accuracy_run = train_grpo(config, log=quiet)
    accuracy = tasks.rl.rewards
    monkeypatch.setattr(tasks.rl, "rewards", lambda *args: [1.0 - r for r in accuracy(*args)])
    negated_run = train_grpo(replace(config, output_dir=str(tmp_path / "negated")), log=quiet)
    monkeypatch.undo()

    with Grader(workers=1) as grader:
        (before, se_before), (after, se_after), (negated, _) = (
            _held_out_accuracy(model, tokenizer, held_out, grader, test_seed)
            for model in (teacher, accuracy_run.checkpoint, negated_run.checkpoint))
    negated_rewards = [h["rl/reward_mean"] for h in negated_run.history]
    assert sum(negated_rewards[-5:]) / 5 > sum(negated_rewards[:5]) / 5 + 0.2, negated_rewards
    assert negated < before - 0.3, (before, negated)
    margin = 4 * math.sqrt(se_before**2 + se_after**2)
    assert after > before - margin, (before, after, margin)
    assert after > negated + 0.3
    assert accuracy_run.metrics["rl/kl_to_initial"] > 0
