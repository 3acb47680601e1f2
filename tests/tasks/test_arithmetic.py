"""The embedded default task: seeded, disjoint splits, solutions that are correct line by line."""

import re
from dataclasses import replace

import pytest

from tasks.arithmetic import MAX_TOTAL, ArithmeticConfig, generate_splits

SMALL = ArithmeticConfig(train_size=2000, held_out_size=100, test_size=200)
PHRASE_LINE = re.compile(r"^[a-z ]+ \d+(?: more)?$")
COLUMN = re.compile(r"^(?P<a>\d)(?P<sign>[+-])(?P<b>\d)=(?P<c>\d)$")


def _column_values(line: str) -> tuple[str, int, int, int]:
    """(sign, a, b, c) of a column-by-column line such as '2-5=7,1-0=0' (units first)."""
    columns = [COLUMN.match(column) for column in line.split(",")]
    assert all(columns) and len(columns) == 2, line
    assert columns[0]["sign"] == columns[1]["sign"], line

    def number(key: str) -> int:
        return int("".join(column[key] for column in reversed(columns)))

    return columns[0]["sign"], number("a"), number("b"), number("c")


def test_splits_are_disjoint_and_sized():
    splits = generate_splits(SMALL)
    assert {name: len(problems) for name, problems in splits.items()} == {
        "train": 2000, "held_out": 100, "test": 200}
    texts = {name: {p.problem for p in problems} for name, problems in splits.items()}
    assert all(len(texts[name]) == len(splits[name]) for name in splits)  # no duplicates within
    assert not texts["train"] & texts["held_out"]
    assert not texts["train"] & texts["test"]
    assert not texts["held_out"] & texts["test"]
    ids = [p.id for problems in splits.values() for p in problems]
    assert len(ids) == len(set(ids))


def test_generation_is_deterministic_and_seeded():
    assert generate_splits(SMALL) == generate_splits(SMALL)
    other = generate_splits(replace(SMALL, seed=1))
    assert other["test"] != generate_splits(SMALL)["test"]


def test_evaluation_splits_do_not_depend_on_train_size():
    bigger = generate_splits(replace(SMALL, train_size=3000))
    smaller = generate_splits(SMALL)
    assert bigger["test"] == smaller["test"]
    assert bigger["held_out"] == smaller["held_out"]


def test_every_solution_line_is_correct_arithmetic_ending_in_the_answer():
    for problem in generate_splits(SMALL)["train"][:500]:
        first, *steps, box = problem.solution.split("\n")
        start = re.fullmatch(r"has (\d+)", first)
        assert start and f"has {start.group(1)} " in problem.problem
        total = int(start.group(1))
        assert len(steps) % 2 == 0
        for phrase, line in zip(steps[::2], steps[1::2], strict=True):
            assert PHRASE_LINE.match(phrase) and f" {phrase}." in problem.problem  # echoed
            sign, a, b, c = _column_values(line)
            assert a == total
            assert b == int(phrase.split()[-2 if phrase.endswith("more") else -1])
            assert c == (a + b if sign == "+" else a - b)
            assert 0 <= c <= MAX_TOTAL
            total = c
        assert box == f"\\boxed{{{problem.answer}}}"
        assert int(problem.answer) == total


def test_steps_knob_sets_difficulty_and_length():
    short = generate_splits(replace(SMALL, min_steps=1, max_steps=1))["train"][:200]
    long = generate_splits(replace(SMALL, min_steps=4, max_steps=4))["train"][:200]
    assert all(p.source == "arithmetic-1step" for p in short)
    assert all(p.solution.count("\n") == 9 for p in long)  # start, 4 × (phrase, sum), box
    assert short[0].solution.count("\n") == 3
    assert sum(len(p.solution) for p in long) > 2.5 * sum(len(p.solution) for p in short)


@pytest.mark.parametrize("field, value, message", [
    ("min_steps", 0, "min_steps=0"),
    ("max_steps", 0, "need 1 <= min <= max"),
    ("max_operand", 100, "max_operand=100"),
    ("test_size", -1, "test_size=-1"),
])
def test_bad_config_names_the_field(field, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        replace(SMALL, **{field: value})


def test_impossible_split_size_is_a_clear_error():
    tiny_space = ArithmeticConfig(max_steps=1, max_operand=1, train_size=2000, held_out_size=0,
                                  test_size=0)
    with pytest.raises(ValueError, match="could not draw 2000 distinct train problems"):
        generate_splits(tiny_space)
