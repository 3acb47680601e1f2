"""A study YAML with rollout_backend: vllm, through the grid flow (real Prefect harness, SQLite
MLflow, vLLM for real in its own environment): the on-policy cell and its GRPO follow-up sample
through the engine, a teacher-prefix cell of the same grid ignores the setting, and the hand-off
counter reaches MLflow."""

from pathlib import Path

import pytest
import yaml

from flows.grid import grid_flow
from tasks.configs import StudyConfig, load_config
from tasks.data import read_problems, write_problems
from tasks.tracking import Tracker


@pytest.mark.vllm
@pytest.mark.slow
def test_a_study_yaml_trains_its_on_policy_cells_and_grpo_through_vllm(
        tmp_path, bootstrapped, prefect_server, monkeypatch):
    models, data = bootstrapped.artifacts, bootstrapped.artifacts.data_dir
    train = write_problems(read_problems(data / "train.jsonl")[:16], tmp_path / "train.jsonl")
    bench = write_problems(read_problems(data / "test.jsonl")[:4], tmp_path / "bench.jsonl")
    study = {
        "name": "vllm-study", "teacher": str(models.teacher_dir),
        "student": str(models.student_dir), "train_problems": str(train),
        "held_out_problems": str(train), "train_size": 16, "cells": ["sft", "opd"],
        "seeds": [0], "steps": 3, "batch_size": 4, "max_new_tokens": 12,
        "rollout_backend": "vllm", "handoff_every": 1, "vllm_eager": True,
        "rl_cells": ["opd"], "rl_steps": 2, "rl_prompts_per_step": 2, "rl_group_size": 2,
        "rl_rollout_backend": "vllm", "rl_vllm_eager": True,
        "benchmarks": [str(bench)], "eval_n": 2, "eval_ks": [1, 2], "eval_max_new_tokens": 12,
        "readiness": "warn", "min_teacher_lead": 0, "register_model": False,
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    config = load_config(tmp_path / "study.yaml", StudyConfig)
    monkeypatch.setenv("DISTILL_LAB_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DISTILL_LAB_STORE_URL", raising=False)
    result = grid_flow(config)
    with Tracker(result["tracking_uri"]) as tracker:
        runs = {tracker.run_tags(c.run_id)["cell"]: c.run_id
                for c in tracker.child_runs(result["parent_run_id"])}
        versions = {cell: [value for _, value in tracker.metric_history(
            runs[cell], "rollout/weights_version")] for cell in ("opd", "sft", "grpo opd")}
        opd_params = tracker.run_params(runs["opd"])
    assert versions == {"opd": [0, 1, 2], "sft": [], "grpo opd": [0, 1]}
    assert opd_params["train.rollout_backend"] == "vllm"
    assert Path(result["report"]).is_file()
