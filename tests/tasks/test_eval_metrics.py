"""The evaluation metrics' table: names and labels take the evaluation's k, names are unique,
and every metric with per-problem values gives back, from the same samples, the number the
evaluation reports (so a study's interval is around the logged value). That evaluation returns
exactly the table's metrics is checked on a real evaluation in test_evaluate.py."""

from dataclasses import replace

import numpy as np
import pytest

from tasks.eval_metrics import (
    AVG_AT_K,
    BY_NAME,
    ENTROPY,
    EVAL_METRICS,
    GOLD_NLL_DIGITS,
    for_mlflow,
    is_top_key,
    metric_named,
    shown_in,
    top_key,
    top_level,
    with_rows,
)
from tasks.evaluate import SampleResult, summarise_samples
from tasks.stats import problem_values


def test_names_and_labels_take_the_evaluations_k():
    assert (AVG_AT_K.key(4), AVG_AT_K.logged(4, "gsm8k"), AVG_AT_K.heading(4)) == (
        "avg_at_4", "eval/gsm8k/avg_at_4", "avg@4")
    assert (ENTROPY.key(4), ENTROPY.logged(4), ENTROPY.heading(4)) == (
        "entropy", "eval/overall/entropy", "entropy")
    assert len(BY_NAME) == len(EVAL_METRICS)  # one entry per name
    with pytest.raises(ValueError, match="choose one of avg_at_k"):
        metric_named("avg_at_4")


def test_brief_tables_show_a_subset_of_the_full_ones_in_table_order():
    full, brief = shown_in("full"), shown_in("brief")
    assert set(brief) < set(full) and [m for m in full if m in brief] == list(brief)
    assert GOLD_NLL_DIGITS in brief and GOLD_NLL_DIGITS not in with_rows()  # logged means only


def test_every_per_problem_metric_gives_the_evaluations_number():
    rng = np.random.default_rng(7)
    sampled = [SampleResult("b", f"p{i}", j, "x", None, c, c, c, n, bool(rng.random() < 0.2),
                            None if n == 0 else float(rng.uniform(0, 2)))
               for i in range(25) for j in range(4)
               for c, n in [(bool(rng.random() < 0.4), int(rng.integers(0, 50)))]]
    greedy = [replace(r, correct=bool(rng.random() < 0.5), greedy=True, entropy=None)
              for r in sampled if r.sample_index == 0]
    reported = summarise_samples(sampled + greedy, [1, 4])
    for metric in with_rows():
        rows = greedy if metric.greedy else sampled
        for k in (1, 4):
            estimate = problem_values({0: rows}, metric.name, k).estimate
            assert estimate == pytest.approx(reported[metric.key(k)], abs=1e-12), metric.name


def test_one_benchmarks_copy_is_left_out_and_the_headline_goes_to_the_top():
    one = {"eval/default/avg_at_4": 0.5, "eval/overall/avg_at_4": 0.5,
           "eval/overall/avg_at_1": 0.75, "eval/overall/entropy": 0.3,
           "eval/overall/response_length_mean": 12.0, "eval/overall/pass_at_4": 0.7}
    assert for_mlflow(one, 4) == {
        "eval/overall/avg_at_4": 0.5, "eval/overall/avg_at_1": 0.75, "eval/overall/entropy": 0.3,
        "eval/overall/response_length_mean": 12.0, "eval/overall/pass_at_4": 0.7,
        "avg_at_4": 0.5, "pass_at_4": 0.7, "length": 12.0, "entropy": 0.3}
    two = {"eval/a/avg_at_4": 0.25, "eval/b/avg_at_4": 0.75, "eval/overall/avg_at_4": 0.5}
    assert for_mlflow(two, 4) == {**two, "avg_at_4": 0.5}  # per-benchmark keys kept
    assert [top_key(m, 4) for m in top_level()] == [
        "avg_at_4", "pass_at_4", "greedy", "length", "entropy"]
    assert is_top_key("avg_at_16") and is_top_key("greedy") and not is_top_key("avg_at_")
