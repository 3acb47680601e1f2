"""The nightly trend on a real SQLite MLflow: three nights of two models, read back per night
and model, the later of two evaluations on one night, a model missing one night a gap."""

import pytest

from dashboards.nightly import attach_trend, read_trend, trend_table
from tasks.plan import NIGHT_TAG
from tasks.tracking import Tracker

pytestmark = pytest.mark.slow  # a fresh MLflow database per test

NIGHTS = {"2026-01-01": {"sft": 0.10, "opd": 0.20},
          "2026-01-02": {"sft": 0.15},  # opd's evaluation failed that night
          "2026-01-03": {"sft": 0.30, "opd": 0.40}}


def _night(tracker: Tracker, night: str, values: dict[str, float]) -> str:
    parent = tracker.start_run("nightly", f"nightly {night}", {NIGHT_TAG: night})
    for model, value in values.items():
        child = tracker.start_run("nightly", f"eval distill-demo-{model} v1",
                                  {"evaluated_model": f"distill-demo-{model}",
                                   "model_version": "1"}, parent)
        tracker.log_metrics(child, {"eval/overall/avg_at_4": value}, step=0)
    return parent


@pytest.fixture
def tracker(tmp_path):
    with Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", artifacts_dir=tmp_path) as tracker:
        yield tracker


def test_a_trend_across_nights(tracker):
    parents = [_night(tracker, night, values) for night, values in NIGHTS.items()]
    _night(tracker, "2026-01-01", {"sft": 0.12})  # evaluated again that night: the later counts
    points = read_trend(tracker, "nightly", 4)
    assert [(p.night, p.model.removeprefix("distill-demo-"), p.value) for p in points] == [
        ("2026-01-01", "opd", 0.20), ("2026-01-01", "sft", 0.12), ("2026-01-02", "sft", 0.15),
        ("2026-01-03", "opd", 0.40), ("2026-01-03", "sft", 0.30)]
    table = trend_table(points, 4)
    assert "| night | distill-demo-opd | distill-demo-sft |" in table
    assert "| 2026-01-02 | – | 0.150 (v1) |" in table

    attach_trend(tracker, "nightly", parents[-1], 4)
    assert tracker.run_metrics(parents[-1]) == {"avg_at_4/distill-demo-sft": 0.30,
                                                "avg_at_4/distill-demo-opd": 0.40}
    files = {a.path for a in tracker.client.list_artifacts(parents[-1])}
    assert {"trend.md", "trend.png"} <= files


def test_no_nights_yet(tracker):
    assert read_trend(tracker, "nightly", 4) == []
    assert trend_table([], 4).endswith("| night |  |\n|---|")


def test_each_model_is_read_at_its_own_k_and_shown_with_its_settings(tracker):
    parent = tracker.start_run("nightly", "nightly 2026-01-04", {NIGHT_TAG: "2026-01-04"})
    child = tracker.start_run("nightly", "eval distill-demo-opd v3",
                              {"evaluated_model": "distill-demo-opd", "model_version": "3"},
                              parent)
    tracker.log_params(child, {"eval": {"n": 2, "ks": [1, 2], "temperature": 0.7,
                                        "max_new_tokens": 96}})
    tracker.log_metrics(child, {"eval/overall/avg_at_2": 0.5, "eval/overall/problems": 20},
                        step=0)
    table = attach_trend(tracker, "nightly", parent, 4)
    assert "| 2026-01-04 | 0.500 (avg@2) (v3; 20×2, T=0.7, cap 96) |" in table
    assert tracker.run_metrics(parent) == {"avg_at_2/distill-demo-opd": 0.5}
