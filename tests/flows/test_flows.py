"""The flows on tiny real models in the session's temporary Prefect server, with a real SQLite
MLflow and rollout store: the grid's runs and metrics, caching across flow runs, the nightly
evaluation of registered students, and parameter validation before a run starts."""

import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from flows.evaluate import evaluate_flow
from flows.grid import grid_flow
from tasks.configs import EvaluateFlowConfig, ExperimentConfig, StudyConfig
from tasks.data import write_problems
from tasks.store import RolloutStore
from tasks.tracking import Tracker

pytestmark = pytest.mark.slow  # every test runs flows on the Prefect harness


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_pair, tiny_problems):
    """A 2-cell grid run twice in one artifact directory (the second reuses the finished study),
    then with one more step (a new study: the caches are shared, the students registered anew);
    then the nightly evaluation twice on one day, its own config unlike the study's."""
    root = tmp_path_factory.mktemp("grid")
    train = write_problems(tiny_problems["train"][:32], root / "train.jsonl")
    held_out = write_problems(tiny_problems["held_out"], root / "held_out.jsonl")
    bench = write_problems(tiny_problems["test"][:4], root / "tiny.jsonl")
    config = StudyConfig(
        name="tiny", readiness="warn", min_teacher_lead=0,  # untrained tiny models
        teacher=str(tiny_pair[0]), student=str(tiny_pair[1]),
        train_problems=str(train), held_out_problems=str(held_out), train_size=16,
        cells=["sft", "opd"], steps=2, batch_size=4, max_new_tokens=8, benchmarks=[str(bench)],
        eval_n=2, eval_ks=[1, 2], eval_limit=4, eval_max_new_tokens=8)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DISTILL_LAB_ARTIFACTS", str(root / "artifacts"))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("DISTILL_LAB_STORE_URL", raising=False)
        first = grid_flow(config)
        second = grid_flow(config)
        longer = grid_flow(config.model_copy(update={"steps": 3}))
        # not the study's settings (n=2, ks [1, 2], 4 problems, cap 8): each student's own win
        nightly_config = EvaluateFlowConfig(registered_prefix="distill-tiny-",
                                            benchmarks=[str(bench)], n=4, ks=[1, 4], limit=3,
                                            max_new_tokens=6, seed=1)
        nights = (evaluate_flow(nightly_config), evaluate_flow(nightly_config))
    return root / "artifacts", config, first, second, nights, longer


def test_grid_logs_a_parent_with_a_child_run_per_cell(prefect_server, study):
    root, config, first, *_ = study
    with Tracker(first["tracking_uri"]) as tracker:
        children = {c.run_name: c for c in tracker.child_runs(first["parent_run_id"])}
        assert set(children) == {"teacher", "student (start)", "sft", "opd"}
        assert all(c.status == "FINISHED" for c in children.values())
        opd = children["opd"].run_id
        tags, metrics = tracker.run_tags(opd), tracker.run_metrics(opd)
        assert tags["prefix_source"] == "student" and tags["lambda"] == "1"
        assert tags["cell"] == "opd" and tags["curriculum"] == "false" and tags["git_sha"]
        # every response-length metric, training and evaluation; the headline at the top
        for key in ("train/response_length", "train/response_length_max",
                    "train/truncation_rate", "eval/overall/response_length_mean",
                    "eval/overall/response_length_median", "eval/overall/truncation_rate",
                    "eval/overall/avg_at_2", "eval/overall/pass_at_2", "eval/overall/entropy",
                    "train/total_flops", "avg_at_2", "pass_at_2", "greedy", "length",
                    "entropy"):
            assert key in metrics, key
        assert metrics["avg_at_2"] == metrics["eval/overall/avg_at_2"]
        assert not any(key.startswith("eval/tiny/") for key in metrics)  # one benchmark
        assert [step for step, _ in tracker.metric_history(opd, "train/loss")] == [1, 2]
        params = tracker.run_params(opd)
        assert params["train.objective"] == "opd" and params["train.steps"] == "2"
        # what tells the cells apart sorts first; folders are tags, not params
        logged = tracker.client.get_run(opd).data.params
        assert {k: logged[k] for k in ("cell", "prefix_source", "kl", "seed")} == {
            "cell": "opd", "prefix_source": "student", "kl": "reverse", "seed": "0"}
        assert "train.output_dir" not in logged and tags["train.output_dir"]
        assert tags["role"] == "cell"
        assert tracker.run_tags(children["teacher"].run_id)["role"] == "reference"
        assert not any(key.startswith("study.") for key in params)  # the run's own params
        versions = tracker.latest_model_versions("distill-tiny-")
    assert {v.name for v in versions} == {"distill-tiny-sft", "distill-tiny-opd"}
    assert "| opd |" in first["table"] and "| teacher |" in first["table"]


def test_the_same_study_again_reuses_its_finished_runs(prefect_server, study):
    _, _, first, second, *_ = study
    assert second["parent_run_id"] == first["parent_run_id"]
    assert second["teacher_products"] == []  # nothing was recomputed
    assert second["table"] == first["table"]
    with Tracker(first["tracking_uri"]) as tracker:
        assert len(tracker.child_runs(first["parent_run_id"])) == 4


def test_another_study_reuses_the_teacher_products(prefect_server, study):
    _, _, first, _, _, other = study
    assert first["teacher_products"][0]["rollouts"]["generated_tokens"] > 0
    assert other["teacher_products"][0]["rollouts"]["generated_tokens"] == 0
    assert (other["teacher_products"][0]["rollouts"]["directory"]
            == first["teacher_products"][0]["rollouts"]["directory"])
    assert other["parent_run_id"] != first["parent_run_id"]


def test_evaluation_samples_reach_the_store(prefect_server, study):
    root, _, first, *_ = study
    run_id = next(r["run_id"] for r in first["rows"] if r["cell"] == "sft")
    with RolloutStore(f"sqlite:///{root / 'distill_lab.db'}") as store:
        rows = store.samples(run_id, stage="eval/tiny")
    assert len(rows) == 4 * 2 and all(r.step == 2 for r in rows)


def test_nightly_evaluation_takes_the_newest_registered_students(prefect_server, study):
    _, _, first, _, (nightly, _), _ = study
    assert set(nightly) == {"distill-tiny-sft v2", "distill-tiny-opd v2"}  # two grid runs
    assert all("eval/tiny/avg_at_2" in r["metrics"] for r in nightly.values())
    (night,) = {r["night_run_id"] for r in nightly.values()}  # one parent run for the night
    with Tracker(first["tracking_uri"]) as tracker:
        children = {c.run_name: c.run_id for c in tracker.child_runs(night)}
        assert set(children) == {f"eval {label}" for label in nightly}
        assert tracker.run_tags(night)["night"] == datetime.now(UTC).strftime("%Y-%m-%d")
        assert tracker.run_metrics(night)["avg_at_2/distill-tiny-sft"] == nightly[
            "distill-tiny-sft v2"]["metrics"]["eval/overall/avg_at_2"]
        assert {"trend.md", "trend.png", "results.md"} <= {
            a.path for a in tracker.client.list_artifacts(night)}
        params = tracker.run_params(children["eval distill-tiny-sft v2"])
        assert params["eval.n"] == "2" and params["eval.ks"] == "[1,2]"
    markdown = _artifact("evaluation-nightly-evaluation")
    assert "## Trend" in markdown and "workflowType=machine_learning" in markdown


def test_the_nightly_evaluates_each_student_with_its_studys_settings(prefect_server, study):
    _, _, first, _, (nightly, _), _ = study
    with Tracker(first["tracking_uri"]) as tracker:
        for label, result in nightly.items():
            tags, params = tracker.run_tags(result["run_id"]), tracker.run_params(result["run_id"])
            assert tags["eval_settings"] == result["settings"] == "its study", label
            assert (params["eval.n"], params["eval.ks"], params["eval.limit"],
                    params["eval.max_new_tokens"], params["eval.seed"]) == (
                "2", "[1,2]", "4", "8", "0"), label  # the study's, not the flow's
            studied = tracker.run_metrics(tags["source_run"])
            for key in ("eval/overall/avg_at_2", "eval/overall/pass_at_2",
                        "eval/overall/greedy_accuracy"):  # the same weights, the same samples
                assert result["metrics"][key] == studied[key], (label, key)
        night = next(iter(nightly.values()))["night_run_id"]
        table = tracker.client.download_artifacts(night, "results.md")
        trend = tracker.client.download_artifacts(night, "trend.md")
        table, trend = Path(table).read_text(), Path(trend).read_text()
    row = _row(table, "distill-tiny-opd v2")
    assert (row["settings"], row["problems"], row["samples"], row["T"], row["cap"], row["k"]) == (
        "its study", "4", "2", "1.0", "8", "2")
    assert row["study"] == row["avg@k"] and (row["Δ"], row["agrees"]) == ("+0.000", "=")
    assert float(row["eval s"]) >= 0 and "FLOPs" not in table
    assert "4×2, T=1.0, cap 8" in trend  # the trend says how each value was measured
    head = "| model | settings | problems | samples | T | cap | k | avg@k | study | Δ | agrees |"
    assert table.startswith(head) and head in _artifact("evaluation-nightly-evaluation")


def test_a_second_nightly_on_one_day_gets_a_numbered_parent(prefect_server, study):
    _, _, first, _, nights, _ = study
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    with Tracker(first["tracking_uri"]) as tracker:
        names = [tracker.run_summary(next(iter(n.values()))["night_run_id"]).run_name
                 for n in nights]
    assert names == [f"nightly-evaluation {today}", f"nightly-evaluation {today} (2)"]


def test_the_nightly_log_names_each_model_and_its_settings(prefect_server, study):
    _, _, _, _, (nightly, _), _ = study
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    flow_run_id = next(iter(nightly.values()))["prefect_run_url"].rstrip("/").rsplit("/", 1)[1]
    with get_client(sync_client=True) as client:
        logs = [log.message for log in client.read_logs(log_filter=LogFilter(
            flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))]
    for model in ("distill-tiny-sft v2", "distill-tiny-opd v2"):
        assert any(line.startswith(f"evaluating {model} on tiny (4 problems × 2 samples, T=1.0, "
                                   "cap 8)") for line in logs), logs


def _row(table: str, first: str) -> dict[str, str]:
    """{column head: cell text} of the row of a Markdown table whose first cell is first."""
    lines = table.splitlines()
    heads = [h.strip() for h in lines[0].strip("|").split("|")]
    for line in lines[2:]:
        values = [v.strip() for v in line.strip("|").split("|")]
        if values[0] == first:
            return dict(zip(heads, values, strict=True))
    raise AssertionError(f"no row {first!r} in\n{table}")


def _artifact(key: str) -> str:
    """The newest Prefect markdown artifact of key."""
    return _newest_artifact(key).data


def _newest_artifact(key: str):
    """The newest Prefect artifact of key, with its description."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key])), sort=ArtifactSort.CREATED_DESC, limit=1)
    assert found, f"no Prefect artifact {key!r}"
    return found[0]


def test_a_study_trained_although_not_ready_says_so_as_a_warning(prefect_server, tmp_path):
    """readiness: warn trains past a shortfall (here: the training cap cuts every teacher
    rollout). The grid's readiness check logs it at WARNING, and the study's Prefect artifact
    leads with it, in its Markdown and its description."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    from flows.common import publish
    from tasks.prefect_tasks import readiness_task
    from tasks.readiness import not_ready_line
    from tasks.rollout import Sample, write_samples
    from tasks.runs import RunRef

    rollouts = tmp_path / "rollouts"
    rollouts.mkdir()
    write_samples([Sample(i, 0, (1,), (2, 3), "2 3", "length", 0) for i in range(4)],
                  rollouts / "samples.jsonl")
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with Tracker(tracking_uri) as tracker:
        parent = RunRef(tracking_uri, tracker.start_run("not-ready", "study"))
    config = StudyConfig(name="not-ready", readiness="warn")

    @flow
    def check() -> None:
        checked = readiness_task(config, [], [{"rollouts": {"directory": str(rollouts)}}],
                                 parent, f"sqlite:///{tmp_path / 'store.db'}")
        publish("study-not-ready", "Study not-ready", {}, "## Results",
                warning=not_ready_line(checked["readiness"]))

    state = check(return_state=True)
    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(
            any_=[state.state_details.flow_run_id])))
    warnings = [log.message for log in logs if log.level == logging.WARNING]
    assert any(m.startswith("readiness warning [training_cap]") for m in warnings), warnings
    assert "readiness: not ready: training_cap" in warnings
    assert any(m.startswith("⚠ NOT READY: training_cap.") for m in warnings)
    artifact = _newest_artifact("study-not-ready")
    assert artifact.data.startswith("**⚠ NOT READY: training_cap. It trained anyway (readiness: "
                                    "warn)")
    assert artifact.description.startswith("Study not-ready: ⚠ NOT READY: training_cap.")


def test_invalid_parameters_are_rejected_before_the_run(prefect_server):
    with pytest.raises(ValidationError, match="steps"):
        ExperimentConfig(steps=0)
    with pytest.raises(Exception, match="eval_ks"):
        grid_flow(config={"eval_n": 2, "eval_ks": [4]})


def test_yaml_config_errors_name_the_file_and_field(tmp_path):
    from tasks.configs import load_config

    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nstepz: 3\n")
    with pytest.raises(ValueError, match=r"bad.yaml: invalid ExperimentConfig: stepz"):
        load_config(path)
    path.write_text(json.dumps({"cells": ["sft", "nope"]}))
    with pytest.raises(ValueError, match="cells"):
        load_config(path)


def test_grid_attaches_its_report_and_the_cli_rebuilds_it(prefect_server, study, tmp_path,
                                                           monkeypatch):
    from flows.cli import main

    root, _, first, *_ = study
    page = first["report"]
    assert page and page.endswith("report.html")
    html = open(page, encoding="utf-8").read()
    assert html.count('<tr class="run">') == 4  # teacher, student (start), sft, opd
    assert html.count("<svg") >= 4
    with Tracker(first["tracking_uri"]) as tracker:
        artifacts = [a.path for a in tracker.client.list_artifacts(first["parent_run_id"])]
    assert "report.html" in artifacts and "results.md" in artifacts
    # the flow run's Prefect artifact (the newest: the longer study's): both tables and the
    # links into MLflow's training view
    longer = study[-1]
    markdown = _artifact("study-tiny")
    assert longer["table"] in markdown and longer["findings_table"] in markdown
    assert markdown.startswith("**⚠ NOT READY: ")  # readiness: warn on untrained tiny models
    assert longer["links"]["run"].endswith(f"/runs/{longer['parent_run_id']}?workflowType="
                                           "machine_learning")
    assert longer["links"]["run"] in markdown and "report.html" in markdown
    assert "compare-runs?runs=" in longer["links"]["compare"]
    with Tracker(longer["tracking_uri"]) as tracker:  # the cells, not the references
        cells = {c.run_id for c in tracker.child_runs(longer["parent_run_id"], role="cell")}
    assert len(cells) == 2 and all(run_id in longer["links"]["compare"] for run_id in cells)
    assert longer["links"]["compare"].count("%22") == 2 * 2 + 2  # 2 runs, 1 experiment
    assert "compareRunsMode=CHART" in longer["links"]["charts"]
    assert "viewStateShareKey=" in longer["links"]["with references"]
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "again.html"
    assert main(["--artifacts", str(root), "report", "--experiment", "tiny", "--run",
                 first["parent_run_id"], "--html", str(out)]) == 0
    assert out.read_text(encoding="utf-8").count('<tr class="run">') == 4


def test_rl_after_distill_starts_from_every_cell_of_the_study(prefect_server, study,
                                                              monkeypatch):
    from flows.rl import rl_after_distill_flow
    from tasks.configs import RLFlowConfig

    root, config, first, second, *_ = study
    monkeypatch.setenv("DISTILL_LAB_ARTIFACTS", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = rl_after_distill_flow(RLFlowConfig(
        study_experiment="tiny", parent_run_id=first["parent_run_id"],
        train_problems=config.train_problems, train_size=16, steps=2, prompts_per_step=2,
        group_size=2, max_new_tokens=8, benchmarks=config.benchmarks, eval_n=2, eval_ks=[1, 2],
        eval_limit=4, eval_max_new_tokens=8))
    assert [row["label"] for row in result["rows"]] == ["sft", "opd"]
    assert "| opd |" in result["table"] and "→" in result["table"]
    with Tracker(first["tracking_uri"]) as tracker:
        children = tracker.child_runs(result["parent_run_id"])
        sources = {tracker.run_tags(c.run_id)["source_run"] for c in children}
        cell_runs = {r["run_id"] for r in first["rows"] if r["cell"] in ("sft", "opd")}
        assert sources == cell_runs  # each RL run names the distillation run it started from
        history = tracker.metric_history(children[0].run_id, "eval/overall/avg_at_2")
        assert [step for step, _ in history] == [0, 2]  # before and after RL
        assert "rl/reward_mean" in tracker.run_metrics(children[0].run_id)
        study_artifacts = [a.path for a in tracker.client.list_artifacts(first["parent_run_id"])]
    assert "rl_results.md" in study_artifacts
    report = (Path(result["run_dir"]) / "report.html").read_text(encoding="utf-8")
    assert report.count('<tr class="rl">') == 2  # the study's report, rebuilt with RL rows
