"""A whole study through the grid flow on tiny real models (a real Prefect harness, SQLite
MLflow and store): cells × seeds, a long horizon, the curriculum against a fixed cap at its top
rung with H_min derived from the starting student, evaluations at intermediate steps, GRPO
after distillation, the readiness check, intervals and a verdict (or 'not tested') per claim."""

import json
from pathlib import Path

import pytest

from flows.grid import grid_flow
from tasks.configs import StudyConfig
from tasks.data import write_problems
from tasks.store import RolloutStore
from tasks.tracking import Tracker


@pytest.fixture(scope="module")
def outcome(tmp_path_factory, tiny_pair, tiny_problems, prefect_server):
    root = tmp_path_factory.mktemp("study")
    bench = write_problems(tiny_problems["test"][:6], root / "tiny.jsonl")
    config = StudyConfig(
        name="toy-study", teacher=str(tiny_pair[0]), student=str(tiny_pair[1]),
        train_problems=str(write_problems(tiny_problems["train"][:32], root / "train.jsonl")),
        held_out_problems=str(write_problems(tiny_problems["held_out"], root / "held.jsonl")),
        train_size=16, batch_size=4, max_new_tokens=8, steps=4, eval_every=2,
        cells=["sft", "dagger", "offline_rl", "opd"], lambdas=[0.25],
        lambda_prefixes=["student"], long_steps=6, long_cells=["opd", "student:0.25"],
        curriculum=[4, 8], compare_curriculum=True, curriculum_cells=["dagger"],
        stage_steps=2, min_entropy_fraction=0.5, rl_cells=["dagger", "opd"], rl_steps=2,
        rl_prompts_per_step=2, rl_group_size=2, seeds=[0, 1], benchmarks=[str(bench)],
        eval_n=2, eval_ks=[1, 2], eval_limit=6, eval_max_new_tokens=8, readiness="warn",
        min_teacher_lead=0,  # untrained tiny models: the pipeline is tested, not the teaching
        register_model=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DISTILL_LAB_ARTIFACTS", str(root / "artifacts"))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("DISTILL_LAB_STORE_URL", raising=False)
        result = grid_flow(config)
    return root / "artifacts", config, result


@pytest.mark.slow
def test_every_cell_and_seed_is_a_run_evaluated_at_its_steps(outcome):
    root, config, result = outcome
    with Tracker(result["tracking_uri"]) as tracker:
        children = tracker.child_runs(result["parent_run_id"])
        tags = {c.run_id: tracker.run_tags(c.run_id) for c in children}
        long_opd = next(c for c in children if tags[c.run_id]["cell"] == "opd 6 steps"
                        and tags[c.run_id]["seed"] == "1")
        history = tracker.metric_history(long_opd.run_id, "eval/overall/avg_at_2")
        parent_metrics = tracker.run_metrics(result["parent_run_id"])
    labels = sorted({t["cell"] for t in tags.values()})
    assert labels == sorted(["teacher", "student (start)", "sft", "dagger", "offline_rl",
                             "opd 6 steps", "student:0.25 6 steps", "dagger +curriculum",
                             "dagger cap 8", "grpo dagger", "grpo opd 6 steps"])
    assert len(children) == 2 + 7 * 2 + 2 * 2  # references, cells × seeds, GRPO × seeds
    assert all(c.status == "FINISHED" for c in children)
    assert [step for step, _ in history] == [2, 4, 6]  # every 2 steps, the study's horizon
    with RolloutStore(f"sqlite:///{root / 'distill_lab.db'}") as store:
        rows = store.samples(long_opd.run_id)
    assert sorted({r.step for r in rows}) == [2, 4, 6]
    greedy = [r for r in rows if r.stage == "eval_greedy/tiny"]
    assert len(rows) - len(greedy) == 3 * 6 * 2 and len(greedy) == 3 * 6  # + one greedy each
    assert "avg_at_2/dagger" in parent_metrics and "entropy/opd-6-steps" in parent_metrics
    assert {"greedy_accuracy/dagger", "gold_nll_digits/opd-6-steps"} <= set(parent_metrics)


@pytest.mark.slow
def test_the_study_concludes_with_intervals_readiness_and_findings(outcome):
    root, config, result = outcome
    claims = {c["id"]: c for c in result["findings"]["claims"]}
    assert list(claims) == ["C0", "C1", "C2", "C3", "C4", "C5"]
    for claim in claims.values():  # every claim's runs were made: each has a computed verdict
        assert claim["verdict"] in ("reproduced", "opposite", "inconclusive"), claim
        assert all(e["low"] <= e["estimate"] <= e["high"] for e in claim["effects"])
    # each Avg@k effect has its greedy-accuracy effect beside it, reported without a verdict
    assert len(claims["C0"]["effects"]) == 4 * 2  # each grid cell − the start: Avg@k, greedy
    assert len(claims["C1"]["effects"]) == 10 and len(claims["C3"]["effects"]) == 6
    greedy = [e for c in claims.values() for e in c["effects"] if e["metric"] == "greedy_accuracy"]
    assert len(greedy) == 4 + 2 + 1 + 1 + 1 + 1 and all(e["verdict"] is None for e in greedy)
    assert result["findings"]["readiness"]["ready"] is False  # tiny models: it says so
    assert "[" in result["table"] and "Δ avg@2 vs student (start)" in result["table"]
    written = json.loads((Path(result["run_dir"]) / "findings.json").read_text())
    assert written["claims"] == result["findings"]["claims"]
    with Tracker(result["tracking_uri"]) as tracker:
        readiness = tracker.read_json(result["parent_run_id"], "readiness.json")
        assert tracker.read_json(result["parent_run_id"], "findings.json") == written
    assert readiness["measured"]["min_entropy_derived"] > 0  # H_min from the start's entropy
    page = Path(result["report"]).read_text(encoding="utf-8")
    assert "<h2>Findings</h2>" in page and "NOT READY" in page
