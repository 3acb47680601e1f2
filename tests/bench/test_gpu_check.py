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


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory) -> Path:
    """One artifact root for the shapes tests: the first builds the two-layer pair (half a
    minute), the next reuses it."""
    return tmp_path_factory.mktemp("shapes")


def _shapes_section_with(backend: str, root: Path, monkeypatch) -> tuple[Report, dict]:
    """The shapes section's CPU smoke (Qwen3-0.6B/1.7B widths and vocabulary, two layers, batch
    2 × 8 tokens, fp32, one timed step) with our run on backend only; TRL's is left out (a
    minute more; run by hand, docs/gpu-check.md)."""
    real = gpu_check._why_not_sampling_with
    monkeypatch.setattr(gpu_check, "_why_not_sampling_with",
                        lambda other: real(other) if other == backend else "left out")
    monkeypatch.setattr(gpu_check, "_why_not_trl", lambda python, use_vllm: "left out")
    report = Report()
    measured = shapes_rows(report, replace(SMOKE, shapes_steps=1), root)
    assert not report.failed, report.table()
    assert [row.section for row in report.rows] == ["shapes"] * 3 + ["goal"] * 2
    assert list(measured) == [backend], report.table()
    return report, measured[backend]


def _check_step(result: dict) -> None:
    # no EOS in bench.shapes' models: every response runs to the cap
    assert result["tokens"] == SMOKE.shapes_batch * SMOKE.shapes_new_tokens
    assert all(result[part] > 0 for part in PARTS if part != "other"), result
    assert sum(result[part] for part in PARTS if part != "other") <= result["wall"]
    assert result["peak_rss_mib"] > 0


@pytest.mark.slow
def test_the_shapes_section_times_the_opd_step_with_hf_sampling(shapes_root, monkeypatch):
    report, result = _shapes_section_with("hf", shapes_root, monkeypatch)
    _check_step(result)
    row = report.rows[0]
    assert "HF generate sampling" in row.setting and "cut to 2 layers" in row.setting
    assert row.result.endswith("tok/s") and row.note.startswith("generate ")
    assert [row.result for row in report.rows[3:]] == ["not measured"] * 2


@pytest.mark.slow
@pytest.mark.vllm
def test_the_shapes_section_times_the_opd_step_with_vllm_sampling(shapes_root, monkeypatch):
    report, result = _shapes_section_with("vllm", shapes_root, monkeypatch)
    _check_step(result)
    assert 0 < result["handoff"] < result["generate"]  # the hand-off is part of sampling
    assert "vLLM sampling" in report.rows[1].setting and "hand-off" in report.rows[1].note


def test_a_run_that_fails_gets_an_error_row_with_its_own_error_and_the_others_still_run(
        tmp_path, monkeypatch):
    """E.g. out of GPU memory at these shapes: the row names the child's error line, the check
    exits 1, the goal rows say not measured."""
    from bench import shapes

    class Pair:
        def describe(self) -> str:
            return "shapes"

    def out_of_memory(*args):
        raise SystemExit("bench.step_breakdown child {...} failed:\nTraceback (most recent call "
                         "last):\n  File ...\ntorch.OutOfMemoryError: CUDA out of memory. Tried "
                         "to allocate 9.27 GiB")

    monkeypatch.setattr(shapes, "build_pair", lambda *args, **kwargs: Pair())
    monkeypatch.setattr(gpu_check, "_ours_at_shapes", out_of_memory)
    monkeypatch.setattr(gpu_check, "_why_not_sampling_with", lambda backend: "")
    monkeypatch.setattr(gpu_check, "_why_not_trl", lambda python, use_vllm: "left out")
    report = Report()
    assert shapes_rows(report, SMOKE, tmp_path) == {}
    assert report.failed
    assert [row.result for row in report.rows] == ["ERROR", "ERROR", "skipped", "not measured",
                                                   "not measured"]
    assert report.rows[0].note.startswith("torch.OutOfMemoryError: CUDA out of memory")
