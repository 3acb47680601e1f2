"""The grid flow on real weights, end to end: on the real-weights profile (SmolLM2-135M-Instruct
and its healed 15-layer student, bootstrapped once per session by tests/conftest.py), two cells
(sft: teacher prefixes, forward KL; opd: student prefixes, reverse KL) train for two steps on
one-digit sums and are evaluated with the teacher and the starting student — a reduced
configs/real-weights.yaml through the same flow, on a real Prefect harness, SQLite MLflow and
store. Slow: the grid itself about a minute on 2 CPU cores (docs/real-weights.md)."""

import math
import time
from pathlib import Path

import pytest
import torch

import distill_core as dc
from flows.grid import grid_flow
from tasks.configs import StudyConfig
from tasks.data import Problem
from tasks.models import fused_head, load_model, load_tokenizer
from tasks.rollout import Sample, render_prompts
from tasks.scoring import response_batch, response_hidden_states, response_logits
from tasks.tracking import Tracker

pytestmark = pytest.mark.slow

EVAL_CAP = 48
CONFIG = StudyConfig(
    name="real-weights-smoke", profile="real-weights", cells=["sft", "opd"], seeds=[0],
    train_size=2, batch_size=2, steps=2, checkpoint_every=2, learning_rate=5e-5,
    max_new_tokens=16, eval_n=1, eval_ks=[1], eval_temperature=0.0, eval_limit=4,
    eval_max_new_tokens=EVAL_CAP, register_model=False, readiness="warn",
    min_teacher_lead=0)  # 4 problems measure no lead: the pipeline is tested, not the pair
TEMPLATE = "worked-example"  # the profile's: nothing in CONFIG names it
LABELS = ["teacher", "student (start)", "sft", "opd"]


@pytest.fixture(scope="module")
def outcome(real_weights_root, prefect_server):
    root = real_weights_root
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DISTILL_LAB_ARTIFACTS", str(root))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("DISTILL_LAB_STORE_URL", raising=False)
        started = time.perf_counter()
        result = grid_flow(CONFIG)
        print(f"\nthe reduced real-weights grid took {time.perf_counter() - started:.0f} s")
    with Tracker(result["tracking_uri"]) as tracker:
        runs = {}
        for child in tracker.child_runs(result["parent_run_id"]):
            run = tracker.client.get_run(child.run_id)
            runs[run.data.tags["cell"]] = (child.status, run.data.metrics,
                                           tracker.run_params(child.run_id))
    return root, result, runs


def test_every_cell_and_reference_finished_with_valid_metrics(outcome):
    _, result, runs = outcome
    assert sorted(runs) == sorted(LABELS)
    for label, (status, metrics, params) in runs.items():
        assert status == "FINISHED", label
        assert metrics["eval/overall/problems"] == CONFIG.eval_limit
        for rate in ("avg_at_1", "pass_at_1", "strict_accuracy", "flexible_accuracy",
                     "truncation_rate"):
            assert 0.0 <= metrics[f"eval/overall/{rate}"] <= 1.0, (label, rate)
        assert 0 < metrics["eval/overall/response_length_mean"] <= EVAL_CAP, label
        # a real language model over 49,152 tokens: neither certain nor uniform (ln V = 10.8)
        assert 0.0 < metrics["eval/overall/entropy"] < math.log(49152), label
        # the profile's prompt shows SmolLM2 a boxed worked example; nothing in CONFIG says so
        assert params["eval.prompt_template"] == TEMPLATE, label
    assert "smollm2-teacher" in runs["teacher"][2]["eval.model"]
    assert "smollm2-student" in runs["student (start)"][2]["eval.model"]


def test_both_cells_trained_on_real_weights(outcome):
    _, _, runs = outcome
    for cell, direction in (("sft", "forward_kl"), ("opd", "reverse_kl")):
        _, metrics, params = runs[cell]
        assert params["train.steps"] == "2" and params["train.prompt_template"] == TEMPLATE
        assert math.isfinite(metrics["train/loss"]) and metrics["train/loss"] > 0
        # λ = 0 (sft) trains on forward KL alone, λ = 1 (opd) on reverse KL alone
        assert metrics["train/loss"] == pytest.approx(metrics[f"train/{direction}"], rel=1e-5)
        assert math.isfinite(metrics["train/grad_norm"]) and metrics["train/grad_norm"] > 0
        assert 0 < metrics["train/response_length"] <= CONFIG.max_new_tokens
    # only the student-prefix cell generates while it trains
    assert runs["sft"][1]["train/generate_tokens"] == 0
    assert runs["opd"][1]["train/generate_tokens"] > 0


def test_the_table_holds_every_run(outcome):
    _, result, _ = outcome
    rows = [line.split("|")[1].strip() for line in result["table"].splitlines()
            if line.startswith("| ") and not line.startswith("| cell")]
    assert rows == LABELS
    assert Path(result["report"].split(" (")[0]).is_file()


def test_the_fused_loss_reads_smollm2s_tied_head(outcome):
    """On the real student (tied embeddings): the final hidden states times the head the fused
    loss is given are the logits the model itself computes for each response token."""
    _, _, runs = outcome
    student_dir = runs["student (start)"][2]["eval.model"]
    student, tokenizer = load_model(student_dir), load_tokenizer(student_dir)
    weight, facts = fused_head(student)
    dc.check_fused_head(facts)
    assert student.config.tie_word_embeddings and weight is student.get_input_embeddings().weight
    problem = Problem(id="p", problem="What is 2 + 3?", answer="5")
    prompt = tokenizer(render_prompts(tokenizer, [problem], TEMPLATE),
                       add_special_tokens=False)["input_ids"][0]
    response = tokenizer("2 + 3 = \\boxed{5}", add_special_tokens=False)["input_ids"]
    sample = Sample(0, 0, tuple(prompt), (*response, tokenizer.eos_token_id), "", "stop", 0)
    batch = response_batch([sample], tokenizer.pad_token_id)
    with torch.no_grad():
        logits = response_logits(student, batch)
        hidden = response_hidden_states(student, batch)
    torch.testing.assert_close(hidden @ weight.T, logits, rtol=1e-4, atol=1e-4)

