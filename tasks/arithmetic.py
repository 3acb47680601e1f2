"""The embedded default task: multi-step arithmetic word problems with worked solutions.

Every problem is a short story of 1–4 additions and subtractions on a count of things, and its
worked solution ends in ``\\boxed{answer}``::

    Mia has 12 books. She drops 5. Then she wins 64 more. How many books now?

    has 12
    drops 5
    2-5=7,1-0=0
    wins 64 more
    7+4=1,0+6=7
    \\boxed{71}

Each step echoes the story's phrase for it, then works the sum column by column, units first:
``2-5=7,1-0=0`` is 12 − 5 = 7 (units: 2 − 5, borrow one, 7; tens: 1 − 0 − the borrow, 0). The
carry or borrow is implicit. The box states the final total in the usual order.

Why this shape: a model of about a million parameters trained for minutes on a CPU learns it
only if every sub-skill is local and regular. Each choice was measured on the default teacher
(1.05M non-embedding parameters, held-out greedy accuracy after 5–6 minutes of SFT, 2 cores):

- Operands found in the story ("the third number") without an echo: the model mis-copied them
  (29.5%). Echoing each step's phrase turns finding the operand into copying the sentence after
  the one last copied, which small transformers learn first.
- Whole numbers written least-significant digit first (``21-50=70``): copying was learnt but the
  units digit, predicted right after ``=``, was learnt in one run out of three (74.5%, 16.5%,
  12%); learning rate 5e-3 instead of 3e-3 made it worse (6.5%).
- Column by column (this format): every result digit comes right after the two digits it
  depends on, with the carry three tokens back. 96.5% after 700 steps (loss 0.009).
- Totals stay within [0, 99]; three-digit totals were not learnt reliably in the budget.

The number of steps is the difficulty knob: responses run from 26 to 84 tokens, which
gives the length curriculum something to work with. Generation is seeded and deterministic;
train / held-out / test splits come from separate seeded streams and are deduplicated against
each other by problem text.

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
GAIN_PHRASES = ("finds {n} more", "buys {n} more", "gets {n} more", "wins {n} more")
LOSS_PHRASES = ("gives away {n}", "loses {n}", "sells {n}", "drops {n}")
CONNECTORS = ("", "Then ")


@dataclass(frozen=True)
class Step:
    """One operation of a problem: add or subtract ``amount`` from the running total."""

    sign: str  # "+" or "-"
    amount: int


def digits(value: int) -> str:
    """value as a fixed-width, zero-padded string: 68 → '068'."""
    return f"{value:0{WIDTH}d}"


def apply(total: int, step: Step) -> int:
    return total + step.amount if step.sign == "+" else total - step.amount


def column_sum(total: int, step: Step, result: int) -> str:
    """One step worked column by column, units first: 12 - 5 = 7 is ``2-5=7,1-0=0``.

    Each column shows the two digits and the result digit; the carry (or borrow) from the
    column before is implicit, so ``2-5=7`` reads "2 minus 5, borrow one: 7".
    """
    columns = zip(digits(total)[::-1], digits(step.amount)[::-1], digits(result)[::-1],
                  strict=True)
    return ",".join(f"{a}{step.sign}{b}={c}" for a, b, c in columns)


def worked_solution(start: int, steps: list[Step], phrases: list[str]) -> str:
    """The worked solution: echo the start, then one line per step, then the box.

    Each step line first echoes the story's phrase for that step, then computes with every
    number written fixed width, least-significant digit first.
    """
    lines = [f"has {start}"]
    total = start
    for step, phrase in zip(steps, phrases, strict=True):
        result = apply(total, step)
        lines.append(phrase)
        lines.append(column_sum(total, step, result))
        total = result
    lines.append(f"\\boxed{{{total}}}")
    return "\n".join(lines)


def story(name: str, item: str, start: int, steps: list[Step],
          rng: random.Random) -> tuple[str, list[str]]:
    """The word problem for a start count and its steps, and the phrase used for each step."""
    pronoun = PRONOUNS.get(name, "He")
    sentences, phrases = [f"{name} has {start} {item}."], []
    for index, step in enumerate(steps):
        phrase = rng.choice(GAIN_PHRASES if step.sign == "+" else LOSS_PHRASES)
        phrases.append(phrase.format(n=step.amount))
        connector = rng.choice(CONNECTORS) if index else ""
        subject = pronoun if not connector else pronoun.lower()
        sentences.append(f"{connector}{subject} {phrases[-1]}.")
    sentences.append(f"How many {item} now?")
    return " ".join(sentences), phrases


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


def generate_problem(rng: random.Random, num_steps: int, max_operand: int, index: str) -> Problem:
    """One seeded problem with ``num_steps`` operations on numbers up to ``max_operand``."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    start = rng.randint(1, max_operand)
    steps = random_steps(rng, start, num_steps, max_operand)
    final = start
    for step in steps:
        final = apply(final, step)
    text, phrases = story(name, item, start, steps, rng)
    return Problem(
        id=f"arith-{index}",
        problem=text,
        answer=str(final),
        solution=worked_solution(start, steps, phrases),
        source=f"arithmetic-{num_steps}step",
    )


@dataclass(frozen=True)
class ArithmeticConfig:
    """How the default problems are generated.

    min_steps, max_steps: the difficulty knob, operations per problem (uniform in the range).
    max_operand: largest number a story mentions.
    train_size, held_out_size, test_size: problems per split.
    seed: one seed for all three splits (each split derives its own).
    """

    min_steps: int = 1
    max_steps: int = 4
    max_operand: int = 99
    train_size: int = 20_000
    held_out_size: int = 200
    test_size: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError(
                f"min_steps={self.min_steps}, max_steps={self.max_steps}: need 1 <= min <= max"
            )
        if not 1 <= self.max_operand <= MAX_TOTAL:
            raise ValueError(f"max_operand={self.max_operand} must lie in [1, {MAX_TOTAL}]")
        for name in ("train_size", "held_out_size", "test_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")


SPLITS = ("train", "held_out", "test")


def generate_splits(config: ArithmeticConfig) -> dict[str, list[Problem]]:
    """Disjoint train / held_out / test problems (no problem text appears in two splits).

    Evaluation splits are drawn first so the training split is the one that gives way on a
    collision; each split has its own seeded stream, so changing train_size leaves the
    evaluation problems unchanged.
    """
    sizes = {"test": config.test_size, "held_out": config.held_out_size,
             "train": config.train_size}
    seen: set[str] = set()
    splits: dict[str, list[Problem]] = {}
    for split in ("test", "held_out", "train"):
        rng = random.Random(f"{config.seed}/{split}")
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
            num_steps = rng.randint(config.min_steps, config.max_steps)
            problem = generate_problem(
                rng, num_steps, config.max_operand, f"{split}-{config.seed}-{len(problems)}"
            )
            if problem.problem not in seen:
                seen.add(problem.problem)
                problems.append(problem)
        splits[split] = problems
    return {split: splits[split] for split in SPLITS}
