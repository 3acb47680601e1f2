"""Avg@k and the unbiased Pass@k estimator."""

import itertools
import math

import pytest

from distill_core import avg_at_k, mean_pass_at_k, pass_at_k


@pytest.mark.parametrize("n, c, k", [(5, 2, 1), (5, 2, 3), (10, 0, 4), (10, 10, 4), (7, 3, 5)])
def test_pass_at_k_matches_the_binomial_formula(n, c, k):
    expected = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_is_the_probability_some_of_k_draws_is_correct():
    outcomes = [True, False, False, True, False]
    subsets = list(itertools.combinations(outcomes, 3))
    brute_force = sum(any(s) for s in subsets) / len(subsets)
    assert pass_at_k(5, 2, 3) == pytest.approx(brute_force)


def test_pass_at_k_is_stable_for_large_n():
    value = pass_at_k(1024, 3, 512)
    assert 0.0 < value <= 1.0
    assert value == pytest.approx(1 - math.comb(1021, 512) / math.comb(1024, 512), rel=1e-9)
    assert pass_at_k(1024, 1, 1) == pytest.approx(1 / 1024)


def test_avg_and_mean_pass_at_k():
    correct = [[True, False, True, True], [False, False, False, True]]
    assert avg_at_k(correct, 2) == pytest.approx((0.5 + 0.0) / 2)
    assert avg_at_k(correct, 4) == pytest.approx((0.75 + 0.25) / 2)
    assert mean_pass_at_k(correct, 1) == pytest.approx((0.75 + 0.25) / 2)
    assert mean_pass_at_k(correct, 4) == 1.0


@pytest.mark.parametrize(
    "args, fragment",
    [((4, 1, 5), "k=5 > n=4"), ((4, 5, 2), "c=5 > n=4"), ((4, 1, 0), "k=0"),
     ((4, -1, 1), "c=-1"), ((4.0, 1, 1), "n=4.0")],
)
def test_pass_at_k_bad_input(args, fragment):
    with pytest.raises(ValueError, match=fragment):
        pass_at_k(*args)


def test_avg_at_k_bad_input():
    with pytest.raises(ValueError, match="problem index 1 has only 1 samples"):
        avg_at_k([[True, True], [False]], 2)
    with pytest.raises(ValueError, match="empty"):
        avg_at_k([], 1)
    with pytest.raises(ValueError, match="empty"):
        mean_pass_at_k([], 1)
