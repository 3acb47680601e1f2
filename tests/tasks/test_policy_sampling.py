"""vLLM sampling inside on-policy training (tasks/policy_sampling.py), against HF generate.

The tests marked vllm run vLLM for real in its own environment (DISTILL_LAB_VLLM_PYTHON; .ci/run
builds it) on the reduced embedded default (tests/conftest.py's `bootstrapped`: the default's
task, tokenizer and recipe at a size learnt in a minute). Engines start with enforce_eager
(about 15 s each instead of minutes of torch.compile). The tests at the top run anywhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from tasks.checkpoints import latest_checkpoint
from tasks.data import read_problems, write_problems
from tasks.models import load_model, load_tokenizer
from tasks.policy_sampling import (
    ARRIVAL_TOLERANCE,
    EngineSettings,
    RolloutEngineError,
    VLLMSampler,
    trainer_logprobs,
)
from tasks.rl import GRPOConfig, train_grpo
from tasks.rollout import SamplingConfig, encode_prompts, generate_hf, render_prompts
from tasks.train import TrainConfig, train
from tasks.vllm_backend import PYTHON_ENV_VAR, VLLMBackend


def vllm_test(test):
    """Runs vLLM for real (marked vllm: skipped without a vLLM environment) for tens of seconds."""
    return pytest.mark.vllm(pytest.mark.slow(test))


def _config(tiny_pair, tiny_problems, tmp_path, **fields) -> TrainConfig:
    train_file = write_problems(tiny_problems["train"][:16], tmp_path / "train.jsonl")
    return TrainConfig(**{"objective": "opd", "teacher": str(tiny_pair[0]),
                          "student": str(tiny_pair[1]), "train_problems": str(train_file),
                          "output_dir": str(tmp_path / "run"), "steps": 2, "batch_size": 4,
                          "max_new_tokens": 8, **fields})


# ----------------------------------------------------------------------------- anywhere


def test_vllm_without_an_environment_is_refused_in_one_line_before_any_work(
        tiny_pair, tiny_problems, tmp_path, monkeypatch):
    monkeypatch.delenv(PYTHON_ENV_VAR, raising=False)
    with pytest.raises(ValueError) as refused:
        _config(tiny_pair, tiny_problems, tmp_path, rollout_backend="vllm")
    message = str(refused.value)
    assert message.startswith("rollout_backend='vllm': ") and PYTHON_ENV_VAR in message
    assert "\n" not in message and not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="rollout_backend='vllm'"):
        GRPOConfig(policy=str(tiny_pair[1]), train_problems="p.jsonl", output_dir="o",
                   rollout_backend="vllm")
    # a teacher-prefix cell samples nothing: a study's grid may name vllm for all its cells
    assert _config(tiny_pair, tiny_problems, tmp_path, objective="sft",
                   rollout_backend="vllm").rollout_backend == "vllm"


def test_the_fingerprint_changes_only_where_the_samples_can(tiny_pair, tiny_problems, tmp_path,
                                                            monkeypatch):
    monkeypatch.setenv(PYTHON_ENV_VAR, sys.executable)  # an executable is all a config checks
    opd = _config(tiny_pair, tiny_problems, tmp_path)
    vllm = replace(opd, rollout_backend="vllm")
    assert vllm.fingerprint() != opd.fingerprint()
    assert replace(vllm, handoff_every=2).fingerprint() != vllm.fingerprint()
    # where the engine runs and whether it compiles does not change what it samples
    assert replace(vllm, vllm_eager=True, vllm_gpu_memory=0.5, vllm_device="1").fingerprint() \
        == vllm.fingerprint()
    # hf runs keep the fingerprint they had before these knobs existed, so do teacher prefixes
    assert replace(opd, handoff_every=3).fingerprint() == opd.fingerprint()
    sft = replace(opd, objective="sft")
    assert replace(sft, rollout_backend="vllm").fingerprint() == sft.fingerprint()


def test_an_engine_that_cannot_start_is_one_line_naming_its_log(tiny_pair, tiny_problems,
                                                                tmp_path, monkeypatch):
    """This project's own python has no vLLM: the worker fails at import, for real."""
    monkeypatch.setenv(PYTHON_ENV_VAR, sys.executable)
    config = _config(tiny_pair, tiny_problems, tmp_path, rollout_backend="vllm")
    with pytest.raises(RolloutEngineError) as failed:
        train(config, log=lambda line: None)
    message = str(failed.value)
    assert "\n" not in message and message.startswith("rollout_backend='vllm': the engine did "
                                                      "not start: ")
    log_file = Path(config.output_dir) / "vllm-worker.log"
    assert str(log_file) in message and "No module named 'vllm'" in log_file.read_text()


def test_the_rollout_knobs_are_on_the_study_and_rl_forms():
    from tasks.configs import ExperimentConfig, RLFlowConfig, StudyConfig

    for form, prefixes in ((StudyConfig, ("", "rl_")), (ExperimentConfig, ("",)),
                           (RLFlowConfig, ("",))):
        for prefix in prefixes:
            for name in ("rollout_backend", "handoff_every", "vllm_gpu_memory", "vllm_device",
                         "vllm_eager"):
                assert prefix + name in form.model_fields, (form.__name__, prefix + name)
    with pytest.raises(ValueError, match="rollout_backend"):
        StudyConfig(name="s", rollout_backend="sglang")
    # the Prefect UI renders the grid flow's parameter schema: both knobs as hf/vllm choices
    from prefect.utilities.callables import parameter_schema

    from flows.grid import grid_flow

    form = parameter_schema(grid_flow.fn).model_dump()["definitions"]["StudyConfig"]
    for name in ("rollout_backend", "rl_rollout_backend"):
        assert form["properties"][name]["enum"] == ["hf", "vllm"]


def test_the_engine_is_placed_beside_training_or_on_a_gpu_of_its_own(monkeypatch):
    """What the worker is started with (no GPU needed to check it): nothing on a CPU; on a GPU,
    colocated, the training process's own GPU (named as the worker will see it, through the
    parent's CUDA_VISIBLE_DEVICES) and a memory share; else the GPU asked for, 90 % of it."""
    from tasks.policy_sampling import _placement

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert _placement(EngineSettings(), torch.device("cpu")) == ({}, None)
    assert _placement(EngineSettings(gpu_memory=0.4), torch.device("cuda", 1)) == (
        {"gpu_memory_utilization": 0.4}, {"CUDA_VISIBLE_DEVICES": "3"})
    assert _placement(EngineSettings(device="5"), torch.device("cuda", 0)) == (
        {"gpu_memory_utilization": 0.9}, {"CUDA_VISIBLE_DEVICES": "5"})
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert _placement(EngineSettings(), torch.device("cuda", 1))[1] == {
        "CUDA_VISIBLE_DEVICES": "1"}


# ----------------------------------------------------------------------------- vLLM for real


@pytest.fixture(scope="module")
def default(bootstrapped, tmp_path_factory):
    """The reduced default's student and teacher, 64 training and 32 held-out prompts."""
    root = tmp_path_factory.mktemp("policy-sampling")
    models, data = bootstrapped.artifacts, bootstrapped.artifacts.data_dir
    train_file = write_problems(read_problems(data / "train.jsonl")[:64], root / "train.jsonl")
    tokenizer = load_tokenizer(models.student_dir)
    held_out = render_prompts(tokenizer, read_problems(data / "held_out.jsonl")[:32], "bare")
    return models, train_file, held_out


def _opd(default, tmp_path, name: str, **fields) -> TrainConfig:
    models, train_file, _ = default
    return TrainConfig(**{"objective": "opd", "teacher": str(models.teacher_dir),
                          "student": str(models.student_dir), "train_problems": str(train_file),
                          "output_dir": str(tmp_path / name), "steps": 6, "batch_size": 8,
                          "max_new_tokens": 24, "rollout_temperature": 0.0,
                          "learning_rate": 3e-3, "checkpoint_every": 100, "vllm_eager": True,
                          **fields})


@vllm_test
def test_greedy_samples_from_vllm_and_hf_are_equal_token_for_token(default):
    models, _, prompts = default
    tokenizer = load_tokenizer(models.student_dir)
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=48, batch_size=32)
    hf = generate_hf(load_model(models.student_dir), tokenizer, prompts, greedy)
    with VLLMBackend(models.student_dir, enforce_eager=True) as backend:
        engine = backend.generate(prompts, greedy)
    assert [s.response_ids for s in engine] == [s.response_ids for s in hf]
    assert [s.finish_reason for s in engine] == [s.finish_reason for s in hf]
    assert any(s.finish_reason == "stop" for s in hf)  # real answers, not only caps


@vllm_test
def test_opd_through_vllm_at_handoff_every_1_follows_the_hf_loss_curve(default, tmp_path):
    """Greedy rollouts take the sampler's random numbers out of the comparison: with the
    weights handed over every step, vLLM samples exactly HF's responses, and the trainer,
    the same code on the same tokens, must then reach the same losses (to float32 rounding
    in the loss, 1e-5 relative). The learning rate is high enough that greedy responses change
    from step to step, so stale weights show: the same run handing over every 4 steps must
    leave the HF curve (the check is shown to be able to fail)."""
    hf = train(_opd(default, tmp_path, "hf"), log=lambda line: None).history
    fresh = train(_opd(default, tmp_path, "vllm", rollout_backend="vllm"),
                  log=lambda line: None).history
    hf_losses = [h["train/loss"] for h in hf]
    assert [h["train/loss"] for h in fresh] == pytest.approx(hf_losses, rel=1e-5)
    assert [h["rollout/weights_version"] for h in fresh] == [0, 1, 2, 3, 4, 5]
    assert all(h["rollout/staleness"] == 0 for h in fresh)
    assert all(h["rollout/handoff_logprob_gap"] < ARRIVAL_TOLERANCE for h in fresh[1:])
    stale = train(_opd(default, tmp_path, "stale", rollout_backend="vllm", handoff_every=4),
                  log=lambda line: None).history
    assert [h["rollout/staleness"] for h in stale] == [0, 1, 2, 3, 0, 1]
    assert [h["train/loss"] for h in stale] != pytest.approx(hf_losses, rel=1e-5)


@vllm_test
def test_after_a_handoff_the_engine_scores_a_sequence_as_the_trainer_does(default, tmp_path):
    """The arrival check itself: same weights agree far inside ARRIVAL_TOLERANCE; the weights
    one optimiser step older are far outside it, and a hand-off whose files never changed is
    refused."""
    models, _, prompts = default
    tokenizer = load_tokenizer(models.student_dir)
    student = load_model(models.student_dir)
    probe = list(encode_prompts(tokenizer, prompts[:1], 256, False)[0]) + list(
        tokenizer(" 1 2 3 4", add_special_tokens=False)["input_ids"])
    sampler = VLLMSampler(Accelerator(cpu=True), lambda: student, tokenizer,
                          EngineSettings(eager=True), 0, tmp_path, probe,
                          log_line=lambda line: None)
    try:
        assert sampler._arrival_gap(student) < 1e-4
        optimizer = torch.optim.AdamW(student.parameters(), lr=3e-3)
        batch = torch.tensor([probe])
        student(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()  # one step of SFT on the probe moves its log-probs
        stale_gap = sampler._arrival_gap(student)
        assert stale_gap > 10 * ARRIVAL_TOLERANCE
        after = sampler._hand_off(step=1)
        assert after["rollout/handoff_logprob_gap"] < 1e-4
        assert sampler.backend.weights_version == 1
        engine = torch.tensor(sampler.backend.logprobs(probe), dtype=torch.float64)
        assert torch.allclose(engine, trainer_logprobs(student, probe), atol=1e-4)

        optimizer.step()  # the trainer moves on, but the files handed over do not
        sampler._save = lambda model: None
        with pytest.raises(RolloutEngineError, match="did not arrive"):
            sampler._hand_off(step=2)
    finally:
        sampler.close()


@vllm_test
def test_samples_from_weights_older_than_promised_are_refused(default, tmp_path):
    models, _, prompts = default
    tokenizer = load_tokenizer(models.student_dir)
    student = load_model(models.student_dir)
    probe = list(encode_prompts(tokenizer, prompts[:1], 256, False)[0])
    sampler = VLLMSampler(Accelerator(cpu=True), lambda: student, tokenizer,
                          EngineSettings(handoff_every=2, eager=True), 0, tmp_path, probe,
                          log_line=lambda line: None)
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=8, seed=3)
    try:
        assert len(sampler.sample(1, prompts[:4], sampling)) == 4  # one step stale: promised
        assert sampler.metrics()["rollout/staleness"] == 1
        # the engine reports weights the trainer never handed over (e.g. another run's reload)
        sampler.backend.reload(sampler.directory, version=7)
        with pytest.raises(RolloutEngineError, match="holds the weights of step 7"):
            sampler.sample(2, prompts[:4], sampling)
    finally:
        sampler.close()


@vllm_test
def test_grpo_samples_through_vllm(default, tmp_path):
    models, train_file, _ = default
    result = train_grpo(GRPOConfig(policy=str(models.student_dir), train_problems=str(train_file),
                                   output_dir=str(tmp_path / "grpo"), steps=2,
                                   prompts_per_step=4, group_size=2, max_new_tokens=16,
                                   rollout_backend="vllm", vllm_eager=True),
                        log=lambda line: None)
    assert [h["rollout/weights_version"] for h in result.history] == [0, 1]
    assert result.history[1]["rollout/handoff_logprob_gap"] < ARRIVAL_TOLERANCE
    assert all(0 <= h["rl/reward_mean"] <= 1 for h in result.history)


@vllm_test
def test_two_processes_sample_through_one_engine_and_reach_the_weights_of_one(default,
                                                                              tmp_path):
    """The main process alone drives the engine and samples the whole step (per-sample seeds
    from the step, the prompt's place and the sample), then each process trains on its shard:
    at temperature 1 two processes (torchrun, gloo) therefore train on the very samples one
    process draws and reach its weights, up to DDP's summation order (atol 2e-5 / rtol 1e-4,
    the bound tests/tasks/test_multiprocess.py justifies). Had each process sampled its shard
    with an engine and seed of its own, the samples, and so the weights, would differ."""
    config = _opd(default, tmp_path, "one", rollout_backend="vllm", rollout_temperature=1.0,
                  steps=3, batch_size=6, learning_rate=1e-3)
    train(config, log=lambda line: None)
    two = replace(config, output_dir=str(tmp_path / "two"))
    (tmp_path / "two.json").write_text(json.dumps(asdict(two)))
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
         "-m", "tasks.train", "--config", str(tmp_path / "two.json")],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
             "OMP_NUM_THREADS": "1"})
    assert launched.returncode == 0, (launched.stdout + launched.stderr)[-6000:]
    assert (launched.stdout + launched.stderr).count("engine ready") == 1
    one_weights = load_file(str(latest_checkpoint(tmp_path / "one") / "model.safetensors"))
    two_weights = load_file(str(latest_checkpoint(tmp_path / "two") / "model.safetensors"))
    for name, tensor in one_weights.items():
        torch.testing.assert_close(two_weights[name], tensor, atol=2e-5, rtol=1e-4, msg=name)
