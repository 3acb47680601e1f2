"""The findings' verdicts on a toy study whose answer is known, built from real evaluations of
real models: a trained model against an untrained one must come out `reproduced`; two cells
that differ only in their training seed but hold the same weights (as lr 0 would leave them),
evaluated on the study's paired samples, must come out `inconclusive`."""

from dataclasses import replace

import pytest

from tasks.configs import StudyConfig
from tasks.evaluate import EvalConfig, evaluate
from tasks.findings import findings_table, study_findings
from tasks.models import build_tiny_model, load_tokenizer
from tasks.study import EvalSample, Study, StudyRun


def _samples(result) -> tuple[EvalSample, ...]:
    return tuple(EvalSample(r.benchmark, f"{r.benchmark}/{r.problem_id}", r.sample_index,
                            r.correct, r.length, r.truncated, r.entropy, 10)
                 for r in result.samples)


def _run(label: str, seed: int, samples) -> StudyRun:
    return StudyRun(f"{label}-{seed}", label, "FINISHED",
                    {"cell": label, "objective": label, "seed": str(seed)},
                    evaluations=samples)


@pytest.fixture(scope="module")
def evaluations(bootstrapped, tmp_path_factory):
    """(teacher samples, untrained samples): 60 test problems × 4 at the study's eval seed."""
    artifacts, folder = bootstrapped.artifacts, tmp_path_factory.mktemp("toy")
    tokenizer = load_tokenizer(artifacts.teacher_dir)
    untrained = build_tiny_model(bootstrapped.config.teacher, tokenizer, seed=0)
    untrained.save_pretrained(folder / "untrained")
    tokenizer.save_pretrained(folder / "untrained")
    config = EvalConfig(model=str(artifacts.teacher_dir), n=4, ks=(1, 4), limit=60,
                        benchmarks=(f"default={artifacts.split('test')}",), max_new_tokens=48)
    teacher = evaluate(config, log=lambda _: None)
    other = evaluate(replace(config, model=str(folder / "untrained")), log=lambda _: None)
    return _samples(teacher), _samples(other)


def _claim(findings, claim_id: str):
    return next(f for f in findings if f.id == claim_id)


STUDY = StudyConfig(cells=["sft", "offline_rl"], seeds=[0, 1, 2], steps=10, eval_ks=[1, 4],
                    baseline="sft", evaluate_references=False)


@pytest.mark.slow
def test_a_known_effect_is_reproduced(evaluations):
    trained, untrained = evaluations  # "offline_rl" is the trained model, "sft" is not
    runs = [_run("offline_rl", s, trained) for s in STUDY.seeds]
    runs += [_run("sft", s, untrained) for s in STUDY.seeds]
    c1 = _claim(study_findings(Study("toy", "", None, tuple(runs)), STUDY), "C1")
    avg = next(e for e in c1.effects if e.metric == "avg_at_4")
    # Margin: the teacher answers about three in four, the untrained model none; the effect's
    # lower bound must clear 0 by more than ten standard errors of 240 paired samples.
    assert avg.verdict == "reproduced" and avg.low > 0.3, findings_table([c1])
    assert c1.verdict == "reproduced", findings_table([c1])


@pytest.mark.slow
def test_the_same_weights_under_different_training_seeds_are_inconclusive(evaluations):
    trained, _ = evaluations
    runs = [_run(label, s, trained) for label in ("offline_rl", "sft") for s in STUDY.seeds]
    c1 = _claim(study_findings(Study("toy", "", None, tuple(runs)), STUDY), "C1")
    assert all(e.verdict in (None, "inconclusive") for e in c1.effects)
    assert c1.verdict == "inconclusive"
    assert all(e.low <= 0 <= e.high for e in c1.effects)


def test_claims_without_their_runs_are_not_tested():
    runs = (_run("sft", 0, ()),)
    found = study_findings(Study("toy", "", None, runs),
                           StudyConfig(cells=["sft"], baseline="sft",
                                       evaluate_references=False))
    assert [f.id for f in found] == ["C0", "C1", "C2", "C3", "C4", "C5"]
    assert [f.verdict for f in found] == [None] * 6
    assert all(f.note.startswith("not tested") for f in found)


def _toy_run(label: str, seed: int, correct: bool, greedy: bool | None) -> StudyRun:
    """Ten problems × four samples all graded ``correct``; each problem's greedy response
    graded ``greedy`` (None: no greedy rows, as in runs from before they were stored)."""
    samples = tuple(EvalSample("b", f"b/{p}", i, correct, 10 + p, False, 0.5, STUDY.steps)
                    for p in range(10) for i in range(4))
    greedy_rows = () if greedy is None else tuple(
        EvalSample("b", f"b/{p}", 0, greedy, 10, False, None, STUDY.steps) for p in range(10))
    return StudyRun(f"{label}-{seed}", label, "FINISHED",
                    {"cell": label, "objective": label, "seed": str(seed)},
                    evaluations=samples, greedy=greedy_rows)


def test_greedy_accuracy_is_reported_beside_avg_at_k_without_a_verdict():
    """A sharpening cell: offline_rl right on every sample, sft on none, but greedily the other
    way round. The greedy effect shows it (−1) and does not enter the claim's verdict."""
    def study(with_greedy: bool) -> Study:
        return Study("toy", "", None, tuple(
            [_toy_run("offline_rl", s, True, False if with_greedy else None) for s in (0, 1)]
            + [_toy_run("sft", s, False, True if with_greedy else None) for s in (0, 1)]))

    c1 = _claim(study_findings(study(True), STUDY), "C1")
    greedy = [e for e in c1.effects if e.metric == "greedy_accuracy"]
    assert [(e.name, e.estimate, e.low, e.high, e.verdict, e.predicted) for e in greedy] == [
        ("greedy_accuracy: offline_rl − sft", -1.0, -1.0, -1.0, None, None)]
    avg = next(e for e in c1.effects if e.metric == "avg_at_4")
    assert (avg.estimate, avg.verdict) == (1.0, "reproduced")
    without = _claim(study_findings(study(False), STUDY), "C1")
    assert [e for e in c1.effects if e.metric != "greedy_accuracy"] == list(without.effects)
    assert c1.verdict == without.verdict
    assert "greedy_accuracy: offline_rl − sft | -1.000 [-1.000, -1.000] | – |" in findings_table(
        [c1])


def test_distillation_teaches_when_every_grid_cell_beats_the_starting_student():
    """C0 on toy runs: the teacher and both cells right on every sample, the starting student
    on none: every cell's Avg@k effect is +1 and reproduced, and the note says the best cell
    closes the whole gap. A cell left where the student started makes the claim unresolved."""
    config = StudyConfig(cells=["sft", "opd"], seeds=[0, 1], steps=STUDY.steps, eval_ks=[1, 4])
    references = [_toy_run("teacher", 0, True, True), _toy_run("student (start)", 0, False, False)]

    def c0(opd_correct: bool):
        runs = references + [_toy_run(cell, s, correct, correct) for s in (0, 1)
                             for cell, correct in (("sft", True), ("opd", opd_correct))]
        return _claim(study_findings(Study("toy", "", None, tuple(runs)), config), "C0")

    taught = c0(True)
    avg = [e for e in taught.effects if e.metric == "avg_at_4"]
    assert [(e.name, e.estimate, e.verdict) for e in avg] == [
        ("avg_at_4: sft − student (start)", 1.0, "reproduced"),
        ("avg_at_4: opd − student (start)", 1.0, "reproduced")]
    assert taught.verdict == "reproduced"
    assert "closes 100% of the teacher − student gap" in taught.note
    assert [e.verdict for e in taught.effects if e.metric == "greedy_accuracy"] == [None, None]
    stuck = c0(False)
    assert next(e for e in stuck.effects if e.name.startswith("avg_at_4: opd")).estimate == 0
    assert stuck.verdict == "inconclusive"
