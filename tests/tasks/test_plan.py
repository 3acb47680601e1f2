"""A study's plan: which runs, evaluated when; and the study form's refusals of bad input,
each naming the field, before anything trains."""

import dataclasses

import pytest

import distill_core as dc
from tasks.configs import StudyConfig
from tasks.plan import Cell, cells, eval_steps, grpo_sources
from tasks.readiness import assess, curriculum_min_entropy
from tasks.rollout import Sample
from tasks.study import EvalSample


def test_a_study_plans_long_horizons_and_the_curriculum_against_its_top_rung():
    config = StudyConfig(cells=["dagger", "opd"], lambdas=[0.25], lambda_prefixes=["student"],
                         steps=100, long_steps=300, long_cells=["opd", "student:0.25"],
                         curriculum=[32, 64, 128], compare_curriculum=True,
                         curriculum_cells=["opd"], eval_every=50)
    labels = [c.label for c in cells(config)]
    assert labels == ["dagger", "opd 300 steps", "student:0.25 300 steps", "opd +curriculum",
                      "opd cap 128"]
    by_label = {c.label: c for c in cells(config)}
    assert eval_steps(config, by_label["dagger"]) == [50, 100]
    assert eval_steps(config, by_label["opd 300 steps"]) == [50, 100, 150, 200, 250, 300]
    rows = [{"cell": label, "seed": 0} for label in labels]
    assert [c.label for c, _ in grpo_sources(config.model_copy(
        update={"rl_cells": ["dagger", "opd"]}), cells(config), rows)] == [
        "dagger", "opd 300 steps"]


def test_a_cell_parses_its_objective_once_and_compares_by_value():
    cell = Cell("student:0.50")
    assert cell.objective == dc.Objective("student", 0.5) and cell.label == "student:0.5"
    assert Cell("teacher:0") == Cell("sft") and Cell("sft").label == "sft"
    config = StudyConfig(cells=["dagger", "student:0.5"])
    rows = [{"cell": c.label, "seed": 0} for c in cells(config)]
    sources = grpo_sources(config.model_copy(update={"rl_cells": ["student:0.50"]}),
                           cells(config), rows)
    assert [c.label for c, _ in sources] == ["student:0.5"]
    with pytest.raises(ValueError, match="objective='sfft'"):
        Cell("sfft")


@pytest.mark.parametrize("fields, message", [
    ({"seeds": [0, 1, 0]}, "seeds=[0, 1, 0]: give distinct training seeds"),
    ({"seeds": []}, "give distinct training seeds"),
    ({"baseline": "opd"}, "baseline='opd' is not a run of this study"),
    ({"baseline": "teacher", "evaluate_references": False}, "needs evaluate_references"),
    ({"eval_every": 500}, "eval_every=500 is longer than the run"),
    ({"long_cells": ["sft"]}, "long_cells need long_steps > steps"),
    ({"long_cells": ["opd"], "long_steps": 100}, "not among the study's cells"),
    ({"rl_cells": ["student:0.5"]}, "rl_cells=['student:0.5']: not among"),
    ({"compare_curriculum": True}, "compare_curriculum needs a curriculum"),
    ({"cells": ["sfft"]}, "sfft"),
    ({"min_entropy_fraction": 0.5, "evaluate_references": False, "baseline": "sft"},
     "min_entropy_fraction needs"),
])
def test_bad_studies_are_refused_naming_the_field(fields, message):
    base = {"cells": ["sft", "dagger"], "steps": 50}
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        StudyConfig(**{**base, **fields})


def _eval(length: int, truncated: bool, correct_of: int, problems: int = 40, n: int = 4):
    return [EvalSample("b", f"b/{p}", i, (p + i) % correct_of == 0, length, truncated, 0.1, 0)
            for p in range(problems) for i in range(n)]


def _rollouts(lengths: list[int], cap: int) -> list[Sample]:
    return [Sample(i, 0, (1, 2), tuple(range(length)), "", "length" if length >= cap else "stop")
            for i, length in enumerate(lengths)]


def test_readiness_names_each_shortfall_and_passes_a_ready_study():
    config = StudyConfig(cells=["sft"], seeds=[0, 1, 2], eval_n=4, eval_max_new_tokens=96,
                         max_new_tokens=64, curriculum=[16, 32, 64], min_effect=0.3)
    ready = assess(config, _eval(40, False, 1), _eval(50, False, 2),
                   _rollouts([20, 30, 40, 70], 64), teacher_entropy=0.2)
    assert ready.ready, ready.shortfalls
    unready = assess(config.model_copy(update={"min_effect": 0.01, "eval_max_new_tokens": 50}),
                     _eval(40, True, 1), _eval(50, False, 2),
                     _rollouts([8, 10, 12, 14], 12), teacher_entropy=0.01)
    assert set(unready.shortfalls) == {"teacher_entropy", "eval_cap", "training_cap",
                                       "curriculum_rungs", "interval"}
    assert "below 0.05" in unready.shortfalls["teacher_entropy"]
    assert unready.summary().startswith("not ready: teacher_entropy")
    assert not unready.blocking  # each of these can be waived by readiness: warn


def test_readiness_blocks_a_teacher_that_is_not_clearly_ahead():
    """Teacher avg@1 0.5 (every other sample right) against 0.33: a lead of 0.17 < 0.25."""
    config = StudyConfig(cells=["sft"], eval_n=4, eval_max_new_tokens=96, min_effect=0.5)
    close = assess(config, _eval(40, False, 2, n=6), _eval(40, False, 3, n=6), [],
                   teacher_entropy=0.2)
    assert close.measured["teacher_lead"] == pytest.approx(0.5 - 1 / 3)
    assert close.blocking == ["teacher_lead"]
    assert "only +0.167 above the starting student's (0.333)" in close.shortfalls["teacher_lead"]
    far = assess(config, _eval(40, False, 1, n=6), _eval(40, False, 3, n=6), [],
                 teacher_entropy=0.2)
    assert "teacher_lead" not in far.shortfalls and far.measured["teacher_lead"] > 0.25
    waived = assess(config.model_copy(update={"min_teacher_lead": 0.1}),
                    _eval(40, False, 2, n=6), _eval(40, False, 3, n=6), [], teacher_entropy=0.2)
    assert "teacher_lead" not in waived.shortfalls


def test_h_min_is_given_or_a_fraction_of_the_starting_students_entropy():
    references = {"student (start)": {"metrics": {"eval/overall/entropy": 0.8}}}
    config = StudyConfig(cells=["sft"], min_entropy=0.3)
    measured, said = {}, []
    assert curriculum_min_entropy(config, references, measured, said.append) == 0.3
    assert measured == {} and said == []
    derived = config.model_copy(update={"min_entropy_fraction": 0.5})
    assert curriculum_min_entropy(derived, references, measured, said.append) == 0.4
    assert measured == {"min_entropy_derived": 0.4}
    assert said == ["curriculum gate: H_min = 0.5 × the starting student's entropy 0.8000 = "
                    "0.4000 nats/token"]


# ----------------------------------------------------------------------------- the nightly


def _never_resolved() -> tuple[str, ...]:
    raise AssertionError("the flow's benchmarks were resolved for a student that has its own")


def test_a_runs_recorded_evaluation_reads_back_as_the_same_procedure(tmp_path):
    from tasks.configs import EvaluateFlowConfig
    from tasks.evaluate import EvalConfig
    from tasks.plan import FROM_STUDY, nightly_eval_config, recorded_eval_knobs
    from tasks.tracking import flatten_config

    bench = tmp_path / "tiny.jsonl"
    bench.write_text("")
    studied = EvalConfig("<the trained student>", (f"tiny={bench}",), n=3, ks=(1, 3),
                         temperature=0.7, max_new_tokens=24, limit=None, seed=5,
                         prompt_template="boxed", greedy=False, batch_size=7)
    params = {**flatten_config({"eval": studied}), "train.steps": "2"}  # as a study logs them
    flow = EvaluateFlowConfig(benchmarks=["other.jsonl"])
    evaluation, source = nightly_eval_config(flow, "registry/opd", _never_resolved,
                                             recorded_eval_knobs(params))
    assert evaluation == dataclasses.replace(studied, model="registry/opd")
    assert source == FROM_STUDY


def test_without_recorded_settings_the_nightly_uses_its_own_and_says_so(tmp_path):
    from tasks.configs import EvaluateFlowConfig
    from tasks.plan import FROM_FLOW, flow_eval_config, nightly_eval_config

    flow = EvaluateFlowConfig(n=2, ks=[1, 2])
    given = flow.model_copy(update={"models": ["some/model"]})
    assert nightly_eval_config(given, "m", lambda: ("b=b.jsonl",), {}) == (
        flow_eval_config(given, "m", ("b=b.jsonl",)), f"{FROM_FLOW} (given model)")
    evaluation, source = nightly_eval_config(flow, "m", lambda: ("b=b.jsonl",),
                                             {"n": 3, "benchmarks": ("gone=/no/such.jsonl",)})
    assert evaluation.n == 3 and evaluation.benchmarks == ("b=b.jsonl",)
    assert "/no/such.jsonl not here" in source  # not comparable, and the table says why


def test_a_second_night_run_on_one_date_gets_a_number():
    from tasks.plan import night_name

    assert night_name("nightly 2026-12-07", ["nightly 2026-12-06"]) == "nightly 2026-12-07"
    assert night_name("nightly 2026-12-07", ["nightly 2026-12-07"]) == "nightly 2026-12-07 (2)"
    assert night_name("nightly 2026-12-07", ["nightly 2026-12-07", "nightly 2026-12-07 (2)"]
                      ) == "nightly 2026-12-07 (3)"
