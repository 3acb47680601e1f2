"""The embedded default task: multi-step arithmetic word problems with worked solutions.

Every problem is a short story of 1–4 additions and subtractions of amounts up to 20 on a count
of things, and its worked solution ends in ``\\boxed{answer}``. One problem, written two of the
valid ways::

    Mia has 12 books. She drops 5. Then she wins 14 more. How many books now?

    has 12                           start 12
    > drops 5                        > She drops 5
    2-5=7,1-0=0                      2-5=7,1-0=0
    > wins 14 more                   check 7+5=2,0+0=1
    7+4=1,0+1=2                      so 7
    \\boxed{21}                       > Then she wins 14 more
                                     7+4=1,0+1=2
                                     total 21
                                     answer \\boxed{21}

Each step echoes the story after a ``> `` mark — its phrase, or its whole sentence — then works
the sum column by column, units first: ``2-5=7,1-0=0`` is 12 − 5 = 7 (units: 2 − 5, borrow
one, 7; tens: 1 − 0 − the borrow, 0). The carry or borrow is implicit. The box states the final
total in the usual order.

Why this shape: a model of about a million parameters trained for minutes on a CPU learns it
only if every sub-skill is local and regular. Each choice was measured on the default teacher
(1.05M non-embedding parameters, held-out greedy accuracy after minutes of SFT, 2 cores):

- Operands found in the story ("the third number") without an echo: the model mis-copied them
  (29.5%). Echoing each step turns finding the operand into copying the sentence after the one
  last copied, which small transformers learn first; no story uses a phrase twice, so the copy
  is never ambiguous.
- Whole numbers written least-significant digit first (``21-50=70``): copying was learnt but the
  units digit, predicted right after ``=``, was learnt in one run out of three (74.5%, 16.5%,
  12%); learning rate 5e-3 instead of 3e-3 made it worse (6.5%).
- Column by column (this format): every result digit comes right after the two digits it
  depends on, with the carry three tokens back.
- The digit tables are what a model learns last, suddenly: held-out greedy accuracy stays
  below 15 % for 300 steps and then climbs within a few hundred. With amounts up to 99 the
  climb came between steps 400 and 750 (0.27 → 0.94) and two runs of 800 steps ended at 91.5 %
  and 98 %; with amounts up to 20 (fewer tens-column cases) it came between 300 and 600
  (0.27 → 0.97) and the run stayed at 0.97 to step 700. A teacher that ends well past its climb
  lands in the same place on every machine.
- Totals stay within [0, 99]; three-digit totals were not learnt reliably in the budget.

What distillation needs from it (measured by ``python -m bench.default_profile``):

- **A teacher that is right where one token is right and free where several are.** Every
  choice between equally correct forms falls on a word, never on a digit (a test checks it):
  the solution opens with ``has`` or ``start``; each step echoes its phrase or its whole
  sentence (quote_rate), may add a check line that undoes it (check_rate) and a running-total
  line worded ``now``, ``so`` or ``total`` (running_total_rate); the box may be introduced by
  ``answer`` (answer_word_rate). A teacher that learnt the data spreads its probability over
  these words and is sure of every digit, so what it teaches beyond the gold solution is the
  legitimate spread, not its errors; mode-seeking (reverse KL) and mode-covering (forward KL)
  students have different targets among the forms.
- **Length that grows with difficulty.** The number of steps is the difficulty knob, drawn with
  P(k) ∝ step_decay^(k−1): answers run from about 25 tokens (one step) to 170 (four steps with
  every optional line), so a training cap of 128 truncates about 9 % of them and an evaluation
  cap of 256 holds 1.5× the longest.

Generation is seeded and deterministic; train / held-out / test splits come from separate
seeded streams and are deduplicated against each other by problem text; the written forms come
from a stream of their own, so the rates change how solutions read but never which problems
are drawn.

Why not reasoning-gym: its arithmetic and GSM-style generators (``chain_sum``,
``basic_arithmetic``, ``gsm_symbolic``) give questions and answers but no worked solutions, and
their answers need reasoning a CPU-sized model cannot learn from answers alone. They remain
available as problem sources (``load_problems("reasoning_gym:gsm_symbolic")``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tasks.data import Problem

WIDTH = 2
MAX_TOTAL = 10**WIDTH - 1

NAMES = (
    "Mia", "Leo", "Ava", "Noah", "Zoe", "Omar", "Lily", "Ivan", "Sara", "Ben",
    "Nina", "Raj", "Emma", "Tom", "Yuki", "Kofi",
)
PRONOUNS = {
    "Mia": "She", "Ava": "She", "Zoe": "She", "Lily": "She", "Sara": "She", "Nina": "She",
    "Emma": "She", "Yuki": "She",
}
ITEMS = ("apples", "marbles", "shells", "stickers", "coins", "cards", "books", "pencils",
         "stamps", "beads")
# A story never uses a phrase twice, so the phrase a step header echoes occurs once in the
# story: copying "the number after 'wins'" is never ambiguous. Eight of each sign allow 8 steps.
GAIN_PHRASES = ("finds {n} more", "buys {n} more", "gets {n} more", "wins {n} more",
                "earns {n} more", "picks up {n} more", "receives {n} more", "makes {n} more")
LOSS_PHRASES = ("gives away {n}", "loses {n}", "sells {n}", "drops {n}", "trades {n}",
                "donates {n}", "spends {n}", "breaks {n}")
CONNECTORS = ("", "Then ")
INVERSE = {"+": "-", "-": "+"}
# The free words of a solution: how it opens and how a running-total line reads.
OPENINGS = ("has", "start")
TOTAL_WORDS = ("now", "so", "total")
MAX_STEPS = min(len(GAIN_PHRASES), len(LOSS_PHRASES))


@dataclass(frozen=True)
class Step:
    """One operation of a problem: add or subtract ``amount`` from the running total."""

    sign: str  # "+" or "-"
    amount: int


@dataclass(frozen=True)
class StepForm:
    """How one step is written out: with or without its optional lines (all are correct).

    quote: the step's header quotes the story's whole sentence (``Then she wins 64 more``)
        instead of its phrase (``wins 64 more``).
    check: a check line undoes the step (``check 1-4=7,7-6=0``: 71 - 64 = 7).
    total_word: "" for no running-total line, else the line's word (``now 71``, ``so 71``,
        ``total 71``; TOTAL_WORDS).
    """

    quote: bool = False
    check: bool = False
    total_word: str = ""


@dataclass(frozen=True)
class SolutionForm:
    """How a whole solution is written: its opening word (``has 12`` or ``start 12``), whether
    the box is introduced by ``answer``, and each step's form."""

    opening: str = OPENINGS[0]
    answer_word: bool = False
    steps: tuple[StepForm, ...] = ()


def digits(value: int) -> str:
    """value as a fixed-width, zero-padded string: 7 → '07'."""
    return f"{value:0{WIDTH}d}"


def apply(total: int, step: Step) -> int:
    return total + step.amount if step.sign == "+" else total - step.amount


def column_sum(total: int, step: Step, result: int) -> str:
    """One step worked column by column, units first: 12 - 5 = 7 is ``2-5=7,1-0=0``.

    Each column shows the total's digit, the amount's digit and the result digit; the carry (or
    borrow) from the column before is implicit, so ``2-5=7`` reads "2 minus 5, borrow one: 7".
    Every digit is fixed by the problem and the lines before it.
    """
    columns = zip(digits(total)[::-1], digits(step.amount)[::-1], digits(result)[::-1],
                  strict=True)
    return ",".join(f"{a}{step.sign}{b}={c}" for a, b, c in columns)


def check_line(total: int, step: Step, result: int) -> str:
    """The step undone, column by column: 7 + 64 = 71 is checked by ``check 1-4=7,7-6=0``."""
    return "check " + column_sum(result, Step(INVERSE[step.sign], step.amount), total)


def worked_solution(start: int, steps: list[Step], echoes: list[tuple[str, str]],
                    form: SolutionForm | None = None) -> str:
    """The worked solution: echo the start, then each step's lines, then the box.

    A step is its echo after a ``> `` quote mark (the story's phrase, or its whole sentence:
    the mark makes the echo the same tokens as in the story, leading spaces included) and its
    column sum, then, where its form says so, a check line and a running-total line. echoes
    holds each step's (phrase, sentence). Every form is a correct solution with the same box,
    and every choice between forms falls on a word, never on a digit.
    """
    form = form or SolutionForm(steps=(StepForm(),) * len(steps))
    lines = [f"{form.opening} {start}"]
    total = start
    for step, (phrase, sentence), step_form in zip(steps, echoes, form.steps, strict=True):
        result = apply(total, step)
        lines += [f"> {sentence if step_form.quote else phrase}",
                  column_sum(total, step, result)]
        if step_form.check:
            lines.append(check_line(total, step, result))
        if step_form.total_word:
            lines.append(f"{step_form.total_word} {result}")
        total = result
    lines.append(("answer " if form.answer_word else "") + f"\\boxed{{{total}}}")
    return "\n".join(lines)


def story(name: str, item: str, start: int, steps: list[Step],
          rng: random.Random) -> tuple[str, list[tuple[str, str]]]:
    """The word problem for a start count and its steps, and each step's echoes: its phrase
    (``wins 64 more``) and its sentence without the full stop (``Then she wins 64 more``)."""
    pronoun = PRONOUNS.get(name, "He")
    sentences, echoes = [f"{name} has {start} {item}."], []
    unused = {"+": list(GAIN_PHRASES), "-": list(LOSS_PHRASES)}
    for index, step in enumerate(steps):
        phrase = unused[step.sign].pop(rng.randrange(len(unused[step.sign])))
        phrase = phrase.format(n=step.amount)
        connector = rng.choice(CONNECTORS) if index else ""
        subject = pronoun if not connector else pronoun.lower()
        echoes.append((phrase, f"{connector}{subject} {phrase}"))
        sentences.append(f"{echoes[-1][1]}.")
    sentences.append(f"How many {item} now?")
    return " ".join(sentences), echoes


def random_steps(rng: random.Random, start: int, num_steps: int, max_operand: int) -> list[Step]:
    """num_steps operations that keep the running total within [0, MAX_TOTAL]."""
    steps, total = [], start
    for _ in range(num_steps):
        can_add = total + 1 <= MAX_TOTAL
        can_subtract = total >= 1
        sign = "+" if can_add and (not can_subtract or rng.random() < 0.5) else "-"
        limit = min(max_operand, MAX_TOTAL - total) if sign == "+" else min(max_operand, total)
        steps.append(Step(sign, rng.randint(1, limit)))
        total = apply(total, steps[-1])
    return steps


def random_forms(rng: random.Random, num_steps: int, config: ArithmeticConfig) -> SolutionForm:
    """How a solution is written: every choice drawn independently at the configured rate."""
    steps = []
    for _ in range(num_steps):
        quote, check = rng.random() < config.quote_rate, rng.random() < config.check_rate
        total_word = rng.choice(TOTAL_WORDS) if rng.random() < config.running_total_rate else ""
        steps.append(StepForm(quote, check, total_word))
    opening = OPENINGS[rng.random() < config.start_word_rate]
    return SolutionForm(opening, rng.random() < config.answer_word_rate, tuple(steps))


def generate_problem(rng: random.Random, num_steps: int, max_operand: int, index: str,
                     form: SolutionForm | None = None) -> Problem:
    """One seeded problem with ``num_steps`` operations on numbers up to ``max_operand``,
    its solution written in form (default: no optional lines)."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    start = rng.randint(1, max_operand)
    steps = random_steps(rng, start, num_steps, max_operand)
    final = start
    for step in steps:
        final = apply(final, step)
    text, echoes = story(name, item, start, steps, rng)
    return Problem(
        id=f"arith-{index}",
        problem=text,
        answer=str(final),
        solution=worked_solution(start, steps, echoes, form),
        source=f"arithmetic-{num_steps}step",
    )


@dataclass(frozen=True)
class ArithmeticConfig:
    """How the default problems are generated.

    min_steps, max_steps: the difficulty knob, operations per problem.
    step_decay: P(num_steps = k) ∝ step_decay ** (k - min_steps); 1.0 is uniform, smaller
        makes long problems rarer (a tail of long answers rather than a block of them).
    quote_rate: probability that a step's header quotes its whole sentence.
    check_rate: probability that a step is followed by its check line.
    running_total_rate: probability that a step is followed by a running-total line; its word
        (``now``, ``so``, ``total``) is then drawn uniformly.
    start_word_rate: probability that a solution opens with ``start 12`` instead of ``has 12``.
    answer_word_rate: probability that the box is written ``answer \\boxed{71}``.
    max_operand: largest number a story mentions.
    train_size, held_out_size, test_size: problems per split.
    seed: one seed for all three splits (each split derives its own streams).
    """

    min_steps: int = 1
    max_steps: int = 4
    step_decay: float = 0.75
    quote_rate: float = 0.5
    check_rate: float = 0.5
    running_total_rate: float = 0.75
    start_word_rate: float = 0.5
    answer_word_rate: float = 0.5
    max_operand: int = 20
    train_size: int = 20_000
    held_out_size: int = 200
    test_size: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError(
                f"min_steps={self.min_steps}, max_steps={self.max_steps}: need 1 <= min <= max"
            )
        if self.max_steps > MAX_STEPS:
            raise ValueError(f"max_steps={self.max_steps}: a story has at most {MAX_STEPS} steps "
                             "(one distinct phrase per step)")
        if not 0 < self.step_decay <= 1:
            raise ValueError(f"step_decay={self.step_decay} must lie in (0, 1] (1 = uniform)")
        for name in ("quote_rate", "check_rate", "running_total_rate", "start_word_rate",
                     "answer_word_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}={getattr(self, name)} must lie in [0, 1]")
        if not 1 <= self.max_operand <= MAX_TOTAL:
            raise ValueError(f"max_operand={self.max_operand} must lie in [1, {MAX_TOTAL}]")
        for name in ("train_size", "held_out_size", "test_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")

    @property
    def step_weights(self) -> dict[int, float]:
        """P(num_steps = k) for every k in [min_steps, max_steps]."""
        raw = {k: self.step_decay ** (k - self.min_steps)
               for k in range(self.min_steps, self.max_steps + 1)}
        return {k: w / sum(raw.values()) for k, w in raw.items()}


SPLITS = ("train", "held_out", "test")


def generate_splits(config: ArithmeticConfig) -> dict[str, list[Problem]]:
    """Disjoint train / held_out / test problems (no problem text appears in two splits).

    Evaluation splits are drawn first so the training split is the one that gives way on a
    collision; each split has its own seeded stream, so changing train_size leaves the
    evaluation problems unchanged. The solutions' optional lines come from a stream of their
    own, so the rates change how solutions are written but never which problems are drawn.
    """
    sizes = {"test": config.test_size, "held_out": config.held_out_size,
             "train": config.train_size}
    step_counts, step_weights = zip(*config.step_weights.items(), strict=True)
    seen: set[str] = set()
    splits: dict[str, list[Problem]] = {}
    for split in ("test", "held_out", "train"):
        rng = random.Random(f"{config.seed}/{split}")
        form_rng = random.Random(f"{config.seed}/{split}/forms")
        problems: list[Problem] = []
        attempts = 0
        while len(problems) < sizes[split]:
            attempts += 1
            if attempts > 20 * sizes[split] + 1000:
                raise ValueError(
                    f"could not draw {sizes[split]} distinct {split} problems from "
                    f"max_operand={config.max_operand}, steps {config.min_steps}-"
                    f"{config.max_steps}; lower the split size or widen the ranges"
                )
            num_steps = rng.choices(step_counts, step_weights)[0]
            form = random_forms(form_rng, num_steps, config)
            problem = generate_problem(rng, num_steps, config.max_operand,
                                       f"{split}-{config.seed}-{len(problems)}", form)
            if problem.problem not in seen:
                seen.add(problem.problem)
                problems.append(problem)
        splits[split] = problems
    return {split: splits[split] for split in SPLITS}
