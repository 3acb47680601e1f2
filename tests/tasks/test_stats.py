"""tasks.stats on toy studies whose truth is known: a sure effect is reproduced, no effect stays
inconclusive, intervals cover the truth about as often as they claim, estimates equal the
evaluation's own numbers, and the readiness prediction matches the bootstrap's width."""

from dataclasses import dataclass

import numpy as np
import pytest

from tasks.stats import (
    Interval,
    ProblemValues,
    claim_verdict,
    expected_half_width,
    interval,
    pair,
    paired_difference,
    problem_values,
    sample_values,
    variance_components,
    verdict,
)

TRIALS = 200  # repeated toy studies per calibration test (a few seconds each)
RESAMPLES = 1000


@dataclass(frozen=True)
class Graded:
    """The fields tasks.stats reads (tasks.study.EvalSample has them too)."""

    problem_id: str
    sample_index: int
    correct: bool | None
    length: int = 10
    truncated: bool = False
    entropy: float | None = 0.5


def bernoulli_cell(rng, p_problem, seeds: int, samples: int) -> dict[int, list[Graded]]:
    """Every (seed, problem, sample) drawn correct with the problem's probability."""
    return {seed: [Graded(f"p{i}", j, bool(rng.random() < p))
                   for i, p in enumerate(p_problem) for j in range(samples)]
            for seed in range(seeds)}


def test_a_cell_always_right_over_one_always_wrong_is_reproduced():
    rng = np.random.default_rng(0)
    problems = [f"q{i}" for i in rng.choice(10_000, size=40, replace=False)]
    right = {s: [Graded(p, j, True) for p in problems for j in range(4)] for s in range(3)}
    wrong = {s: [Graded(p, j, False) for p in problems for j in range(4)] for s in range(3)}
    effect = paired_difference(problem_values(right, "avg_at_k", 4),
                               problem_values(wrong, "avg_at_k", 4))
    assert (effect.estimate, effect.low, effect.high) == (1.0, 1.0, 1.0)
    assert (effect.seeds, effect.problems, effect.resamples) == (3, 40, 2000)
    assert verdict(effect, "higher") == "reproduced"
    assert verdict(effect, "lower") == "opposite"


@pytest.mark.slow
def test_two_draws_of_one_process_stay_inconclusive():
    """Cells A and B are the same Bernoulli process (per-problem p ~ U(0, 1), 100 problems × 4
    samples × 3 seeds), drawn with different random seeds. At the nominal 95 % an interval
    excludes 0 in about 5 % of studies (simulated: 3 %, the crossed bootstrap is a little
    conservative without a seed effect). Required: inconclusive in >= 88 % of 200 studies —
    with a true rate of 95 % the count (mean 190, s.d. 3.1) falls below 176 with probability
    < 1e-5 (4.5 s.d.) — and not in all of them (the intervals are not absurdly wide: with a
    true rate of 95 %, P(>= 199 of 200) < 5e-4)."""
    inconclusive = 0
    for trial in range(TRIALS):
        rng = np.random.default_rng(1000 + trial)
        p = rng.uniform(0, 1, 100)
        a = problem_values(bernoulli_cell(rng, p, 3, 4), "avg_at_k", 4)
        b = problem_values(bernoulli_cell(rng, p, 3, 4), "avg_at_k", 4)
        effect = paired_difference(a, b, resamples=RESAMPLES, seed=trial)
        inconclusive += verdict(effect, "higher") == "inconclusive"
    assert 0.88 * TRIALS <= inconclusive < 199


def test_intervals_cover_the_truth_about_as_often_as_stated():
    """One seed, 80 problems with p ~ Beta(2, 2) (true Avg@k 0.5), 4 samples: the 95 %
    interval covers 0.5 in 96 % of simulated studies. Required over 200: 88 %..99.5 % (as
    above, more than 4 s.d. from 95 % on either side)."""
    covered = 0
    for trial in range(TRIALS):
        rng = np.random.default_rng(5000 + trial)
        cell = problem_values(bernoulli_cell(rng, rng.beta(2, 2, 80), 1, 4), "avg_at_k", 4)
        found = interval(cell, resamples=RESAMPLES, seed=trial)
        covered += found.low <= 0.5 <= found.high
    assert 0.88 * TRIALS <= covered < 199


def test_a_fixed_seed_repeats_the_interval_exactly():
    rng = np.random.default_rng(3)
    cell = problem_values(bernoulli_cell(rng, rng.uniform(0, 1, 50), 2, 4), "avg_at_k", 4)
    assert interval(cell, seed=7) == interval(cell, seed=7)
    assert interval(cell, seed=7) != interval(cell, seed=8)
    with pytest.raises(ValueError, match="at least 1,000"):
        interval(cell, resamples=500)


def test_estimates_equal_what_the_evaluation_reports():
    """Avg@k, Pass@k, length, truncation and token-weighted entropy from per-problem values
    equal tasks.evaluate.summarise_samples over the same samples."""
    from tasks.evaluate import SampleResult, summarise_samples

    rng = np.random.default_rng(4)
    rows = [SampleResult("b", f"p{i}", j, "", None, bool(c), bool(c), bool(c), int(n), bool(t),
                         None if n == 0 else float(h))
            for i in range(30) for j in range(5)
            for c, n, t, h in [(rng.random() < 0.4, rng.integers(0, 60), rng.random() < 0.1,
                                rng.uniform(0, 2))]]
    samples = {0: [Graded(r.problem_id, r.sample_index, r.correct, r.length, r.truncated,
                          r.entropy) for r in rows]}
    expected = summarise_samples(rows, [1, 4])
    for metric, k, key in [("avg_at_k", 4, "avg_at_4"), ("avg_at_k", 1, "avg_at_1"),
                           ("pass_at_k", 4, "pass_at_4"), ("response_length_mean", 1, None),
                           ("truncation_rate", 1, None), ("entropy", 1, None)]:
        assert problem_values(samples, metric, k).estimate == pytest.approx(
            expected[key or metric], abs=1e-12), metric


def test_greedy_accuracy_reads_one_greedy_response_per_problem():
    """Its estimate equals the evaluation's greedy_accuracy; the problem's n samples, passed by
    mistake, are refused rather than averaged."""
    from dataclasses import replace

    from tasks.evaluate import SampleResult, summarise_samples

    rng = np.random.default_rng(6)
    sampled = [SampleResult("b", f"p{i}", j, "", None, False, False, False, 5, False, 0.1)
               for i in range(20) for j in range(2)]
    greedy = [replace(r, sample_index=0, correct=bool(rng.random() < 0.6), greedy=True)
              for r in sampled if r.sample_index == 0]
    expected = summarise_samples(sampled + greedy, [1])["greedy_accuracy"]
    cell = problem_values({0: [Graded(r.problem_id, 0, r.correct) for r in greedy]},
                          "greedy_accuracy")
    assert cell.metric == "greedy_accuracy" and cell.estimate == pytest.approx(expected)
    assert 0 < expected < 1
    with pytest.raises(ValueError, match="greedy=True"):
        problem_values({0: [Graded(r.problem_id, r.sample_index, r.correct) for r in sampled]},
                       "greedy_accuracy")


def test_pairing_shares_problems_and_repeats_a_single_seed_baseline():
    cell = problem_values({s: [Graded(f"p{i}", 0, i % 2 == 0) for i in range(6)]
                           for s in (0, 1, 2)}, "avg_at_k")
    reference = problem_values({0: [Graded(f"p{i}", 0, False) for i in range(1, 8)]},
                               "avg_at_k")
    paired_cell, paired_reference = pair(cell, reference)
    assert paired_cell.problems == paired_reference.problems == ("p1", "p2", "p3", "p4", "p5")
    assert paired_reference.seeds == (0, 1, 2)
    assert paired_difference(cell, reference).estimate == pytest.approx(2 / 5)
    other = problem_values({5: [Graded("x", 0, True)], 6: [Graded("x", 0, True)]}, "avg_at_k")
    with pytest.raises(ValueError, match="nothing to pair"):
        pair(cell, other)


def test_a_problem_missing_from_one_seed_is_dropped_and_named():
    cell = problem_values({0: [Graded("a", 0, True), Graded("b", 0, True)],
                           1: [Graded("a", 0, False)]}, "avg_at_k")
    assert cell.problems == ("a",) and cell.dropped == ("b",)


def test_bad_samples_are_refused_with_the_problem_named():
    with pytest.raises(ValueError, match="'p' has 2 samples but k=4"):
        problem_values({0: [Graded("p", 0, True), Graded("p", 1, True)]}, "avg_at_k", 4)
    with pytest.raises(ValueError, match="'p' has an ungraded sample"):
        problem_values({0: [Graded("p", 0, None)]}, "pass_at_k", 1)
    with pytest.raises(ValueError, match="choose one of"):
        problem_values({0: []}, "accuracy")


def test_claims_combine_as_a_logical_and():
    at = Interval
    assert verdict(at(0.1, 0.05, 0.2), "higher") == "reproduced"
    assert verdict(at(-0.1, -0.2, -0.05), "higher") == "opposite"
    assert verdict(at(-0.1, -0.2, -0.05), "lower") == "reproduced"
    assert verdict(at(0.0, -0.1, 0.1), "lower") == "inconclusive"
    assert verdict(at(0.1, 0.0, 0.2), "higher") == "inconclusive"  # touching 0 is not enough
    assert claim_verdict(["reproduced", "reproduced"]) == "reproduced"
    assert claim_verdict(["reproduced", "inconclusive"]) == "inconclusive"
    assert claim_verdict(["reproduced", "opposite"]) == "opposite"
    assert claim_verdict(["inconclusive", "opposite"]) == "opposite"


def test_readiness_predicts_the_bootstrap_width():
    """A pilot's variance components predict the half-width the bootstrap then finds (within
    25 %); four times the problems and seeds at least halve it, more problems alone cannot
    remove the seed term."""
    rng = np.random.default_rng(6)
    p = np.clip(rng.beta(2, 2, 120)[None, :] + rng.normal(0, 0.05, (3, 1)), 0, 1)
    cell = {s: [Graded(f"p{i}", j, bool(rng.random() < p[s, i]))
                for i in range(120) for j in range(4)] for s in range(3)}
    components = variance_components(sample_values(cell, "correct"))
    assert components.problem == pytest.approx(0.05, rel=0.3)  # Var(Beta(2, 2)) = 0.05
    assert components.sample == pytest.approx(0.2, rel=0.1)  # E[p(1 - p)] = 0.2
    predicted = expected_half_width(120, 4, 3, components)
    found = interval(problem_values(cell, "avg_at_k", 4)).half_width
    assert found == pytest.approx(predicted, rel=0.25)
    assert expected_half_width(480, 4, 12, components) <= predicted / 2
    assert expected_half_width(480, 4, 3, components) > 0.8 * predicted  # the seed term stays
    one_seed = variance_components(sample_values({0: cell[0]}))
    assert one_seed.seed == 0.0 and one_seed.problem > 0


def test_ratio_metrics_and_direct_grids():
    grid = ProblemValues.from_array([[2.0, 6.0]], [[1.0, 3.0]], "entropy")
    assert grid.estimate == 2.0  # (2 + 6) / (1 + 3): token-weighted, not the mean of ratios
    with pytest.raises(ValueError, match="must both be"):
        ProblemValues("x", (0,), ("a",), np.ones((1, 2)), np.ones((1, 2)))
