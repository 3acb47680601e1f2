"""The embedded default task: seeded, disjoint splits, solutions that are correct line by line in
every written form, optional forms at their configured rates, lengths that grow with steps."""

import random
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field, replace

import pytest

from tasks.arithmetic import (
    MAX_TOTAL,
    OPENINGS,
    TOTAL_WORDS,
    ArithmeticConfig,
    SolutionForm,
    StepForm,
    generate_problem,
    generate_splits,
)
from tasks.data import Problem
from tasks.grader import grade
from tasks.models import build_tokenizer

SMALL = ArithmeticConfig(train_size=2000, held_out_size=100, test_size=200)
PLAIN = replace(SMALL, quote_rate=0.0, check_rate=0.0, running_total_rate=0.0,
                start_word_rate=0.0, answer_word_rate=0.0)
PHRASE = re.compile(r"^> (?P<echo>[a-z ]+ \d+(?: more)?)$")
SENTENCE = re.compile(r"^> (?P<echo>(?:Then (?:she|he)|She|He) [a-z ]+ \d+(?: more)?)$")
COLUMN = re.compile(r"^(?P<a>\d)(?P<sign>[+-])(?P<b>\d)=(?P<c>\d)$")


def _column_values(line: str) -> tuple[str, int, int, int]:
    """(sign, a, b, c) of a column-by-column line such as '2-5=7,1-0=0' (units first)."""
    columns = [COLUMN.match(column) for column in line.split(",")]
    assert all(columns) and len(columns) == 2, line
    assert columns[0]["sign"] == columns[1]["sign"], line

    def number(key: str) -> int:
        return int("".join(column[key] for column in reversed(columns)))

    return columns[0]["sign"], number("a"), number("b"), number("c")


@dataclass
class FormCounts:
    """How often each optional form appeared, and how often it could have."""

    steps: int = 0
    quoted: int = 0
    checked: int = 0
    running_totals: Counter = field(default_factory=Counter)  # by word
    solutions: int = 0
    started: int = 0  # solutions opening with "start" instead of "has"
    answer_words: int = 0  # boxes written "answer \\boxed{..}"


def check_solution(problem: Problem, counts: FormCounts) -> None:
    """Assert that every line of problem's worked solution is right; count its forms."""
    lines = problem.solution.split("\n")
    num_steps = int(problem.source.removeprefix("arithmetic-").removesuffix("step"))
    start = re.fullmatch(r"(has|start) (\d+)", lines.pop(0))
    assert start and f"has {start.group(2)} " in problem.problem
    total = int(start.group(2))
    counts.solutions += 1
    counts.started += start.group(1) == "start"
    for _ in range(num_steps):
        header, column = lines.pop(0), lines.pop(0)
        if sentence := SENTENCE.match(header):
            assert f" {sentence['echo']}." in problem.problem  # the whole sentence, quoted
            counts.quoted += 1
        else:
            phrase = PHRASE.match(header)
            assert phrase and f" {phrase['echo']}." in problem.problem, header
        amount = int(re.findall(r"\d+", header)[-1])
        sign, a, b, c = _column_values(column)
        assert sign == ("+" if header.endswith("more") else "-")
        assert (a, b, c) == (total, amount, total + amount if sign == "+" else total - amount)
        assert 0 <= c <= MAX_TOTAL
        if lines[0].startswith("check "):
            undo = _column_values(lines.pop(0).removeprefix("check "))
            assert undo == ("-" if sign == "+" else "+", c, amount, total)  # the step undone
            counts.checked += 1
        if lines[0].split(" ")[0] in TOTAL_WORDS:
            word, value = lines.pop(0).split(" ")
            assert value == str(c)
            counts.running_totals[word] += 1
        total = c
        counts.steps += 1
    assert lines in ([f"\\boxed{{{problem.answer}}}"], [f"answer \\boxed{{{problem.answer}}}"])
    counts.answer_words += lines[0].startswith("answer ")
    assert int(problem.answer) == total


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


def test_written_forms_change_solutions_but_not_problems():
    varied, plain = generate_splits(SMALL), generate_splits(PLAIN)
    for split in varied:
        assert [(p.problem, p.answer) for p in varied[split]] == [
            (p.problem, p.answer) for p in plain[split]]
    assert sum(v.solution != p.solution for v, p in zip(varied["train"], plain["train"],
                                                         strict=True)) > 1500


@pytest.mark.parametrize("config", [SMALL, PLAIN], ids=["varied", "plain"])
def test_every_solution_line_is_correct_arithmetic_ending_in_the_answer(config):
    counts = FormCounts()
    for problem in generate_splits(config)["train"]:
        check_solution(problem, counts)
    assert counts.steps > 4000


def test_optional_forms_appear_at_their_configured_rates():
    counts = FormCounts()
    for problem in generate_splits(SMALL)["train"]:
        check_solution(problem, counts)
    assert counts.quoted / counts.steps == pytest.approx(SMALL.quote_rate, abs=0.03)
    assert counts.checked / counts.steps == pytest.approx(SMALL.check_rate, abs=0.03)
    for word in TOTAL_WORDS:  # a running-total line at its rate, its word drawn uniformly
        assert counts.running_totals[word] / counts.steps == pytest.approx(
            SMALL.running_total_rate / len(TOTAL_WORDS), abs=0.03)
    assert counts.started / counts.solutions == pytest.approx(SMALL.start_word_rate, abs=0.04)
    assert counts.answer_words / counts.solutions == pytest.approx(SMALL.answer_word_rate,
                                                                   abs=0.04)


def test_written_forms_differ_only_at_words_never_at_digits():
    """Every way of writing a problem's solution first departs from another at a word: all
    the uncertainty a teacher can legitimately have sits on words, every digit is determined."""
    splits = generate_splits(SMALL)
    tokenizer = build_tokenizer([p.problem + "\n" + p.solution for p in splits["train"]], 400)
    step_forms = [StepForm(quote, check, word) for quote in (False, True)
                  for check in (False, True) for word in ("", *TOTAL_WORDS)]
    departures = 0
    for seed in range(20):
        forms = [SolutionForm(opening, answer, (first, second)) for opening in OPENINGS
                 for answer in (False, True) for first in step_forms for second in step_forms[::5]]
        solutions = {generate_problem(random.Random(seed), 2, 99, "x", form).solution
                     for form in forms}
        assert len(solutions) == len(forms)
        tokens = [tokenizer.tokenize(text) for text in solutions]
        for one, other in zip(tokens, tokens[1:], strict=False):
            where = next(i for i, (a, b) in enumerate(zip(one, other, strict=False)) if a != b)
            assert not one[where].isdigit() and not other[where].isdigit(), (one, other)
            departures += 1
    assert departures > 1000


def test_every_form_is_graded_correct_by_the_strict_rule():
    problems = generate_splits(SMALL)["test"]
    grades = grade([p.solution for p in problems], [p.answer for p in problems])
    assert all(g.strict_correct and g.method == "boxed" for g in grades)


def test_no_story_repeats_a_phrase():
    """Each step header's phrase occurs once in its story, so copying its number is unambiguous."""
    for problem in generate_splits(replace(SMALL, min_steps=8, max_steps=8))["train"][:500]:
        sentences = problem.problem.split(". ")[1:]
        phrases = [re.sub(r"^(?:Then (?:she|he)|She|He) | \d+", "", s) for s in sentences]
        assert len(phrases) == 9 and len(set(phrases[:-1])) == 8, problem.problem


def test_step_counts_follow_the_decaying_mix():
    weights = SMALL.step_weights
    assert list(weights) == list(range(SMALL.min_steps, SMALL.max_steps + 1))
    assert sum(weights.values()) == pytest.approx(1.0)
    assert all(weights[k] > weights[k + 1] for k in list(weights)[:-1])
    observed = Counter(p.source for p in generate_splits(SMALL)["train"])
    for steps, weight in weights.items():
        assert observed[f"arithmetic-{steps}step"] / 2000 == pytest.approx(weight, abs=0.03)
    uniform = replace(SMALL, step_decay=1.0).step_weights
    assert list(uniform.values()) == pytest.approx([1 / len(uniform)] * len(uniform))


def test_lengths_grow_with_steps():
    by_steps: dict[str, list[int]] = {}
    for problem in generate_splits(SMALL)["train"]:
        by_steps.setdefault(problem.source, []).append(len(problem.solution))
    means = [statistics.mean(by_steps[f"arithmetic-{k}step"])
             for k in range(SMALL.min_steps, SMALL.max_steps + 1)]
    assert all(shorter < longer for shorter, longer in zip(means[:-1], means[1:], strict=True))
    assert means[-1] > 3 * means[0]


def test_default_answer_lengths_overrun_a_training_cap_and_fit_the_evaluation_cap():
    """In tokens of the default's tokenizer: a 128-token training cap cuts a measurable share
    of the test split's answers, and the 384-token evaluation cap holds 1.5× the longest."""
    splits = generate_splits(SMALL)
    tokenizer = build_tokenizer([p.problem + "\n" + p.solution for p in splits["train"]], 400)
    lengths = [len(ids) + 1 for ids in tokenizer([p.solution for p in splits["test"]],
                                                 add_special_tokens=False)["input_ids"]]
    assert min(lengths) < 40
    assert 0.05 <= sum(n > 128 for n in lengths) / len(lengths) <= 0.30
    assert 1.5 * max(lengths) <= 384


@pytest.mark.parametrize("field, value, message", [
    ("min_steps", 0, "min_steps=0"),
    ("max_steps", 0, "need 1 <= min <= max"),
    ("max_steps", 9, "at most 8 steps"),
    ("max_operand", 100, "max_operand=100"),
    ("test_size", -1, "test_size=-1"),
    ("step_decay", 0.0, "step_decay=0.0"),
    ("check_rate", 1.5, "check_rate=1.5"),
    ("quote_rate", -0.1, "quote_rate=-0.1"),
])
def test_bad_config_names_the_field(field, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        replace(SMALL, **{field: value})


@pytest.mark.slow
def test_impossible_split_size_is_a_clear_error():
    tiny_space = ArithmeticConfig(max_steps=1, max_operand=1, train_size=5000, held_out_size=0,
                                  test_size=0)
    with pytest.raises(ValueError, match="could not draw 5000 distinct train problems"):
        generate_splits(tiny_space)
