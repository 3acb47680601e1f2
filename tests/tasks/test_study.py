"""tasks.study over a real SQLite MLflow and a real rollout store: the three ways to name a study,
typed cell tags (a missing seed is 0), params, metrics, histories on request, the store's
per-sample evaluations by seed, follow-up (RL) runs and example responses."""

import dataclasses

import pytest

from tasks.store import RolloutStore, SampleRecord
from tasks.study import newest_grid, read_evaluations, read_study, responses, samples_by_seed
from tasks.tables import LEGEND
from tasks.tracking import Tracker

pytestmark = pytest.mark.slow  # its fixture logs a study to a fresh MLflow database

EXPERIMENT = "study-test"


def add_evaluation(store: RolloutStore, run_id: str, step: int, correct: list[bool],
                   greedy: list[bool] = ()) -> None:
    """One sample per problem (stage eval/gsm8k) and, when given, one greedy response per
    problem (stage eval_greedy/gsm8k), as tasks.evaluate stores them."""
    store.ensure_run(run_id, run_id, "evaluate")
    store.add_prompts(run_id, [(f"gsm8k/{i}", f"problem {i}", "1") for i in range(len(correct))])
    store.add_samples(run_id, "eval/gsm8k", step, [
        SampleRecord(f"gsm8k/{i}", 0, f"answer {i}", 10 + i, i == 0, c, 0.5)
        for i, c in enumerate(correct)])
    store.add_samples(run_id, "eval_greedy/gsm8k", step, [
        SampleRecord(f"gsm8k/{i}", 0, f"greedy {i}", 7, False, c) for i, c in enumerate(greedy)])


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """A grid: the starting student, sft at seeds 0 (untagged) and 1, a λ mix; one RL run."""
    tmp_path = tmp_path_factory.mktemp("study")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = RolloutStore(f"sqlite:///{tmp_path / 'distill_lab.db'}")
    with Tracker(uri, artifacts_dir=tmp_path) as tracker:
        parent = tracker.start_run(EXPERIMENT, "grid", tags={"study": "grid"})
        tracker.log_params(parent, {"experiment": {"eval_ks": [1, 4]}})
        ids = {"student": tracker.start_run(EXPERIMENT, "student (start)", parent_run_id=parent,
                                            tags={"cell": "student (start)",
                                                  "reference": "true"})}
        for name, tags in (("sft", {}), ("sft seed 1", {"seed": "1"}),
                           ("teacher:0.5", {"objective": "teacher:0.5", "lambda": "0.5"})):
            cell = name.split()[0]
            ids[name] = tracker.start_run(EXPERIMENT, cell, parent_run_id=parent, tags={
                "cell": cell, "objective": cell, "prefix_source": "teacher",
                "lambda": "0", "curriculum": "false", **tags})
            tracker.log_params(ids[name], {"train": {"output_dir": f"/runs/{name}"}})
            for step in (1, 2):
                tracker.log_metrics(ids[name], {"train/loss": 1.0 / step}, step)
        tracker.log_metrics(ids["sft"], {"eval/overall/avg_at_4": 0.5}, 2)
        ids["rl"] = tracker.start_run("rl", "grpo sft", tags={"source_run": ids["sft"]})
        for run_id in ids.values():
            tracker.end_run(run_id)
        tracker.end_run(parent)
    add_evaluation(store, ids["student"], 0, [False, False, True])
    add_evaluation(store, ids["sft"], 1, [False, False, False])  # an earlier evaluation
    add_evaluation(store, ids["sft"], 2, [True, False, True], greedy=[False, False, True])
    add_evaluation(store, ids["sft seed 1"], 2, [True, True, False])
    add_evaluation(store, ids["rl"], 0, [True, True, True])
    with Tracker(uri, artifacts_dir=tmp_path) as tracker:
        yield tracker, store, parent, ids
    store.close()


def test_a_grid_reads_typed_runs(grid):
    tracker, store, parent, ids = grid
    study = read_study(tracker, parent_run_id=parent, store=store, history_keys=["train/loss"])
    assert study.parent.run_id == parent and study.eval_ks == [1, 4]
    assert [r.label for r in study.runs] == ["student (start)", "sft", "sft", "teacher:0.5"]
    student, sft0, sft1, mix = study.runs
    assert (student.reference, student.trained, student.group, student.seed) == (
        True, False, "reference", 0)
    assert (sft0.seed, sft1.seed, sft0.group, mix.group) == (0, 1, "grid cell", "λ mix")
    assert (mix.reverse_weight, mix.prefix_source, mix.curriculum) == (0.5, "teacher", False)
    assert sft0.params["train.output_dir"] == "/runs/sft"
    assert sft0.metric("eval/overall/avg_at_4") == 0.5 and mix.metric("eval/x/y") is None
    assert sft0.history("train/loss") == ((1, 1.0), (2, 0.5)) and student.history("x") == ()
    patterned = read_study(tracker, run_ids=[ids["sft"]], history_keys=["eval/*"]).runs[0]
    assert set(patterned.histories) == {"eval/overall/avg_at_4"}  # a prefix, not train/loss
    assert study.k == 4 and study.store_url == store.url
    assert list(study.cells()) == ["student (start)", "sft", "teacher:0.5"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        sft0.status = "FAILED"
    with pytest.raises(TypeError):
        sft0.tags["seed"] = "3"


def test_evaluations_are_per_sample_and_grouped_by_seed(grid):
    tracker, store, parent, ids = grid
    study = read_study(tracker, parent_run_id=parent, store=store)
    sft0 = study.runs[1]
    assert sft0.evaluated_steps() == [1, 2]
    first = sft0.evaluations[0]
    assert (first.benchmark, first.problem_id, first.sample_index, first.correct, first.length,
            first.truncated, first.entropy, first.step) == (
        "gsm8k", "gsm8k/0", 0, False, 10, True, 0.5, 1)
    by_seed = samples_by_seed(study.cells()["sft"])
    assert sorted(by_seed) == [0, 1]
    assert [s.correct for s in by_seed[0]] == [True, False, True]  # the last step only
    assert samples_by_seed(study.cells()["teacher:0.5"]) == {}  # no rows in the store
    assert len(sft0.evaluations) == 6  # the greedy responses are not among the samples
    greedy = samples_by_seed(study.cells()["sft"], greedy=True)
    assert list(greedy) == [0]  # seed 1 has no greedy rows
    assert [(s.problem_id, s.correct, s.length, s.step) for s in greedy[0]] == [
        ("gsm8k/0", False, 7, 2), ("gsm8k/1", False, 7, 2), ("gsm8k/2", True, 7, 2)]
    assert [s.benchmark for s in read_evaluations(store, ids["sft"], greedy=True)] == ["gsm8k"] * 3
    assert read_study(tracker, parent_run_id=parent).runs[1].evaluations == ()  # no store


def test_followups_and_responses(grid):
    from tasks.study import followups

    tracker, store, parent, ids = grid
    study = read_study(tracker, parent_run_id=parent, store=store)
    (rl,) = followups(tracker, study.runs[1], store)
    assert rl.run_id == ids["rl"] and len(rl.evaluations) == 3
    shown = responses(store, study.runs[1], per_verdict=1)
    assert [(r.problem_id, r.correct, r.problem, r.step) for r in shown] == [
        ("gsm8k/0", True, "problem 0", 2), ("gsm8k/1", False, "problem 1", 2)]


def test_an_experiment_selects_its_newest_grid_or_all_its_runs(grid):
    tracker, _, parent, ids = grid
    assert newest_grid(tracker, EXPERIMENT) == parent
    assert read_study(tracker, experiment=EXPERIMENT).parent.run_id == parent
    no_grid = read_study(tracker, experiment="rl")
    assert no_grid.parent is None and [r.run_id for r in no_grid.runs] == [ids["rl"]]
    chosen = read_study(tracker, run_ids=[ids["sft seed 1"]])
    assert chosen.parent is None and chosen.runs[0].seed == 1
    assert newest_grid(tracker, "absent") is None
    with pytest.raises(ValueError, match="no MLflow experiment 'absent'"):
        read_study(tracker, experiment="absent")
    with pytest.raises(ValueError, match="run 'nope' is not in"):
        read_study(tracker, parent_run_id="nope")
    with pytest.raises(ValueError, match="say which study"):
        read_study(tracker)


def test_a_seed_tag_that_is_not_an_integer_is_named(grid):
    tracker = grid[0]
    run_id = tracker.start_run("seeds", "sft", tags={"cell": "sft", "seed": "one"})
    tracker.end_run(run_id)
    (run,) = read_study(tracker, run_ids=[run_id]).runs
    with pytest.raises(ValueError, match=f"run {run_id} \\(sft\\) has tag seed='one'"):
        run.seed  # noqa: B018


def test_grid_report_tables_every_child_at_the_grids_ks(grid):
    from flows.cli import grid_report  # its one caller's module

    tracker, _, parent, _ = grid
    table = grid_report(tracker.tracking_uri, EXPERIMENT)
    lines = table.splitlines()
    assert lines[0] == f"grid run {parent}"
    assert lines[1].startswith("| cell | avg@4 | pass@4 | avg@1 |")
    assert [line.split(" | ")[0] for line in lines[3:7]] == [
        "| student (start)", "| sft", "| sft", "| teacher:0.5"]
    assert lines[4].split(" | ")[1] == "0.500"
    assert lines[7:] == ["", LEGEND]  # what greedy and gold NLL mean, under the table
