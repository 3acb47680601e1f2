"""Sampling-based accuracy metrics: Avg@k and the unbiased Pass@k estimator."""

from __future__ import annotations

from collections.abc import Sequence


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}={value!r} must be an int >= 0")
    return value


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased Pass@k from n samples with c correct: 1 − C(n − c, k) / C(n, k).

    Computed as 1 − Π_{i = n−c+1}^{n} (1 − k / i), which never forms the (huge) binomials.
    """
    n, c, k = _check_count("n", n), _check_count("c", c), _check_count("k", k)
    if k == 0:
        raise ValueError("k=0: Pass@k needs k >= 1")
    if k > n:
        raise ValueError(f"k={k} > n={n}: Pass@k needs at least k samples per problem")
    if c > n:
        raise ValueError(f"c={c} > n={n}: more correct samples than samples")
    if n - c < k:
        return 1.0
    survive = 1.0
    for i in range(n - c + 1, n + 1):
        survive *= 1.0 - k / i
    return 1.0 - survive


def mean_pass_at_k(correct: Sequence[Sequence[bool]], k: int) -> float:
    """Pass@k averaged over problems; correct[i] holds the graded samples of problem i."""
    if not correct:
        raise ValueError("correct is empty: no problems to average over")
    return sum(pass_at_k(len(row), sum(bool(x) for x in row), k) for row in correct) / len(correct)


def avg_at_k(correct: Sequence[Sequence[bool]], k: int) -> float:
    """Avg@k: mean correctness of the first k samples of each problem, averaged over problems."""
    k = _check_count("k", k)
    if k == 0:
        raise ValueError("k=0: Avg@k needs k >= 1")
    if not correct:
        raise ValueError("correct is empty: no problems to average over")
    short = [i for i, row in enumerate(correct) if len(row) < k]
    if short:
        raise ValueError(
            f"k={k} but problem index {short[0]} has only {len(correct[short[0]])} samples; "
            "sample n >= k responses per problem"
        )
    return sum(sum(bool(x) for x in row[:k]) / k for row in correct) / len(correct)
