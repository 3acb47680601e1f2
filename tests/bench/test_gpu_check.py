"""bench/gpu_check.py without a GPU: one clear line and exit 2, and its loss section runs at toy
sizes (the full CPU smoke, minutes, is run by hand: see infra/README.md)."""

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from bench.gpu_check import NO_CUDA_EXIT, SMOKE, Report, default_models, loss_rows
from tasks.models import load_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_without_cuda_it_says_so_in_one_line_and_exits_2():
    completed = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check"], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""})
    assert completed.returncode == NO_CUDA_EXIT == 2
    assert completed.stdout == ""
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0] and "--cpu-smoke" in lines[0], lines


@pytest.mark.slow
def test_loss_section_measures_every_case_of_kl_memory_and_the_fused_loss_at_toy_size():
    report = Report()
    loss_rows(report, replace(SMOKE, loss_vocab=64, loss_tokens=(8,)))
    assert len(report.rows) == 6 + 1 and not report.failed
    assert all(row.result.endswith("s fwd+bwd") for row in report.rows), report.table()
    assert report.rows[-1].setting.startswith("fused λ=0.5") and "bf16" in report.rows[-1].setting
    assert report.table().count("\n") == 7 + 1  # header, separator, one line per row


@pytest.mark.slow
def test_the_smokes_toy_default_builds_with_the_bootstraps_own_config(tmp_path):
    """The CPU smoke's toy default goes through bootstrap_default with a DefaultBootstrapConfig;
    a field the config no longer has (it happened: student_problems) fails here, not on a GPU."""
    built = default_models(SMOKE, tmp_path)
    teacher, student = load_model(built.teacher_dir), load_model(built.student_dir)
    assert student.config.num_hidden_layers == teacher.config.num_hidden_layers == 1
