"""Training on two processes (torchrun, gloo on the CPU) against one, on tiny real models:
teacher-prefix cells reach the same weights and log the same global metrics; checkpoints resume
from two processes in one and from one in two; on-policy distillation and GRPO resume across
process counts, and GRPO takes one skip decision for all processes.

Every launch is ``torchrun --nproc_per_node 2 --standalone`` (as ``python -m
torch.distributed.run``, the same entry point, so the test's interpreter runs it).

Tolerance for "the same weights": each process sums the gradient over its shard and DDP adds
the shards, where one process sums the whole batch in one backward; float32 addition in another
order differs by ~1e-7 relative, and Adam, dividing by the running gradient scale, passes such
differences into near-zero weights undamped. Observed here after 4 steps: 5e-6 at most. The test
allows atol 2e-5 / rtol 1e-4 (as test_train.py does for gradient accumulation); dropping one of
the 7 samples per step moves weights by up to 1.8e-2, a thousand times more. Adam hides a
uniform gradient scale, so the logged metrics are compared too (a factor of two in the loss, as
every process training on the whole batch gave, fails them).
"""

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tasks.artifacts import verify_checksums
from tasks.checkpoints import CHECKSUMS, LATEST, checkpoint_name, latest_checkpoint, sha256_file
from tasks.data import write_problems
from tasks.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--standalone"]
ATOL, RTOL = 2e-5, 1e-4

pytestmark = pytest.mark.slow  # each test launches two processes: 20-60 s on 2 loaded cores


def quiet(line: str) -> None:
    pass


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_pair, tiny_problems):
    data = tmp_path_factory.mktemp("data")
    write_problems(tiny_problems["train"][:64], data / "train.jsonl")
    # batch_size 7: the shards are uneven (4 and 3), and micro-batches of 2 make the processes
    # accumulate a different number of micro-batches (2 and 2, the last one of 1 on process 1).
    return TrainConfig(
        objective="sft", teacher=str(tiny_pair[0]), student=str(tiny_pair[1]),
        train_problems=str(data / "train.jsonl"), output_dir="unused", steps=4, batch_size=7,
        micro_batch_size=2, learning_rate=3e-3, max_new_tokens=12, checkpoint_every=1,
        artifacts_root=str(tmp_path_factory.mktemp("artifacts")))


def _torchrun(args: list[str], cwd: Path) -> str:
    """Run a two-process launch; returns its output, failing the test with it on error."""
    completed = subprocess.run(
        [*TORCHRUN, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-6000:]
    return completed.stdout


def _train_on_two(config: TrainConfig, tmp_path: Path) -> str:
    path = tmp_path / f"{Path(config.output_dir).name}.json"
    path.write_text(json.dumps(dataclasses.asdict(config)))
    return _torchrun(["-m", "tasks.train", "--config", str(path)], tmp_path)


def _cut_back_to(output_dir: Path, step: int) -> None:
    """Leave output_dir as a kill after checkpoint `step` would: later checkpoints gone."""
    for later in sorted(output_dir.glob("checkpoint-*")):
        if int(later.name.split("-")[1]) > step:
            shutil.rmtree(later)
    kept = output_dir / checkpoint_name(step)
    (output_dir / LATEST).write_text(json.dumps(
        {"checkpoint": kept.name, "sha256": sha256_file(kept / CHECKSUMS)}))


def _copy_cut(source: Path, destination: Path, step: int) -> Path:
    shutil.copytree(source, destination)
    _cut_back_to(destination, step)
    return destination


def _assert_same_weights(a: Path, b: Path) -> None:
    first, second = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], atol=ATOL, rtol=RTOL, msg=name)


def _rng_files(checkpoint: Path) -> list[str]:
    return sorted(p.name for p in checkpoint.glob("random_states_*.pkl"))


def test_two_processes_reach_the_weights_and_metrics_of_one(base, tmp_path):
    one = train(replace(base, output_dir=str(tmp_path / "one")), log=quiet)
    stdout = _train_on_two(replace(base, output_dir=str(tmp_path / "two")), tmp_path)

    two_checkpoint = tmp_path / "two" / checkpoint_name(base.steps)
    _assert_same_weights(one.checkpoint, two_checkpoint)
    assert _rng_files(two_checkpoint) == ["random_states_0.pkl", "random_states_1.pkl"]
    assert stdout.count('"checkpoint":') == 1  # the CLI's result, printed by the main process
    two = json.loads((tmp_path / "two" / "final_metrics.json").read_text())
    for key in ("train/loss", "train/forward_kl", "train/reverse_kl", "train/entropy",
                "train/response_length", "train/response_length_max",  # (fused: no topk mass)
                "train/truncation_rate", "train/grad_norm", "train/response_tokens",
                "train/teacher_score_tokens", "train/student_train_tokens", "train/total_flops"):
        assert two[key] == pytest.approx(one.metrics[key], rel=1e-4, abs=1e-6), key


def test_checkpoints_resume_from_one_process_in_two_and_from_two_in_one(base, tmp_path):
    config = replace(base, objective="offline_rl", output_dir=str(tmp_path / "chain"))
    straight = train(replace(config, output_dir=str(tmp_path / "straight")), log=quiet)

    # 1 → 2: steps 3-4 on two processes from the one-process checkpoint of step 2.
    _copy_cut(tmp_path / "straight", tmp_path / "chain", 2)
    stdout = _train_on_two(config, tmp_path)
    assert stdout.count("resuming from") == 1  # only the main process logs
    assert "checkpoint-000002 at step 2" in stdout
    assert "written by 1 process(es), this run has 2" in stdout
    _assert_same_weights(straight.checkpoint, tmp_path / "chain" / checkpoint_name(4))

    # 2 → 1: step 4 again, on one process, from the two-process checkpoint of step 3.
    _cut_back_to(tmp_path / "chain", 3)
    assert _rng_files(tmp_path / "chain" / checkpoint_name(3)) == ["random_states_0.pkl",
                                                                    "random_states_1.pkl"]
    lines: list[str] = []
    resumed = train(config, log=lines.append)
    assert any("written by 2 process(es), this run has 1" in line for line in lines), lines
    _assert_same_weights(straight.checkpoint, resumed.checkpoint)


def test_on_policy_cell_runs_and_resumes_across_process_counts(base, tmp_path):
    """Student samples differ with the number of processes (each shard has its own sampling
    seed), so the check is that 1 → 2 → 1 runs, resumes where it stopped and stays finite."""
    config = replace(base, objective="opd", steps=3, output_dir=str(tmp_path / "opd"))
    train(config, log=quiet)
    _cut_back_to(tmp_path / "opd", 1)
    stdout = _train_on_two(config, tmp_path)
    assert "checkpoint-000001 at step 1" in stdout
    assert _rng_files(tmp_path / "opd" / checkpoint_name(3)) == ["random_states_0.pkl",
                                                                  "random_states_1.pkl"]
    two = json.loads((tmp_path / "opd" / "final_metrics.json").read_text())
    assert two["train/generate_tokens"] > 0 and math.isfinite(two["train/loss"])

    _cut_back_to(tmp_path / "opd", 2)
    saved = json.loads((tmp_path / "opd" / checkpoint_name(2) / "loop_state.json").read_text())
    resumed = train(config, log=quiet)
    assert [h["step"] for h in resumed.history] == [3.0]
    assert all(math.isfinite(v) for v in resumed.metrics.values())
    # The counters resume from the two-process checkpoint's (global) totals and count on.
    assert resumed.metrics["train/generate_tokens"] > saved["extra"]["compute_tokens"]["generate"]


GRPO_RUNNER = """
import json, sys
from accelerate import PartialState
import tasks.rl

def rewards(grader, samples, gold_answers, format_reward=0.0):
    # Process 1: one rewarded sample per group (a signal in every group); process 0: none (every
    # group all-equal). The step must still be taken, by both, or DDP would wait forever.
    if PartialState().process_index == 0:
        return [0.0] * len(samples)
    return [float(sample.sample_index == 0) for sample in samples]

tasks.rl.rewards = rewards
tasks.rl.train_grpo(tasks.rl.GRPOConfig(**json.loads(sys.argv[1])))
"""


def _first_sample_rewarded(grader, samples, gold_answers, format_reward=0.0):
    return [float(sample.sample_index == 0) for sample in samples]


def test_grpo_resumes_on_two_processes_and_takes_one_global_decision(base, tmp_path,
                                                                     monkeypatch):
    import tasks.rl

    config = tasks.rl.GRPOConfig(
        policy=base.student, train_problems=base.train_problems,
        output_dir=str(tmp_path / "grpo"), steps=2, prompts_per_step=4, group_size=4,
        learning_rate=1e-3, max_new_tokens=8, checkpoint_every=1)
    monkeypatch.setattr(tasks.rl, "rewards", _first_sample_rewarded)
    tasks.rl.train_grpo(config, log=quiet)
    _cut_back_to(tmp_path / "grpo", 1)

    runner = tmp_path / "grpo_runner.py"
    runner.write_text(GRPO_RUNNER)
    stdout = _torchrun([str(runner), json.dumps(dataclasses.asdict(config))], tmp_path)
    assert stdout.count("resuming from") == 1 and "at step 1" in stdout
    assert _rng_files(tmp_path / "grpo" / checkpoint_name(2)) == ["random_states_0.pkl",
                                                                   "random_states_1.pkl"]
    metrics = json.loads((tmp_path / "grpo" / "final_metrics.json").read_text())
    # Global: half the groups (process 0's) are all-equal; 2 of 16 responses are rewarded.
    assert metrics["step"] == 2.0
    assert metrics["rl/all_equal_group_fraction"] == 0.5
    assert metrics["rl/reward_mean"] == 2 / 16
    assert metrics["rl/skipped"] == 0.0 and metrics["rl/grad_norm"] > 0


SLOW_SAVER = """
import sys, time
from accelerate import Accelerator, PartialState
import tasks.train

save_state = Accelerator.save_state

def late_save_state(self, *args, **kwargs):
    if PartialState().process_index == 1:
        time.sleep(3)  # a process descheduled by the load: it writes its state last
    return save_state(self, *args, **kwargs)

Accelerator.save_state = late_save_state
tasks.train.main(["--config", sys.argv[1]])
"""


def test_a_checkpoint_waits_for_the_slowest_process(base, tmp_path):
    """Every process's state is in a checkpoint before it is listed and renamed into place:
    with process 1 three seconds late at every save, each checkpoint has both RNG files and
    passes its checksums, so a resume starts from the newest."""
    config = replace(base, steps=2, output_dir=str(tmp_path / "late"))
    path = tmp_path / "late.json"
    path.write_text(json.dumps(dataclasses.asdict(config)))
    (tmp_path / "slow_saver.py").write_text(SLOW_SAVER)
    _torchrun([str(tmp_path / "slow_saver.py"), str(path)], tmp_path)
    for step in (1, 2):
        checkpoint = tmp_path / "late" / checkpoint_name(step)
        assert _rng_files(checkpoint) == ["random_states_0.pkl", "random_states_1.pkl"]
        assert verify_checksums(checkpoint) is None, checkpoint
    warnings = []
    assert latest_checkpoint(tmp_path / "late", warn=warnings.append).name == checkpoint_name(2)
    assert warnings == []
