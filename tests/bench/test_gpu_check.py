"""bench/gpu_check.py without a GPU: one clear line and exit 2, its loss section runs at toy
sizes, its shapes section times the opd step at Qwen3's widths (two layers) and judges the goals
(the full CPU smoke, minutes, is run by hand: see infra/README.md)."""

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from bench import gpu_check
from bench.gpu_check import (
    NO_CUDA_EXIT,
    SMOKE,
    Report,
    default_models,
    loss_rows,
    shapes_rows,
    verdicts,
)
from bench.step_breakdown import PARTS
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


def _step(wall: float, generate: float, tokens: float = 1_000.0, **more) -> dict:
    """A measured step whose time besides sampling is all in the student's forward."""
    parts = dict.fromkeys(PARTS, 0.0) | {"generate": generate, "student_forward": wall - generate}
    return parts | {"wall": wall, "tokens": tokens, "handoff": 0.0} | more


def test_the_verdicts_say_met_or_missed_and_why():
    hf = _step(10.0, 8.0, device_gib=30.0)
    vllm = _step(2.5, 0.5, device_gib=30.0)
    trl = _step(3.0, 1.0, device_gib=35.0, use_vllm=True)
    speed_up, against_trl = verdicts({"hf": hf, "vllm": vllm, "trl": trl}, "cuda")
    assert speed_up.result == "met: 4.00×"
    assert against_trl.result == "met: 1.20× its tokens/s at 0.86× its memory"
    assert "sampling 0.500 vs TRL 1.000 s/step" in against_trl.note

    # HF's step spends 4 s besides sampling: no sampler gets it below 4 s, i.e. past 2.5×.
    capped = verdicts({"hf": _step(10.0, 6.0), "vllm": _step(4.5, 0.5)}, "cuda")[0]
    assert capped.result == "missed: 2.22×"
    assert "no sampler can beat 2.50× here" in capped.note
    slow_sampler = verdicts({"hf": hf, "vllm": _step(5.0, 3.0)}, "cuda")[0]
    assert slow_sampler.result == "missed: 2.00×"
    assert "largest part of the vLLM step: generate 3.000 s (60%)" in slow_sampler.note

    heavier = verdicts({"vllm": vllm, "trl": trl | {"device_gib": 25.0}}, "cuda")[1]
    assert heavier.result.startswith("missed: 1.20× its tokens/s at 1.20× its memory")
    assert [row.result for row in verdicts({}, "cuda")] == ["not measured"] * 2


@pytest.mark.slow
def test_the_shapes_section_times_the_opd_step_at_qwen3_widths_on_the_cpu(tmp_path, monkeypatch):
    """The CPU smoke of the shapes section (Qwen3-0.6B/1.7B widths and vocabulary, two layers,
    batch 2 × 8 tokens, fp32): our opd step with HF sampling is measured and split into parts
    that fit in the step; with vLLM too where this tree's trainer and DISTILL_LAB_VLLM_PYTHON
    allow it. TRL's run is left out here (a minute more; run by hand, docs/gpu-check.md)."""
    monkeypatch.setattr(gpu_check, "_why_not_trl", lambda python, use_vllm: "left out")
    sizes = replace(SMOKE, shapes_steps=1)
    report = Report()
    measured = shapes_rows(report, sizes, tmp_path)
    assert not report.failed, report.table()
    assert [row.section for row in report.rows] == ["shapes"] * 3 + ["goal"] * 2
    assert "HF generate sampling" in report.rows[0].setting
    assert report.rows[2].result == "skipped"  # TRL
    vllm_row = report.rows[1]
    assert ("vllm" in measured) == (vllm_row.result != "skipped"), vllm_row
    for backend, result in measured.items():
        # no EOS in bench.shapes' models: every response runs to the cap
        assert result["tokens"] == sizes.shapes_batch * sizes.shapes_new_tokens, backend
        assert all(result[part] > 0 for part in PARTS if part != "other"), result
        assert sum(result[part] for part in PARTS if part != "other") <= result["wall"]
        assert result["peak_rss_mib"] > 0
    assert report.rows[0].result.endswith("tok/s") and "generate" in report.rows[0].note
    assert all(row.result in ("not measured", "skipped") or row.result.startswith(("met",
               "missed")) for row in report.rows[3:])
