"""Evaluation: metrics on hand-built per-sample tables, entropy of models with known
distributions, bad configurations, and the bootstrapped teacher against an untrained student
through the whole procedure (real generate, the real grader, a real SQLite store)."""

import dataclasses
import json
import math

import pytest

from tasks.data import Problem, write_problems
from tasks.entropy import entropy_probe, response_entropies
from tasks.eval_metrics import EVAL_METRICS
from tasks.evaluate import (
    EVAL_VERSION,
    EvalConfig,
    SampleResult,
    check_comparable,
    evaluate,
    read_result,
    resolve_benchmarks,
    summarise_samples,
)
from tasks.grader import Grader
from tasks.models import build_tiny_model, load_model, load_tokenizer
from tasks.rollout import SamplingConfig, generate_hf, render_prompts
from tasks.store import RolloutStore


def row(problem, index, correct, length=10, truncated=False, entropy=1.0, response="x",
        benchmark="b"):
    return SampleResult(benchmark, problem, index, response, "1" if correct else None, correct,
                        correct, correct, length, truncated, entropy)


# ----------------------------------------------------------------------------- metrics


def test_avg_and_pass_at_k_on_a_hand_built_table():
    # p1: T F T F -> avg@1 1, avg@4 .5, pass@1 .5, pass@2 1 - C(2,2)/C(4,2) = 5/6
    # p2: F F F T -> avg@1 0, avg@4 .25, pass@1 .25, pass@2 1 - C(3,2)/C(4,2) = 1/2
    flags = {"p1": [True, False, True, False], "p2": [False, False, False, True]}
    rows = [row(p, i, c) for p, values in flags.items() for i, c in enumerate(values)]
    metrics = summarise_samples(rows[::-1], ks=[1, 2, 4])  # order of rows does not matter
    assert metrics["avg_at_1"] == pytest.approx(0.5)
    assert metrics["avg_at_2"] == pytest.approx((0.5 + 0.0) / 2)
    assert metrics["avg_at_4"] == pytest.approx(0.375)
    assert metrics["pass_at_1"] == pytest.approx(0.375)
    assert metrics["pass_at_2"] == pytest.approx((5 / 6 + 1 / 2) / 2)
    assert metrics["pass_at_4"] == pytest.approx(1.0)
    assert metrics["strict_accuracy"] == pytest.approx(3 / 8)
    assert metrics["problems"] == 2 and metrics["samples"] == 8


def test_length_truncation_and_token_weighted_entropy():
    rows = [row("p", 0, True, length=10, entropy=1.0),
            row("p", 1, False, length=30, entropy=2.0, truncated=True),
            row("p", 2, False, length=0, entropy=None, response=""),
            row("p", 3, False, length=1, entropy=0.0, response=" ")]
    metrics = summarise_samples(rows, ks=[4])
    assert metrics["response_length_mean"] == pytest.approx(41 / 4)
    assert metrics["response_length_median"] == pytest.approx(5.5)
    assert metrics["truncation_rate"] == pytest.approx(0.25)
    assert metrics["entropy"] == pytest.approx((10 * 1.0 + 30 * 2.0 + 1 * 0.0) / 41)
    assert metrics["empty_responses"] == 2


def test_same_problem_id_in_two_benchmarks_is_two_problems():
    rows = [row("p", 0, True, benchmark="a"), row("p", 0, False, benchmark="b")]
    assert summarise_samples(rows, ks=[1])["problems"] == 2


def greedy_row(problem, correct, benchmark="b"):
    return dataclasses.replace(row(problem, 0, correct, length=99, entropy=None,
                                   benchmark=benchmark), greedy=True)


def test_greedy_rows_count_for_greedy_accuracy_and_nothing_else():
    rows = [row("p", 0, True), row("p", 1, False), row("q", 0, False), row("q", 1, False)]
    plain = summarise_samples(rows, ks=[1, 2])
    with_greedy = summarise_samples([greedy_row("p", False), *rows, greedy_row("q", True)],
                                    ks=[1, 2])
    assert "greedy_accuracy" not in plain
    assert with_greedy == plain | {"greedy_accuracy": 0.5}


def test_two_greedy_rows_for_one_problem_are_refused():
    rows = [row("p", 0, True), greedy_row("p", True), greedy_row("p", False)]
    with pytest.raises(ValueError, match="exactly one greedy response"):
        summarise_samples(rows, ks=[1])


def test_uneven_sample_counts_are_refused():
    with pytest.raises(ValueError, match="same n"):
        summarise_samples([row("p", 0, True), row("q", 0, True), row("q", 1, True)], ks=[1])


# ----------------------------------------------------------------------------- configuration


def test_k_larger_than_n_is_a_configuration_error():
    with pytest.raises(ValueError, match="k=8 > n=4"):
        EvalConfig(model="m", n=4, ks=(1, 8))


def test_no_benchmarks_and_greedy_with_many_samples_are_refused():
    with pytest.raises(ValueError, match="benchmarks is empty"):
        EvalConfig(model="m", benchmarks=())
    with pytest.raises(ValueError, match="greedy samples would all be identical"):
        EvalConfig(model="m", temperature=0.0, n=4)


def test_empty_benchmark_file_is_refused(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        resolve_benchmarks([str(empty)])


def test_benchmark_without_answers_names_the_line_and_field(tmp_path):
    path = tmp_path / "gsm.jsonl"
    path.write_text(json.dumps({"question": "1+1?", "answer": "2 #### 2"}) + "\n"
                    + json.dumps({"question": "2+2?"}) + "\n")
    with pytest.raises(ValueError, match=r"gsm.jsonl.*line 2.*answer"):
        resolve_benchmarks([f"gsm8k={path}"])


def test_missing_benchmark_file_says_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="'default', a"):
        resolve_benchmarks([str(tmp_path / "nope.jsonl")])


def test_results_of_different_procedures_are_not_comparable():
    check_comparable({"a": {"grader_version": "1"}, "b": {"grader_version": "1"}})
    with pytest.raises(ValueError, match="differing: prompt_template"):
        check_comparable({"a": {"prompt_template": "bare"}, "b": {"prompt_template": "boxed"}})


# ----------------------------------------------------------------------------- entropy


@pytest.fixture
def constant_model(fixed_logits_model):
    """A Llama whose next-token distribution ignores the input: uniform over V, or (peak_token)
    logit 60 on one token (entropy ~ 0)."""
    def build(tokenizer, peak_token: int | None):
        return fixed_logits_model(tokenizer, {} if peak_token is None else {peak_token: 60.0})
    return build


@pytest.fixture(scope="module")
def tokenizer(tiny_pair):
    return load_tokenizer(tiny_pair[1])


def test_uniform_model_has_entropy_log_v(constant_model, tokenizer, tiny_problems):
    model = constant_model(tokenizer, peak_token=None)
    prompts = render_prompts(tokenizer, tiny_problems["test"][:4])
    entropy = entropy_probe(model, tokenizer, prompts, max_new_tokens=8, seed=0)
    assert entropy == pytest.approx(math.log(len(tokenizer)), abs=1e-4)


def test_one_token_model_has_entropy_zero(constant_model, tokenizer, tiny_problems):
    peak = tokenizer.convert_tokens_to_ids("7")
    model = constant_model(tokenizer, peak_token=peak)
    prompts = render_prompts(tokenizer, tiny_problems["test"][:4])
    samples = generate_hf(model, tokenizer, prompts, SamplingConfig(max_new_tokens=8, seed=0))
    assert all(s.response_ids == (peak,) * 8 for s in samples)
    entropies = response_entropies(model, samples, tokenizer.pad_token_id, batch_size=3)
    assert all(h is not None and 0 <= h < 1e-6 for h in entropies)


def test_a_model_that_emits_nothing_is_graded_incorrect_and_counted(tmp_path, constant_model,
                                                                     tokenizer, tiny_problems):
    model = constant_model(tokenizer, peak_token=tokenizer.eos_token_id)
    model.save_pretrained(tmp_path / "silent")
    tokenizer.save_pretrained(tmp_path / "silent")
    bench = write_problems(tiny_problems["test"][:5], tmp_path / "bench.jsonl")
    result = evaluate(EvalConfig(model=str(tmp_path / "silent"), benchmarks=(str(bench),), n=2,
                                 ks=(1, 2), max_new_tokens=8), log=lambda _: None)
    metrics = result.metrics
    assert metrics["eval/bench/empty_responses"] == 10
    assert metrics["eval/bench/avg_at_2"] == 0 and metrics["eval/bench/pass_at_2"] == 0
    assert metrics["eval/bench/response_length_mean"] == 1  # the EOS alone
    assert all(not r.correct and r.extracted_answer is None for r in result.samples)


# ----------------------------------------------------------------------------- greedy and gold NLL


SEVENS = [Problem("a", "Say 7 four times.", "7777", "7 7 7 7\n\\boxed{7777}"),
          Problem("b", "Write 7777.", "7777", "\\boxed{7777}"),
          Problem("c", "What is 2 + 3?", "5", "2+3=5\n\\boxed{5}"),
          Problem("d", "What is 6 + 6?", "12", "6+6=12\n\\boxed{12}")]
NO_SOLUTIONS = [Problem("e", "Say 7 four times.", "7777"), Problem("f", "What is 1 + 2?", "3")]


@pytest.fixture(scope="module")
def sevens_evaluation(tmp_path_factory, fixed_logits_model, tokenizer):
    """A model that writes "7" with probability ~0.9 at every position (logit 8, every other
    token 0), evaluated on a benchmark with worked solutions and one without: its greedy answer
    is always 7777, so exactly the problems whose answer is 7777 are right greedily."""
    root = tmp_path_factory.mktemp("sevens")
    model = fixed_logits_model(tokenizer, {tokenizer.convert_tokens_to_ids("7"): 8.0})
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    benchmarks = (f"sevens={write_problems(SEVENS, root / 'sevens.jsonl')}",
                  f"bare={write_problems(NO_SOLUTIONS, root / 'bare.jsonl')}")
    config = EvalConfig(model=str(root / "model"), benchmarks=benchmarks, n=4, ks=(1, 4),
                        max_new_tokens=4, answer_rule="flexible")
    store_url = f"sqlite:///{root / 'store.db'}"
    result = evaluate(config, output_dir=root / "out", store_url=store_url, run_id="sevens",
                      log=lambda _: None)
    return result, store_url


def test_greedy_is_on_by_default_and_graded_per_problem(sevens_evaluation):
    result, _ = sevens_evaluation
    assert EvalConfig(model="m").greedy and result.identity["eval_version"] == EVAL_VERSION
    assert {(r.benchmark, r.problem_id): r.correct for r in result.greedy} == {
        ("sevens", "a"): True, ("sevens", "b"): True, ("sevens", "c"): False,
        ("sevens", "d"): False, ("bare", "e"): True, ("bare", "f"): False}
    assert all(r.response == "7777" and r.length == 4 and r.greedy for r in result.greedy)
    assert result.metrics["eval/sevens/greedy_accuracy"] == 0.5
    assert result.metrics["eval/bare/greedy_accuracy"] == 0.5
    assert result.metrics["eval/overall/greedy_accuracy"] == 0.5


def test_evaluation_returns_exactly_the_metrics_of_the_table(sevens_evaluation):
    """Every metric evaluation returns has its entry in tasks.eval_metrics, spelled the same, and
    every entry is returned (at each k): what the tables and the report read is produced."""
    overall = {key.removeprefix("eval/overall/") for key in sevens_evaluation[0].metrics
               if key.startswith("eval/overall/")}
    assert overall == {metric.key(k) for metric in EVAL_METRICS for k in (1, 4)}


def test_greedy_rows_are_stored_apart_and_not_counted_in_avg_at_k(sevens_evaluation):
    result, store_url = sevens_evaluation
    with RolloutStore(store_url) as store:
        sampled = store.samples("sevens", stage="eval/sevens")
        greedy = store.samples("sevens", stage="eval_greedy/sevens")
    assert len(sampled) == 16 and sorted({r.sample_index for r in sampled}) == [0, 1, 2, 3]
    assert [(r.prompt_id, r.correct, r.token_count) for r in greedy] == [
        ("sevens/a", True, 4), ("sevens/b", True, 4), ("sevens/c", False, 4),
        ("sevens/d", False, 4)]
    assert result.metrics["eval/sevens/avg_at_4"] == pytest.approx(
        sum(r.correct for r in sampled) / 16)
    assert result.metrics["eval/sevens/samples"] == 16
    assert all(not r.greedy for r in result.samples) and len(result.samples) == 24


def test_greedy_rows_and_gold_nll_are_read_back_from_the_output_folder(sevens_evaluation):
    result, _ = sevens_evaluation
    written = read_result(result.output_dir)
    assert written.samples == result.samples and written.greedy == result.greedy
    assert written.gold == result.gold and len(written.gold) == 4


def test_gold_nll_is_absent_not_zero_where_no_problem_has_a_solution(sevens_evaluation):
    metrics = sevens_evaluation[0].metrics
    assert not [key for key in metrics if key.startswith("eval/bare/gold_nll")]
    assert metrics["eval/sevens/gold_nll_problems"] == 4
    assert metrics["eval/overall/gold_nll_problems"] == 4
    # 7 is the one likely token (logit 8, all others 0), and most gold digits are 7s
    assert 0 < metrics["eval/overall/gold_nll_digits"] < metrics["eval/overall/gold_nll_other"]


def test_greedy_rows_match_a_direct_greedy_generate(tmp_path, tiny_pair, tokenizer, tiny_problems):
    problems = tiny_problems["test"][:6]
    bench = write_problems(problems, tmp_path / "bench.jsonl")
    result = evaluate(EvalConfig(model=str(tiny_pair[1]), benchmarks=(f"b={bench}",), n=2,
                                 ks=(1, 2), max_new_tokens=12, batch_size=4),
                      log=lambda _: None)
    direct = generate_hf(load_model(tiny_pair[1]), tokenizer, render_prompts(tokenizer, problems),
                         SamplingConfig(temperature=0.0, max_new_tokens=12))
    with Grader() as grader:
        grades = grader.grade([s.text for s in direct], [p.answer for p in problems])
    assert [(r.problem_id, r.response, r.length, r.truncated) for r in result.greedy] == [
        (problems[s.prompt_index].id, s.text, s.length, s.truncated) for s in direct]
    assert [r.correct for r in result.greedy] == [g.strict_correct for g in grades]


def test_log_lines_name_the_model_and_its_settings(tmp_path, tiny_pair, tiny_problems):
    bench = write_problems(tiny_problems["test"][:3], tmp_path / "bench.jsonl")
    lines = []
    evaluate(EvalConfig(model=str(tiny_pair[1]), benchmarks=(f"b={bench}",), n=2, ks=(1, 2),
                        max_new_tokens=6, temperature=0.5, greedy=False),
             log=lines.append, label="distill-opd v3")
    assert lines[0].startswith(
        "evaluating distill-opd v3 on b (3 problems × 2 samples, T=0.5, cap 6): 0 of 6 samples")


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_bootstrapped_teacher_beats_an_untrained_student(bootstrapped, tmp_path):
    artifacts = bootstrapped.artifacts
    tokenizer = load_tokenizer(artifacts.teacher_dir)
    untrained = build_tiny_model(bootstrapped.config.teacher, tokenizer, seed=0)
    untrained.save_pretrained(tmp_path / "untrained")
    tokenizer.save_pretrained(tmp_path / "untrained")
    benchmark = f"default={artifacts.split('test')}"
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    results = {}
    for name, model in {"teacher": artifacts.teacher_dir,
                        "untrained": tmp_path / "untrained"}.items():
        config = EvalConfig(model=str(model), benchmarks=(benchmark,), n=4, ks=(1, 4),
                            limit=40, max_new_tokens=48, greedy=True)
        results[name] = evaluate(config, output_dir=tmp_path / name, store_url=store_url,
                                 run_id=f"eval-{name}", log=lambda _: None)
    teacher, untrained = results["teacher"].metrics, results["untrained"].metrics
    assert teacher["eval/default/avg_at_4"] >= untrained["eval/default/avg_at_4"] + 0.3
    assert teacher["eval/default/pass_at_4"] >= teacher["eval/default/avg_at_4"]
    assert teacher["eval/default/greedy_accuracy"] >= 0.5
    # trained on such worked solutions, the teacher is far less surprised by their digits
    assert teacher["eval/default/gold_nll_digits"] < 0.5 * untrained["eval/default/gold_nll_digits"]
    assert teacher["eval/default/gold_nll_problems"] == 40
    # the teacher was trained to stop; the untrained model babbles until the cap
    assert teacher["eval/default/truncation_rate"] < untrained["eval/default/truncation_rate"]
    assert teacher["eval/default/entropy"] < untrained["eval/default/entropy"]
    assert teacher["eval/overall/samples"] == 160
    check_comparable({name: r.identity for name, r in results.items()})

    written = read_result(tmp_path / "teacher")
    assert written.metrics == teacher and len(written.samples) == 160
    with RolloutStore(store_url) as store:
        rows = store.samples("eval-teacher", stage="eval/default")
    assert len(rows) == 160
    with RolloutStore(store_url) as store:
        greedy = store.samples("eval-teacher", stage="eval_greedy/default")
    assert len(greedy) == 40 and sum(r.correct for r in greedy) / 40 == pytest.approx(
        teacher["eval/default/greedy_accuracy"])
    assert sum(r.correct for r in rows) / 160 == pytest.approx(teacher["eval/default/avg_at_4"])
