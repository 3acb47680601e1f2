"""The run lifecycle under faults, through the real CLI, Prefect server and SQLite MLflow: a
kill -9 mid-training then the same command again ends on the weights of an uninterrupted run
with one FINISHED MLflow run; SIGTERM marks the run KILLED; a failing GRPO child run ends FAILED;
a killed command leaves no temporary server behind; bad input stops before any work."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from prefect.settings import PREFECT_API_URL
from safetensors.torch import load_file

from flows.cli import main
from tasks.checkpoints import latest_checkpoint
from tasks.data import write_problems
from tasks.tracking import Tracker

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_pair, tiny_problems):
    folder = tmp_path_factory.mktemp("inputs")
    return {
        "teacher": str(tiny_pair[0]), "student": str(tiny_pair[1]),
        "train_problems": str(write_problems(tiny_problems["train"][:32],
                                             folder / "train.jsonl")),
        "held_out_problems": str(write_problems(tiny_problems["held_out"],
                                                folder / "held_out.jsonl")),
        "benchmarks": [str(write_problems(tiny_problems["test"][:4], folder / "tiny.jsonl"))],
    }


def _config(tmp_path: Path, inputs: dict, **fields) -> Path:
    settings = {"name": "lifecycle", "objective": "opd", "train_size": 16, "steps": 12,
                "checkpoint_every": 3, "batch_size": 4, "max_new_tokens": 8, "eval_n": 2,
                "eval_ks": [1, 2], "eval_limit": 4, "eval_max_new_tokens": 8,
                "register_model": False, **inputs, **fields}
    path = tmp_path / f"{settings['name']}.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def _env(artifacts: Path, api_url: str | None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DISTILL_LAB_ARTIFACTS": str(artifacts)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("PREFECT_API_URL", None)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def _start(config: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flows.cli", "run", str(config)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _wait_for_checkpoint(artifacts: Path, name: str, process: subprocess.Popen,
                         timeout_s: float = 240) -> Path:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        found = sorted(artifacts.glob(f"runs/lifecycle/*/*/train/{name}"))
        if found:
            return found[0].parent
        assert process.poll() is None, process.communicate()[0][-3000:]
        time.sleep(0.05)
    raise TimeoutError(f"no {name} within {timeout_s} s")


def _runs(artifacts: Path):
    with Tracker(f"sqlite:///{artifacts / 'mlflow.db'}", artifacts_dir=artifacts) as tracker:
        return tracker.experiment_runs("lifecycle") or []


def _weights(checkpoint: Path) -> dict:
    return load_file(str(checkpoint / "model.safetensors"))


@pytest.mark.slow
def test_kill_9_then_the_same_command_resumes_to_the_uninterrupted_weights(
        prefect_server, tmp_path, inputs, monkeypatch):
    artifacts = tmp_path / "artifacts"
    config = _config(tmp_path, inputs)
    process = _start(config, _env(artifacts, PREFECT_API_URL.value()))
    train_dir = _wait_for_checkpoint(artifacts, "checkpoint-000006", process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert latest_checkpoint(train_dir).name < "checkpoint-000012"
    assert [r.status for r in _runs(artifacts)] == ["RUNNING"]  # what kill -9 leaves

    monkeypatch.setenv("DISTILL_LAB_ARTIFACTS", str(artifacts))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["run", str(config)]) == 0  # the same command again
    runs = _runs(artifacts)
    assert [r.status for r in runs] == ["FINISHED"]  # one run, resumed, not a second one

    straight = tmp_path / "straight"
    monkeypatch.setenv("DISTILL_LAB_ARTIFACTS", str(straight))
    assert main(["run", str(config)]) == 0
    resumed_weights = _weights(latest_checkpoint(train_dir))
    straight_dir = next(straight.glob("runs/lifecycle/*/*/train"))
    for name, tensor in _weights(latest_checkpoint(straight_dir)).items():
        torch.testing.assert_close(resumed_weights[name], tensor, atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_sigterm_marks_the_run_killed_and_the_rerun_finishes_it(prefect_server, tmp_path,
                                                                 inputs, monkeypatch):
    artifacts = tmp_path / "artifacts"
    config = _config(tmp_path, inputs)
    process = _start(config, _env(artifacts, PREFECT_API_URL.value()))
    _wait_for_checkpoint(artifacts, "checkpoint-000003", process)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 130, output[-3000:]
    assert "marked KILLED" in output.splitlines()[-1]
    assert [r.status for r in _runs(artifacts)] == ["KILLED"]
    monkeypatch.setenv("DISTILL_LAB_ARTIFACTS", str(artifacts))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["run", str(config)]) == 0
    assert [r.status for r in _runs(artifacts)] == ["FINISHED"]


@pytest.mark.slow
def test_a_full_disk_at_a_checkpoint_fails_the_run_in_one_line_and_the_rerun_resumes(
        prefect_server, tmp_path, inputs, monkeypatch, small_disk):
    artifacts = small_disk.mount("64m")  # MLflow's database on it too, as by default
    config = _config(tmp_path, inputs)
    env = {**_env(artifacts, PREFECT_API_URL.value()), "DISTILL_LAB_MIN_FREE_MB": "1"}
    process = _start(config, env)
    train_dir = _wait_for_checkpoint(artifacts, "checkpoint-000003", process)
    while "checkpoint-000003" not in (train_dir / "latest").read_text():
        time.sleep(0.01)  # its pointer is written just after the rename
    os.killpg(process.pid, signal.SIGSTOP)  # another program fills the disk meanwhile
    size = sum(f.stat().st_size for f in (train_dir / "checkpoint-000003").iterdir())
    small_disk.fill(artifacts, leave=size // 2)  # room for MLflow, not for a checkpoint
    os.killpg(process.pid, signal.SIGCONT)
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 2, output[-3000:]
    assert output.splitlines()[-1] == (
        f"distill run: No space left on device writing checkpoint "
        f"{train_dir / 'checkpoint-000006'}: free space, then rerun the same command; it "
        "resumes from step 3"), output[-3000:]
    assert [r.status for r in _runs(artifacts)] == ["FAILED"]  # closed, not left RUNNING
    small_disk.empty(artifacts)
    monkeypatch.setenv("DISTILL_LAB_ARTIFACTS", str(artifacts))
    monkeypatch.setenv("DISTILL_LAB_MIN_FREE_MB", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["run", str(config)]) == 0  # the same command again
    assert [r.status for r in _runs(artifacts)] == ["FINISHED"]
    assert latest_checkpoint(train_dir).name == "checkpoint-000012"


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_a_killed_command_leaves_no_temporary_server_and_the_next_run_closes_its_run(
        tmp_path, inputs, monkeypatch):
    artifacts = tmp_path / "artifacts"
    config = _config(tmp_path, inputs, steps=30, checkpoint_every=1)
    process = _start(config, _env(artifacts, None))  # no PREFECT_API_URL: a temporary server
    _wait_for_checkpoint(artifacts, "checkpoint-000001", process, timeout_s=300)
    servers = [pid for pid in _children(process.pid)
               if b"uvicorn" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(servers) == 1
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.time() + 30
    while time.time() < deadline and _alive(servers[0]):
        time.sleep(0.2)
    assert not _alive(servers[0]), "the temporary Prefect server outlived its command"
    assert [r.status for r in _runs(artifacts)] == ["RUNNING"]
    other = _config(tmp_path, inputs, steps=1, checkpoint_every=1, objective="sft")
    monkeypatch.setenv("DISTILL_LAB_ARTIFACTS", str(artifacts))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert main(["run", str(other)]) == 0  # another run of the experiment sweeps the dead one
    assert sorted(r.status for r in _runs(artifacts)) == ["FINISHED", "KILLED"]


@pytest.mark.slow
def test_a_command_on_a_temporary_server_sends_its_logs_before_the_server_stops(tmp_path,
                                                                                inputs):
    config = _config(tmp_path, inputs, steps=1, checkpoint_every=1, objective="sft")
    process = _start(config, _env(tmp_path / "artifacts", None))  # a temporary server
    output = process.communicate(timeout=600)[0]
    assert process.returncode == 0, output[-3000:]
    # queued flow logs were sent, not retried at exit against the stopped server (~1 min)
    assert "Error logging to API" not in output, output[-3000:]


def _rl_config(inputs: dict, checkpoint: str, **fields):
    from tasks.configs import RLFlowConfig

    return RLFlowConfig(**{"name": "rl-fails", "checkpoints": [checkpoint],
                           "train_problems": inputs["train_problems"], "train_size": 16,
                           "steps": 2, "prompts_per_step": 2, "group_size": 2,
                           "max_new_tokens": 8, "benchmarks": inputs["benchmarks"],
                           "eval_n": 1, "eval_ks": [1], "eval_temperature": 0.0,
                           "eval_limit": 4, "eval_max_new_tokens": 8, **fields})


def _rl_runs(artifacts: Path) -> dict[str, str]:
    with Tracker(f"sqlite:///{artifacts / 'mlflow.db'}", artifacts_dir=artifacts) as tracker:
        return {r.run_name: r.status for r in tracker.experiment_runs("rl-fails") or []}


@pytest.mark.slow
def test_a_failing_grpo_child_run_ends_failed(prefect_server, tmp_path, inputs, monkeypatch):
    from flows.rl import rl_after_distill_flow
    from tasks.models import load_model

    monkeypatch.setenv("DISTILL_LAB_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    corrupt = tmp_path / "student"  # found out only when GRPO loads and checks its weights
    shutil.copytree(inputs["student"], corrupt)
    model = load_model(corrupt)
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    model.save_pretrained(corrupt)
    with pytest.raises(ValueError, match="hold NaN/inf in .*the model file is corrupt"):
        rl_after_distill_flow(_rl_config(inputs, str(corrupt)))
    assert _rl_runs(tmp_path / "artifacts") == {"rl-fails study": "FAILED",
                                                "grpo student": "FAILED"}


@pytest.mark.slow
def test_rl_caps_beyond_the_context_fail_before_any_run_opens(prefect_server, tmp_path, inputs,
                                                             monkeypatch):
    from flows.rl import rl_after_distill_flow

    monkeypatch.setenv("DISTILL_LAB_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = _rl_config(inputs, inputs["student"], max_new_tokens=500)  # > its 160 tokens
    started = time.monotonic()
    with pytest.raises(ValueError, match="max_new_tokens=500 is not below the policy's context "
                                         "of 160 tokens"):
        rl_after_distill_flow(config)
    assert _rl_runs(tmp_path / "artifacts") == {}  # no MLflow run was opened
    assert time.monotonic() - started < 30
    assert not (tmp_path / "artifacts" / "runs").exists()


def test_unreachable_tracking_fails_in_one_line_before_any_work(tmp_path, inputs, capsys,
                                                                 monkeypatch):
    monkeypatch.setenv("DISTILL_LAB_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    started = time.monotonic()
    assert main(["run", str(_config(tmp_path, inputs))]) == 2
    assert time.monotonic() - started < 30
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "http://127.0.0.1:9 is not reachable" in error
    assert not (tmp_path / "artifacts" / "runs").exists()



def test_a_broken_benchmark_line_fails_before_any_work(tmp_path, inputs, capsys, monkeypatch):
    artifacts = tmp_path / "artifacts"
    monkeypatch.setenv("DISTILL_LAB_ARTIFACTS", str(artifacts))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    benchmark = tmp_path / "broken.jsonl"
    first = Path(inputs["benchmarks"][0]).read_text().splitlines()[0]
    benchmark.write_text(first + "\n" + '{"problem": "2 + 2?", "answer": 4' + "\n")
    config = _config(tmp_path, inputs, benchmarks=[str(benchmark)])
    started = time.monotonic()
    assert main(["run", str(config)]) == 2
    assert time.monotonic() - started < 30
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith(f"distill run: {benchmark}, line 2: is not valid JSON")
    assert all("mlflow.store.db" in line for line in lines[:-1])  # a new tracking database
    assert not (artifacts / "runs").exists() and not (artifacts / "rollouts").exists()
    assert not list(artifacts.rglob("*.safetensors"))  # no checkpoint, no model



def test_preflight_reads_each_problems_file_as_far_as_its_step_will(tmp_path, inputs):
    from tasks.configs import EvaluateFlowConfig, ExperimentConfig, RLFlowConfig
    from tasks.runs import check_problem_files

    broken = tmp_path / "tail.jsonl"  # four good problems, then a broken line 5
    broken.write_text(Path(inputs["benchmarks"][0]).read_text() + "{broken\n")
    at_line_5 = re.escape(f"{broken}, line 5: is not valid JSON")
    # the evaluation reads its eval_limit first problems: a bad line after them is never read
    check_problem_files(ExperimentConfig(**{**inputs, "benchmarks": [str(broken)]},
                                         eval_limit=4))
    for config in (ExperimentConfig(**{**inputs, "benchmarks": [str(broken)]}, eval_limit=5),
                   ExperimentConfig(**{**inputs, "held_out_problems": str(broken)}),
                   RLFlowConfig(train_problems=str(broken), benchmarks=inputs["benchmarks"]),
                   EvaluateFlowConfig(benchmarks=[f"tail={broken}"], limit=None)):
        with pytest.raises(ValueError, match=at_line_5):
            check_problem_files(config)


def test_too_little_free_space_fails_in_one_line(tmp_path, inputs, capsys, monkeypatch):
    monkeypatch.setenv("DISTILL_LAB_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DISTILL_LAB_MIN_FREE_MB", str(10**12))
    assert main(["run", str(_config(tmp_path, inputs))]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "MB free; runs need at least" in error


@pytest.mark.slow
def test_the_end_of_a_run_spills_when_mlflow_is_down_and_replay_sends_it(tmp_path,
                                                                        monkeypatch):
    from tasks.runs import RunEnd, RunRef, close_run

    monkeypatch.setenv("DISTILL_LAB_ARTIFACTS", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # the default store of this artifact folder
    with Tracker(uri, artifacts_dir=tmp_path) as tracker:
        run_id = tracker.start_run("spill", "cell", {})
    down = "http://127.0.0.1:9"  # the same run, reached through a server that is down
    lines: list[str] = []
    close_run(RunRef(down, run_id), "FINISHED", RunEnd(text={"results.md": "| a |"}),
              log=lines.append)
    assert lines == []  # nothing raised, nothing lost: it waits in the spill file
    spill = tmp_path / "tracking-spill" / f"{run_id}.jsonl"
    assert [json.loads(line)["kind"] for line in spill.read_text().splitlines()] == [
        "text", "status"]
    assert main(["replay"]) == 0
    with Tracker(uri, artifacts_dir=tmp_path) as tracker:
        assert tracker.run_summary(run_id).status == "FINISHED"
        assert "results.md" in [a.path for a in tracker.client.list_artifacts(run_id)]
    assert not spill.exists()


@pytest.mark.slow
def test_a_full_disk_at_the_end_is_one_line_and_never_raises(tmp_path, monkeypatch):
    from tasks.runs import RunRef, close_run
    from tasks.tracking import Tracker as RealTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with RealTracker(uri, artifacts_dir=tmp_path) as tracker:
        run_id = tracker.start_run("full", "cell", {})
        tracker.client.delete_run(run_id)
    # The kernel's own "No space left on device": every spill write goes to /dev/full.
    monkeypatch.setattr(RealTracker, "spill_path", lambda self, run: Path("/dev/full"))
    lines: list[str] = []
    close_run(RunRef(uri, run_id), "FAILED", log=lines.append)
    assert len(lines) == 1 and "No space left on device writing full (/dev/full)" in lines[0], (
        lines)


@pytest.mark.slow
def test_a_tracking_outage_mid_run_ends_in_one_line_and_replay_closes_the_run(
        prefect_server, tmp_path, inputs, mlflow_server, monkeypatch):
    artifacts = tmp_path / "artifacts"
    config = _config(tmp_path, inputs, steps=30)
    env = {**_env(artifacts, PREFECT_API_URL.value()), "MLFLOW_TRACKING_URI": mlflow_server.uri}
    process = _start(config, env)
    _wait_for_checkpoint(artifacts, "checkpoint-000003", process)
    mlflow_server.stop()  # down for the rest of the run
    output = process.communicate(timeout=600)[0]
    last = output.strip().splitlines()[-1]
    assert process.returncode == 75, output[-3000:]  # EX_TEMPFAIL, not a failure
    assert f"MLflow at {mlflow_server.uri} stopped answering" in last and "replay" in last, last
    assert latest_checkpoint(next(artifacts.glob("runs/lifecycle/*/*/train"))).name == (
        "checkpoint-000030")  # training and evaluation went on without the server

    mlflow_server.start()  # same port, same database
    monkeypatch.setenv("DISTILL_LAB_ARTIFACTS", str(artifacts))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    assert main(["replay"]) == 0
    with Tracker(mlflow_server.uri, artifacts_dir=artifacts) as tracker:
        [run] = tracker.experiment_runs("lifecycle")
        assert run.status == "FINISHED"
        assert len(tracker.metric_history(run.run_id, "train/loss")) == 30
    assert main(["run", str(config)]) == 0  # the same command: reused, not trained again


@pytest.mark.slow
def test_sigterm_while_waiting_on_another_commands_bootstrap_is_one_line(tmp_path):
    from tasks.artifacts import build_lock, code_version, content_hash
    from tasks.bootstrap import DATA_CODE, DefaultBootstrapConfig

    artifacts = tmp_path / "artifacts"
    key = content_hash(DefaultBootstrapConfig().task, code_version(DATA_CODE))
    env = _env(artifacts, None)  # on a temporary Prefect server of its own
    with build_lock(artifacts / "data" / "arithmetic" / f".{key}.lock"):  # another builder
        process = subprocess.Popen([sys.executable, "-m", "flows.cli", "bootstrap"], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   start_new_session=True)
        seen = []
        watchdog = threading.Timer(180, process.kill)  # a silent wait fails, never hangs
        watchdog.start()
        for line in process.stdout:  # the wait says so: the sign to interrupt it
            seen.append(line)
            if "waiting for another process that is building data/arithmetic" in line:
                break
        assert process.poll() is None, "".join(seen)[-3000:]
        process.send_signal(signal.SIGTERM)
        rest = process.communicate(timeout=120)[0]
        watchdog.cancel()
    assert process.returncode == 130, rest[-3000:]
    assert rest.strip().splitlines()[-1] == (
        "distill bootstrap: interrupted; the same command resumes it")  # no run was open
