"""The one math grader: evaluation accuracy and the RL reward both come from here.

A response is graded in three steps.

1. Extraction (plain functions in this process). The *strict* answer is the final answer in
   boxes: the last complete, non-empty ``\\boxed{...}`` (or ``\\fbox{...}``, or ``\\boxed 5``)
   together with the boxes just before it that only connective text separates from it (commas,
   "and", "or", ``$``, ``\\quad``, ``x =``), as in ``\\boxed{2} and \\boxed{6}``. A box after
   other prose replaces the earlier ones. With no box, the strict answer is the rest of the line
   after the last ``####`` (GSM8K style). The *flexible* answer is the strict one if there is one,
   else the last number in the text, where a fraction (``\\frac{1}{2}``, ``1/2``), a mixed
   number (``7 1/2``), a root, a power (``2^{10}``, ``9\\pi``), scientific notation (``1e3``,
   ``2 \\times 10^{3}``) and a scale word (``2 million``) count whole, and a number in an
   exponent or subscript (``m^2``, ``x_3``) or glued to a variable (``3x``) is never taken.
   ``Grade.method`` says which rule produced it: "boxed", "hash", "last_number", or None when
   there is no answer.
2. Reading (plain functions here). Answer and gold are put in one form:
   - Digit groups merge only when they are real: ``1,350``, ``12,345,678``, ``1 000``,
     ``1\\,000``, ``10,\\!000``, ``10{,}000`` (a 1–3 digit head, then groups of exactly three).
     ``32, 349`` stays a pair; a space between digits that is not a group (``1 2``) makes the
     answer unreadable, so it is graded incorrect.
   - A decimal comma is read when the gold has no comma (so is no list, tuple or interval) and
     the comma cannot be a thousands group: ``3,5`` and ``1,35`` mean 3.5 and 1.35; ``1,350`` is
     always 1350. Against ``3, 5`` or ``(3, 5)``, ``3,5`` stays a pair. ``3{,}5`` is always 3.5.
   - Units are dropped when the gold is a number: ``18 dollars``, ``5\\text{ cm}``, ``15 m^2``,
     ``90^\\circ``, ``\\$18``; they are not converted (5 cm matches a gold of 5 m). A word counts
     as a unit in ``\\text{}`` or when it has three letters or more or is a known abbreviation
     (cm, kg, ft, ...); a lone letter such as ``x`` is a variable, never a unit.
   - A percent sign is read both ways and either may match: as a unit (``30\\%`` matches 30, as
     GSM8K's golds state percents) and as a value (``30\\%`` matches 0.3). So is a scale word
     (thousand, million, billion, trillion): ``2 \\text{ million}`` matches 2000000 and 2. In the
     gold it is the value: against a gold of ``2 million``, 2 is wrong.
   - A mixed number is one value: ``7 1/2``, ``7\\frac{1}{2}``, ``-7 \\tfrac12`` (a whole number,
     then a proper fraction) are ±15/2, never 71/2 or 7 * 1/2. ``7 3/2`` is no mixed number (two
     loose numbers, so incorrect) and ``7, 1/2`` is a list.
   - Against a numeric gold, scientific notation standing alone is a number: ``1e3`` = 1000,
     ``1.5E-3`` = 0.0015, but not inside a word (``ab1e3``, ``1e3x``). Against a gold with
     letters an ``e`` may be Euler's number, and the answer is left to math-verify.
     ``2 \\times 10^{3}`` is math-verify's own.
   - Against an interval gold, a one-variable inequality (``x \\le 2``, ``2 < x < 5``) is read as
     the interval it describes.
   - Left as they are: a base subscript (``101_2`` matches ``101_2`` and, as math-verify drops
     the subscript, ``101``; never 5), and degrees against radians (``90^\\circ`` never matches
     ``\\frac{\\pi}{2}``). docs/grader.md says why.
3. Comparison. Against a numeric gold an answer is incorrect when it holds a hedge word
   (``6 \\text{ or more}``, "at least"), a word that is not a unit (``5 ab``: math-verify would
   drop it silently), or an equation whose numeric sides disagree (``2 = 6``, ``2+3 = 6``;
   ``3 \\times 5 = 15`` and ``x = 6`` are fine). Lists are compared item by item, never as one
   string (math-verify can read a malformed list as its last item alone): the items of a box
   (``2, 6``, ``2, and 6``, ``1; 2``, ``\\{1, 2\\}``, ``\\{1\\} \\cup \\{2\\}``, ``\\pm 3``) and of
   several boxes alike. Against a list or set gold (``2, 6``, ``(2, 2), (6, 2)``) the items must
   equal it as a set: order and repeats do not matter, a wrong, extra or missing item fails.
   Against a single gold every item must match it, so listing or boxing several candidates never
   earns credit. A tuple or interval is one value, compared coordinate by coordinate in order
   and with the same brackets; one box's bare list reads as a point against a point gold
   (``1, 2`` = ``(1, 2)``, never ``[1, 2]``), and the other way round.
   Answers longer than ``MAX_ANSWER_CHARS`` (all boxes together) are incorrect, and so is a list
   of more than 2m + 1 different items against a gold of m: it holds a wrong item or writes one
   value three ways, and this bounds the math-verify calls one response costs. Otherwise an
   exact match after normalisation counts at once, and anything else goes to math-verify
   (``parse`` then ``verify``), which knows ``\\frac{1}{2} == 0.5`` and ``x^2+1 == 1+x^2``.

The flexible rule is a diagnostic only (how many answers were right but not boxed): it must never
feed training or an RL reward, since a policy learns to end with a lucky number.
``check_training_rule(rule)`` says which rules may (``TRAINING_RULES``).

Why worker processes: math-verify bounds its sympy work with ``signal.alarm``, which raises off
the main thread (a Prefect task thread, a trainer's reward thread), and some model answers make
sympy run for minutes (``\\boxed{9^{9^{9^{9}}}}`` against gold ``1`` never finishes). So every
math-verify call runs in a persistent pool of spawned worker processes with math-verify's own
alarms switched off; the parent enforces a per-answer timeout and kills and replaces any worker
that overruns. That answer is graded incorrect with ``timed_out=True`` and the batch goes on.

Use one ``Grader`` for many batches (starting workers costs about a second)::

    with Grader() as grader:
        grades = grader.grade(responses, gold_answers)
        metrics = summarise(grades)   # strict_accuracy, flexible_accuracy, timeouts, no_answer

``grade(...)`` does the same for a single batch. Record ``GRADER_VERSION`` with every result:
numbers graded under different versions are not comparable.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from importlib import metadata
from pathlib import Path

logger = logging.getLogger(__name__)

# Bump when extraction, normalisation or comparison rules change.
RULES_VERSION = "distill-lab-grader/3"


def _installed_version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        raise ImportError(
            f"tasks.grader needs the '{distribution}' package, which is not installed: "
            "run `pip install math-verify`"
        ) from None


# latex2sympy2_extended does math-verify's LaTeX parsing, so its version changes results too.
GRADER_VERSION = (
    f"{RULES_VERSION}+math-verify/{_installed_version('math-verify')}"
    f"+latex2sympy2_extended/{_installed_version('latex2sympy2_extended')}"
)

DEFAULT_TIMEOUT_S = 5.0
MAX_CHUNK = 64
STARTUP_TIMEOUT_S = 120.0
# Longer answers are graded incorrect unread: no benchmark answer comes near, and a huge
# expression only buys sympy time.
MAX_ANSWER_CHARS = 1000

ANSWER_RULES = ("strict", "flexible")
# The rules whose verdicts may become a training signal (an RL reward, a data filter).
TRAINING_RULES = ("strict",)


def check_training_rule(rule: str) -> str:
    """Return `rule` if its verdicts may feed training or an RL reward, else raise ValueError."""
    if rule in TRAINING_RULES:
        return rule
    if rule == "flexible":
        raise ValueError(
            "answer_rule='flexible' is a diagnostic only and must not feed training or RL "
            "rewards: the last-number fallback rewards any response that ends with the right "
            "number. Use answer_rule='strict'"
        )
    raise ValueError(f"answer_rule={rule!r} is not one of {ANSWER_RULES}; use 'strict'")


# ----------------------------------------------------------------------------- extraction

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_HASH_LINE = re.compile(r"####([^\n]*)")
_SPACE = re.compile(r"\s*")
_BRACE_OR_ESCAPE = re.compile(r"[\\{}]")
# What may stand between two boxes of one final answer: "\boxed{2} and \boxed{6}",
# "$x_1 = \boxed{2}$, $x_2 = \boxed{6}$". Any other word ends the answer.
_CONNECTIVE = re.compile(
    r"(?:\s|[$,;&=~]|\\[()\[\],;: !]|\\\\|\\q?quad(?![A-Za-z])"
    r"|(?<![A-Za-z\\])(?:and|or)(?![A-Za-z])"
    r"|\\(?:text|textrm|mbox|mathrm)\s*\{\s*(?:and|or|,)?\s*\}"
    r"|(?<![A-Za-z\\])[A-Za-z](?:_\{?\w+\}?)?(?=\s*=))*",
    re.IGNORECASE,
)
# A number as the flexible rule reads it. A minus sign counts only when it is not a binary minus
# ("3-5" ends in 5, not -5); digits glued to a letter ("x2", "CO2") are not a number.
_NUMBER = r"(?:(?<![\w)}\]])-\s*)?(?<![A-Za-z\d.])(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?"
_BRACED_OR_DIGIT = r"(?:\{[^{}]*\}|\d)"
_ROOT = rf"\\sqrt\s*(?:\[[^\]]*\])?\s*{_BRACED_OR_DIGIT}"
# Words that scale the number before them, read as its value (`2 million` = 2000000).
_SCALE_EXPONENTS = {"thousand": 3, "million": 6, "billion": 9, "trillion": 12}
_SCALE_WORD = "|".join(_SCALE_EXPONENTS)
# What may follow a flexible number and belongs to it: scientific notation (`1e3`,
# `2 \times 10^{3}`), the fraction of a mixed number (`7 1/2`) or a plain one (`1/2`).
_NUMBER_TAIL = (
    rf"[eE][+-]?\d+(?![\w.])|\s*(?:\\times|\\cdot)\s*10\s*\^\s*{_BRACED_OR_DIGIT}"
    r"|[ \t]+\d+\s*/\s*\d+(?![\d./])|\s*/\s*\d+(?:\.\d+)?"
)
_FLEXIBLE_ATOM = re.compile(
    # A fraction counts whole, with the whole number of a mixed number (`7\frac{1}{2}`).
    rf"(?:{_NUMBER}\s*|(?<![\w)}}\]])-\s*)?\\[dt]?frac\s*{_BRACED_OR_DIGIT}\s*{_BRACED_OR_DIGIT}"
    rf"|(?:{_NUMBER})?\s*(?:{_ROOT}|\\pi(?![A-Za-z]))"
    # Atomic, so "35x" cannot back off to "3"; "3x" is a coefficient, "5 cm" a number and a unit.
    rf"|(?>{_NUMBER}(?:{_NUMBER_TAIL})?(?:\s*\^\s*{_BRACED_OR_DIGIT})?"
    rf"(?:\s*\\?%|\s+(?i:{_SCALE_WORD})(?![A-Za-z]))?)"
    r"(?![A-Za-z](?![A-Za-z]))"
)
# A number right after these is an exponent or a subscript, not an answer (m^2, x_{10}).
_SCRIPT_BEFORE = re.compile(r"[\^_]\s*\{?\s*$")


@dataclass(frozen=True)
class Extraction:
    """The answers found in one response; see the module docstring for the rules.

    parts: the separate boxes when the final answer has several (then `strict` joins them with
    ", "); empty for a single box, a #### line or a last number.
    """

    strict: str | None
    flexible: str | None
    method: str | None  # "boxed", "hash", "last_number" or None
    parts: tuple[str, ...] = ()


def _clean(answer: str) -> str | None:
    """Drop surrounding space and a sentence-final period ("18." does not parse as 18)."""
    cleaned = answer.strip().removesuffix(".").strip()
    return cleaned or None


def _closing_brace(text: str, open_index: int) -> int | None:
    """Index of the brace closing the group that opens at text[open_index]; None if none does."""
    depth = 0
    escaped_until = -1
    for brace in _BRACE_OR_ESCAPE.finditer(text, open_index):
        index = brace.start()
        if index < escaped_until:  # \{ and \} are literal braces, not grouping
            continue
        if brace.group(0) == "\\":
            escaped_until = index + 2
        elif brace.group(0) == "{":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return index
    return None


def _box_at(text: str, end: int) -> tuple[str, int] | None:
    """The argument of a box command ending at `end` (`{...}`, or one token as in `\\boxed 5`)
    and the index just past it; None for a box cut off by truncation."""
    start = _SPACE.match(text, end).end()
    if text.startswith("{", start):
        close = _closing_brace(text, start)
        return None if close is None else (text[start + 1 : close], close + 1)
    if start == end:  # `\boxedx` is another command, not a box
        return None
    token = re.compile(r"[^\s$]+").match(text, start)
    return (token.group(0), token.end()) if token else None


def last_boxed(text: str) -> str | None:
    """Content of the last complete, non-empty `\\boxed{...}` / `\\fbox{...}` in text.

    A box cut off by truncation (no closing brace) is skipped, so an earlier complete one counts.
    """
    for match in reversed(list(_BOX_COMMAND.finditer(text))):
        found = _box_at(text, match.end())
        if found is not None and (answer := _clean(found[0])) is not None:
            return answer
    return None


def final_boxes(text: str) -> list[str]:
    """The boxes of the final answer: the last complete, non-empty box and the boxes before it
    that only connective text separates from it ("\\boxed{2} and \\boxed{6}"), in order."""
    run: list[str] = []
    run_start = len(text)
    for match in reversed(list(_BOX_COMMAND.finditer(text))):
        found = _box_at(text, match.end())
        if found is None or (answer := _clean(found[0])) is None:
            continue
        if found[1] > run_start:  # this box contains the run: it is the answer
            run = []
        elif run and not _CONNECTIVE.fullmatch(text, found[1], run_start):
            break
        run.insert(0, answer)
        run_start = match.start()
    return run


def _after_last_hash(text: str) -> str | None:
    lines = _HASH_LINE.findall(text)
    return _clean(lines[-1]) if lines else None


def _last_number(text: str) -> str | None:
    """The last number, fraction, root or power in text that is not an exponent or subscript."""
    last = None
    for atom in _FLEXIBLE_ATOM.finditer(text):
        if not _SCRIPT_BEFORE.search(text, max(0, atom.start() - 8), atom.start()):
            last = atom.group(0).strip()
    return last


def extract_answers(response: str) -> Extraction:
    """Strict and flexible answers of one response, and the rule that produced them."""
    if boxes := final_boxes(response):
        joined = ", ".join(boxes)
        return Extraction(joined, joined, "boxed", tuple(boxes) if len(boxes) > 1 else ())
    if (hashed := _after_last_hash(response)) is not None:
        return Extraction(hashed, hashed, "hash")
    if (number := _last_number(response)) is not None:
        return Extraction(None, number, "last_number")
    return Extraction(None, None, None)


# ----------------------------------------------------------------------------- reading answers

# Digit-group separators that never separate list items: "1 000", "1\,000", "10,\!000",
# "10{,}000". The same separator must repeat ("1 000,000" is not one number).
_GROUP_SEPARATOR = r"(?: |\u2009|\u202f|\u00a0|~|\\[,;: ]|,\\!|\{,\})"
_SPACED_GROUPS = re.compile(
    rf"(?<![\d.,])([1-9]\d{{0,2}})({_GROUP_SEPARATOR})(\d{{3}}(?:\2\d{{3}})*)(?![\d.,])"
)
_LATEX_DECIMAL_COMMA = re.compile(r"(?<=\d)\{,\}(?=\d)")
_THOUSANDS = re.compile(r"(-?)([1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?)((?:\\%)?)")
_DECIMAL_COMMA = re.compile(r"(-?\d+),(\d+)((?:\\%)?)")
_WHOLE_FLOAT = re.compile(r"(-?\d+)\.0+")
_LOOSE_DIGITS = re.compile(r"\d(?:\s|\\[,;: !]|~)+\d")
_CURRENCY = re.compile(r"^(-?)\s*(?:\\\$|\$|€|£|¥|\\euro|\\pounds)\s*")
_PERCENT_WORD = re.compile(
    r"\s*(?:\\%|%|\\text\s*\{\s*\\?%\s*\}|\\(?:text|mbox|textrm)\s*\{\s*percent\s*\}|percent)$"
)
_TEXT_WRAPPED = re.compile(r"\\(?:text|textrm|mbox|textnormal)\s*\{\s*([-\d][^{}]*)\}")
_COMMAND = re.compile(r"\\[A-Za-z]+")
_BARE_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")
_BARE_LETTERS = re.compile(r"(?<![\\A-Za-z])[A-Za-z]+")
_WORDY_TEXT = re.compile(r"\\(?:text\w*|mbox|mathrm)\s*\{[^{}\d]*\}")
_TEXT_CONTENT = re.compile(r"\\(?:text\w*|mbox|mathrm|operatorname)\s*\{([^{}]*)\}")
# "and" / "or" between two items make a list, as math-verify reads "2 and 6". A comma before
# the word is part of it: "19, 46, and 82" must become "19, 46, 82", since math-verify reads the
# doubled comma of "19, 46,, 82" as the last item alone.
_LIST_WORD = re.compile(
    r"\s*,?\s*(?:\\(?:text|mbox|textrm)\s*\{\s*(?:and|or)\s*\}|(?<![A-Za-z\\])(?:and|or)(?![A-Za-z])"
    r"|\\(?:lor|vee|land|wedge)(?![A-Za-z]))\s*"
)
# Words that turn a value into a hedge or a range: "6 or more", "at least 6", "not 6".
_HEDGE_WORDS = frozenset(
    "or and nor not no either neither more less than least most maybe perhaps possibly "
    "probably between except unless all any none".split()
)
# Bare words under three letters that are units; any word in \text{} may be one.
_SHORT_UNITS = frozenset(
    "m cm mm km g kg mg s ms h hr l ml ft in yd mi lb oz sq pm am".split()
)
_UNIT_WORD = (
    r"\\(?:text|textrm|textnormal|mathrm|mbox|operatorname)\s*\{[^{}\d]*\}"
    r"|(?<![\\A-Za-z])[A-Za-z]+|\(\s*[A-Za-z]+(?:\s+[A-Za-z]+)*\s*\)"
    r"|\^\s*(?:\{\s*\\circ\s*\}|\\circ)|°|\\circ|\\degree"
)
_UNIT_MORE = rf"{_UNIT_WORD}|\^\s*(?:\{{\s*[23]\s*\}}|[23])|/|\\cdot"
_UNIT_GAP = r"(?:\s|\\[,;: !]|~)*"
_UNIT_TAIL = re.compile(rf"{_UNIT_GAP}(?:{_UNIT_WORD})(?:{_UNIT_GAP}(?:{_UNIT_MORE}))*{_UNIT_GAP}$")
# A mixed number: a whole number, then a proper fraction (`7 1/2`, `7\frac{1}{2}`, `7 \tfrac12`).
_FRACTION_PART = r"(?:\{\s*(\d+)\s*\}|(\d))"
_MIXED_SLASH = re.compile(r"(-?)\s*(\d+)(?:\s|\\[,;: !]|~)+(\d+)\s*/\s*(\d+)")
_MIXED_FRAC = re.compile(
    rf"(-?)\s*(\d+){_UNIT_GAP}\\[dt]?frac\s*{_FRACTION_PART}\s*{_FRACTION_PART}"
)
# Scientific notation as a standalone token (`1e3`, `1.5E-3`), never inside a word (`ab1e3`).
_E_NOTATION = re.compile(r"(?<![\w.\\])(\d+(?:\.\d+)?)[eE]([+-]?\d+)(?![\w.])")
MAX_E_EXPONENT = 100  # a longer decimal buys nothing but sympy time
# A number with a scale word: `2 million`, `1.5 \text{ billion}`, `3\text{thousand}`.
_SCALED = re.compile(
    rf"(-?)\s*(\d{{1,3}}(?:,\d{{3}})+|\d+)(\.\d+)?\s*(?:\\(?:text|textrm|mbox|mathrm)\s*\{{\s*"
    rf"({_SCALE_WORD})\s*\}}|({_SCALE_WORD})(?![A-Za-z]))",
    re.IGNORECASE,
)


def _merge_groups(text: str) -> str:
    """`1 000` → `1000`, `10,\\!000` → `10000`, `3{,}5` → `3.5`; a plain comma group waits for
    `_lone_number`, since "1,234" in a list may be a pair."""
    merged = _SPACED_GROUPS.sub(lambda m: m.group(1) + m.group(3).replace(m.group(2), ""), text)
    return _LATEX_DECIMAL_COMMA.sub(".", merged)


def _drop_spaces(text: str) -> str:
    """Whitespace goes, except between two digits, where it keeps `1 2` from becoming 12."""
    return re.sub(r"(?<=\d)\s+(?=\d)", " ", re.sub(r"(?<!\d)\s+|\s+(?!\d)", "", text))


def normalise(answer: str) -> str:
    """The form compared for an exact match: no spaces, `1,234` → `1234`, `51.0` → `51`."""
    text = _merge_groups(answer.strip().removesuffix(".").strip())
    if thousands := _THOUSANDS.fullmatch(text):  # before spaces go: "32, 349" is a pair
        text = "".join(thousands.groups()).replace(",", "")
    text = _drop_spaces(text)
    if whole := _WHOLE_FLOAT.fullmatch(text):
        text = whole.group(1)
    return text


def _words(text: str) -> set[str]:
    """Lower-case words of two letters or more, bare or inside `\\text{}`; commands excluded."""
    inside = " ".join(_TEXT_CONTENT.findall(text))
    outside = _TEXT_CONTENT.sub(" ", text)
    found = re.findall(r"[A-Za-z]{2,}", inside) + _BARE_WORD.findall(outside)
    return {word.lower() for word in found}


def _is_numeric(text: str) -> bool:
    """True when text has digits and no variables or words (`\\frac{1}{2}`, `2\\pi`, `-3`)."""
    return bool(re.search(r"\d", text)) and not re.search(r"[A-Za-z]", _COMMAND.sub("", text))


def _strip_unit(text: str) -> str:
    """`18 dollars` → `18`, `5\\text{ cm}^2` → `5`, `90^\\circ` → `90`; text without a numeric
    head or with a word that is not a unit (`2x`, `6 or more`) comes back unchanged."""
    tail = _UNIT_TAIL.search(text)
    if tail is None or not _is_numeric(head := text[: tail.start()].strip()):
        return text
    inside = " ".join(_TEXT_CONTENT.findall(tail.group(0)))
    bare = _BARE_LETTERS.findall(_TEXT_CONTENT.sub(" ", tail.group(0)))
    if any(word.lower() in _HEDGE_WORDS for word in re.findall(r"[A-Za-z]+", inside) + bare):
        return text
    if any(len(word) < 3 and word.lower() not in _SHORT_UNITS for word in bare):
        return text
    return head


def _mixed_number(text: str) -> str:
    """`7 1/2`, `7\\frac{1}{2}`, `-7 \\tfrac12` → `\\frac{15}{2}` (signed) when text is a whole
    number and a proper fraction; anything else as it is (`7 3/2` stays two loose numbers)."""
    for pattern in (_MIXED_SLASH, _MIXED_FRAC):
        if mixed := pattern.fullmatch(text.strip()):
            sign, whole, *fraction = mixed.groups()
            numerator, denominator = (int(part) for part in fraction if part is not None)
            if 0 < numerator < denominator:
                return f"{sign}\\frac{{{int(whole) * denominator + numerator}}}{{{denominator}}}"
    return text


def _scientific(text: str) -> str:
    """`1e3` → `1000`, `1.5e-3` → `0.0015` wherever the notation stands alone (never in `ab1e3`).
    Only for an answer against a numeric gold, where an `e` cannot be Euler's number."""

    def as_decimal(number: re.Match) -> str:
        if abs(int(number.group(2))) > MAX_E_EXPONENT:
            return number.group(0)
        return f"{Decimal(number.group(0)):f}"

    return _E_NOTATION.sub(as_decimal, text)


def _scaled_value(answer: str) -> str | None:
    """`2 million` → `2000000`, `\\$1.5 \\text{ billion} dollars` → `1500000000 dollars`; None
    unless answer starts with a number and a scale word."""
    text = _CURRENCY.sub(r"\1", answer.strip())
    if wrapped := _TEXT_WRAPPED.fullmatch(text):
        text = wrapped.group(1).strip()
    if (scaled := _SCALED.match(text)) is None:
        return None
    sign, whole, fraction, braced_word, bare_word = scaled.groups()
    exponent = _SCALE_EXPONENTS[(braced_word or bare_word).lower()]
    value = Decimal(whole.replace(",", "") + (fraction or "")).scaleb(exponent)
    return f"{sign}{value:f}{text[scaled.end():]}"


def _for_math_verify(answer: str) -> str:
    """Wrap an answer so math-verify finds it: bare `x^2+1` or `\\sqrt{2}` parse to nothing.

    A final period goes: math-verify reads `\\boxed{18.}` as the string "18.", not the number 18.
    """
    return "\\boxed{" + answer.strip().removesuffix(".") + "}"


def _canonical_gold(gold: str) -> str:
    """The gold in the form answers are read against (currency, groups, percent, units); a
    scale word in the gold is its value (`2 million` is 2000000)."""
    return _canonical(_scaled_value(gold) or gold, numeric_gold=True, decimal_comma=False)


def _canonical(answer: str, *, numeric_gold: bool, decimal_comma: bool) -> str:
    """One answer in the form compared: see "Reading" in the module docstring."""
    text = answer.strip().removesuffix(".").strip()
    if wrapped := _TEXT_WRAPPED.fullmatch(text):  # \text{18 dollars}
        text = wrapped.group(1).strip()
    text = _merge_groups(_CURRENCY.sub(r"\1", text))
    text = _PERCENT_WORD.sub(r"\\%", text)
    if numeric_gold:
        text = _strip_unit(text)
    text = _mixed_number(text)
    text = _LIST_WORD.sub(", ", text) if _LIST_WORD.search(text) and _between_items(text) else text
    if _THOUSANDS.fullmatch(text):
        return _lone_number(text)
    if decimal_comma and (decimal := _DECIMAL_COMMA.fullmatch(text)):
        return f"{decimal.group(1)}.{decimal.group(2)}{decimal.group(3)}"
    return text


def _lone_number(text: str) -> str:
    """`1,000` → `1000` when the comma number is all of text; anything else as it is."""
    thousands = _THOUSANDS.fullmatch(text.strip())
    return "".join(thousands.groups()).replace(",", "") if thousands else text


def _between_items(text: str) -> bool:
    """True when every "and"/"or" in text has an item on both sides ("2 or 6", not "6 or more")."""
    pieces = _LIST_WORD.split(text)
    return all(piece.strip() and not (_words(piece) & _HEDGE_WORDS) for piece in pieces)


def _split_top_level(text: str, separator: str) -> list[str]:
    """Split at `separator` outside any (), [], {}, \\{\\} or \\left...\\right group; an escaped
    character (the thin space `\\,`, `\\;`) never separates."""
    pieces, depth, start, index = [], 0, 0, 0
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text):
            if text[index + 1] in "{}":
                depth += 1 if text[index + 1] == "{" else -1
            index += 2
            continue
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == separator and depth == 0:
            pieces.append(text[start:index].strip())
            start = index + 1
        index += 1
    pieces.append(text[start:].strip())
    return pieces


# Sizing commands (`\\left(`, `\\bigl[`) say nothing about structure.
_SIZING = re.compile(r"\\(?:left|right|[bB]igg?[lr]?)\s*(?=[()\[\]]|\\[{}])")
_PLUS_MINUS = re.compile(r"\\(?:pm|mp)(?![A-Za-z])|\u00b1|\u2213")
_SET_UNION = re.compile(r"\\cup(?![A-Za-z])")


def _closes_at_end(text: str) -> bool:
    """True when text opens with a bracket or set brace that closes at its very end: `(1, 2)`,
    `[0, 1)`, `\\{1, 2\\}`, but not `(1, 2) \\cup (3, 4)`."""
    if not text.startswith(("(", "[", "\\{")):
        return False
    depth, index = 0, 0
    while index < len(text):
        token = text[index : index + 2] if text[index] == "\\" else text[index]
        if token in ("(", "[", "{", "\\{"):
            depth += 1
        elif token in (")", "]", "}", "\\}"):
            depth -= 1
            if depth == 0:
                return index + len(token) == len(text)
        index += len(token)
    return False


def _items(text: str) -> list[str]:
    """The items of a list or set, in order: `2, 6`, `1; 2`, `\\{1, 2\\}`, `\\{1\\} \\cup \\{2\\}`,
    and `\\pm 3` (3 and -3); `[text]` for a single value. A tuple or interval (`(1, 2)`,
    `[0, 1)`) is a single value, compared coordinate by coordinate (`_tuple`)."""
    plain = _SIZING.sub("", text).strip()
    sets = [piece.strip() for piece in _SET_UNION.split(plain)]
    if all(piece.startswith("\\{") and _closes_at_end(piece) for piece in sets):
        pieces = [item for piece in sets for item in _separated(piece[2:-2])]
    else:
        pieces = _separated(plain)
    items = [signed for piece in pieces for signed in _plus_minus(piece)]
    return items if len(items) > 1 else [text]


def _separated(text: str) -> list[str]:
    """Top-level comma-separated pieces; semicolons separate when there is no comma (`1; 2`)."""
    pieces = _split_top_level(text, ",")
    if len(pieces) == 1:
        pieces = _split_top_level(text, ";")
    return [piece for piece in pieces if piece]


def _plus_minus(piece: str) -> list[str]:
    """`\\pm 3` → `3`, `- 3`; `1 \\pm \\sqrt{2}` → `1 + \\sqrt{2}`, `1 - \\sqrt{2}`. A piece with
    two or more signs stays whole (math-verify reads it)."""
    if len(_PLUS_MINUS.findall(piece)) != 1:
        return [piece]
    before, after = _PLUS_MINUS.split(piece)
    return [f"{before}+{after}" if before.strip() else after.strip(), f"{before}-{after}"]


def _tuple(text: str) -> tuple[str, list[str], str] | None:
    """(opening bracket, coordinates, closing bracket) of a tuple or interval of two or more
    coordinates (`(1, 2)`, `[0, 1)`, `\\left(1, 2\\right)`); None for anything else."""
    plain = _SIZING.sub("", text).strip()
    if not plain.startswith(("(", "[")) or not _closes_at_end(plain):
        return None
    coordinates = _split_top_level(plain[1:-1], ",")
    return (plain[0], coordinates, plain[-1]) if len(coordinates) > 1 else None


# A one-variable inequality, read as the interval it describes when the gold is an interval.
_BOUND = r"(-?\s*(?:\d+(?:\.\d+)?|\\[dt]?frac\{[^{}]*\}\{[^{}]*\}|\\infty))"
_LESS = r"(<|\\le(?:q)?(?![A-Za-z]))"
_MORE = r"(>|\\ge(?:q)?(?![A-Za-z]))"
_ONE_SIDED = re.compile(rf"[a-z]\s*{_LESS}\s*{_BOUND}|[a-z]\s*{_MORE}\s*{_BOUND}")
_TWO_SIDED = re.compile(rf"{_BOUND}\s*{_LESS}\s*[a-z]\s*{_LESS}\s*{_BOUND}")


def _as_interval(answer: str) -> str:
    """`x \\le 2` → `(-\\infty, 2]`, `2 < x < 5` → `(2, 5)`; other text as it is."""
    if two := _TWO_SIDED.fullmatch(answer.strip()):
        low, low_op, high_op, high = two.groups()
        opening, closing = "(" if low_op == "<" else "[", ")" if high_op == "<" else "]"
        return f"{opening}{low}, {high}{closing}"
    if one := _ONE_SIDED.fullmatch(answer.strip()):
        below, bound, above, bound_below = one.groups()
        if below is not None:
            return f"(-\\infty, {bound}{')' if below == '<' else ']'}"
        return f"{'(' if above == '>' else '['}{bound_below}, \\infty)"
    return answer


# ----------------------------------------------------------------------------- comparison plans

# What decides one response, before math-verify runs: a small tree of checks.
#   ("pair", answer, gold): the two are equal (exact after `normalise`, else math-verify)
#   ("all", [plans]) / ("any", [plans]); ("fixed", verdict): decided without math-verify.
Plan = tuple


def _plan(parts: Sequence[str], gold: str) -> Plan:
    """How to decide whether the answer (one or several boxes) matches the gold. Lists are
    compared item by item, never as one string: math-verify can read a malformed list as its
    last item alone, and then "21, 36, 82" would equal "19, 46, 82"."""
    if sum(len(part) for part in parts) > MAX_ANSWER_CHARS:
        return ("fixed", False)
    gold = _canonical_gold(gold)
    gold_items = _items(gold)
    items = [item for part in parts for item in _answer_items(part, gold)]
    if len(parts) == 1 and (coordinates := _point_plan(items, gold_items)) is not None:
        return coordinates
    # Each item may cost a math-verify call per gold item. More different items than twice the
    # gold's (and one) means a wrong item or one value written three ways: not worth the calls.
    if len({normalise(item) for item in items}) > 2 * len(gold_items) + 1:
        return ("fixed", False)
    if len(gold_items) > 1:
        return _same_set_plan(items, [_canonical_gold(item) for item in gold_items])
    if len(items) == 1:
        return _value_plan(items[0], gold)
    # Several values against one gold: every one must be it, so listing candidates earns nothing.
    return ("all", [_value_plan(item, gold) for item in items])


def _answer_items(part: str, gold: str) -> list[str]:
    """The items of one box once list words, digit groups and decimal commas are read
    (`2 and 6` → 2, 6; `1,350` and `3,5` against 3.5 are one value); `[part]` for one value."""
    text = _canonical(part, numeric_gold=_is_numeric(gold), decimal_comma="," not in gold)
    items = _items(text)
    return items if len(items) > 1 else [part]


def _same_set_plan(items: list[str], gold_items: list[str]) -> Plan:
    """Every item matches some gold item and every gold item is matched by some item: order
    and repeats do not matter, a wrong, extra or missing item fails."""
    return ("all", [
        ("all", [_matches_one_plan(item, gold_items) for item in items]),
        ("all", [_matches_one_plan(gold, items, gold_first=True) for gold in gold_items]),
    ])


def _matches_one_plan(one: str, others: list[str], *, gold_first: bool = False) -> Plan:
    """`one` equals some of `others`. Written alike, it does at once: a right list of n items
    then costs no math-verify call instead of n * (n - 1)."""
    if normalise(one) in {normalise(other) for other in others}:
        return ("fixed", True)
    pairs = [(other, one) if gold_first else (one, other) for other in others]
    return ("any", [_value_plan(answer, gold) for answer, gold in pairs])


def _point_plan(items: list[str], gold_items: list[str]) -> Plan | None:
    """A bare list in one box against a point, or a point against a bare list (`\\boxed{1, 2}`
    and gold `(1, 2)`, or the other way round): the coordinates in order. Never an interval
    (`[1, 2]` needs its brackets), never separate boxes (the caller passes one box only)."""
    if len(gold_items) == 1 and (point := _point(gold_items[0], len(items))) is not None:
        return _coordinates_plan(items, point)
    if len(items) == 1 and (point := _point(items[0], len(gold_items))) is not None:
        return _coordinates_plan(point, gold_items)
    return None


def _point(text: str, count: int) -> list[str] | None:
    """The coordinates of text if it is a point `(a, b, ...)` of `count` > 1 coordinates."""
    shape = _tuple(text)
    if count < 2 or shape is None or (shape[0], shape[2]) != ("(", ")") or len(shape[1]) != count:
        return None
    return shape[1]


def _coordinates_plan(items: Sequence[str], gold_items: Sequence[str]) -> Plan:
    """Each coordinate equal to the gold's in the same place (the callers check the lengths)."""
    pairs = zip(items, gold_items, strict=True)
    return ("all", [_value_plan(item, _canonical_gold(gold)) for item, gold in pairs])


def _value_plan(answer: str, gold: str) -> Plan:
    """One answer against one (canonical) gold. A number with a scale word reads both ways, as a
    percent does: `2 million` matches 2000000 (its value) and 2 (the word taken as a unit)."""
    if len(answer) > MAX_ANSWER_CHARS:
        return ("fixed", False)
    plan = _checked_plan(answer, gold)
    if _is_numeric(gold) and (value := _scaled_value(answer)) is not None:
        return ("any", [_checked_plan(value, gold), plan])
    return plan


def _checked_plan(answer: str, gold: str) -> Plan:
    """One reading of an answer against the gold: the guards, then equation sides, then
    readings."""
    numeric_gold = _is_numeric(gold)
    answer = _scientific(answer) if numeric_gold else answer
    answer = _canonical(answer, numeric_gold=numeric_gold, decimal_comma="," not in gold)
    if _LOOSE_DIGITS.search(answer):  # "1 2": neither 12 nor a list
        return ("fixed", False)
    if not _words(gold) and _words(answer) & _HEDGE_WORDS:
        return ("fixed", False)
    if numeric_gold:
        # math-verify drops text and unit-like words on its own ("5 ab" → 5, "2 cm × 3 cm"
        # → 2); a number answer keeps no words once its unit is gone.
        answer = _WORDY_TEXT.sub(" ", answer).strip()
        if _BARE_WORD.search(_COMMAND.sub(" ", answer)) or not answer:
            return ("fixed", False)
    if gold.startswith(("(", "[", "\\left")):
        answer = _as_interval(answer)
    sides = _split_top_level(answer, "=")
    if numeric_gold and len(sides) > 1 and len(_split_top_level(answer, ",")) == 1:
        numeric_sides = [side for side in sides if _is_numeric(side)]
        if numeric_sides:  # "3 \times 5 = 15": every computed side must be the gold
            return ("all", [_reading_plan(side, gold) for side in numeric_sides])
    return _reading_plan(answer, gold)


def _reading_plan(answer: str, gold: str) -> Plan:
    """A tuple or interval is compared coordinate by coordinate, with the same brackets. A percent
    reads both ways: as a value (math-verify: 30% = 0.3) and as a unit (30% = 30)."""
    if (gold_shape := _tuple(gold)) is not None and (shape := _tuple(answer)) is not None:
        same_shape = (shape[0], shape[2], len(shape[1])) == (
            gold_shape[0], gold_shape[2], len(gold_shape[1])
        )
        return _coordinates_plan(shape[1], gold_shape[1]) if same_shape else ("fixed", False)
    pair = ("pair", answer, gold)
    if not (answer.endswith("\\%") or gold.endswith("\\%")):
        return pair
    unit = ("pair", answer.removesuffix("\\%").strip(), gold.removesuffix("\\%").strip())
    return ("any", [pair, unit])


def _pairs(plan: Plan) -> list[tuple[str, str]]:
    """Every (answer, gold) pair the plan may ask about."""
    if plan[0] == "pair":
        return [(plan[1], plan[2])]
    if plan[0] == "fixed":
        return []
    return [pair for child in plan[1] for pair in _pairs(child)]


def _decide(plan: Plan, equal: dict[tuple[str, str], tuple[bool, bool]]) -> tuple[bool, bool]:
    """(correct, timed_out) of a plan, given (correct, timed_out) for each of its pairs.
    timed_out is reported only when a timeout could have changed the verdict to correct."""
    if plan[0] == "pair":
        return equal[(plan[1], plan[2])]
    if plan[0] == "fixed":
        return plan[1], False
    outcomes = [_decide(child, equal) for child in plan[1]]
    combine = all if plan[0] == "all" else any
    correct = combine(correct for correct, _ in outcomes)
    return correct, not correct and any(timed_out for _, timed_out in outcomes)


# ----------------------------------------------------------------------------- grades


@dataclass(frozen=True)
class Grade:
    """The verdict on one response.

    timed_out: math-verify did not finish this answer within the timeout (or its worker process
    died on it); the answer then counts as incorrect.
    """

    strict_answer: str | None
    flexible_answer: str | None
    method: str | None  # "boxed", "hash", "last_number" or None
    strict_correct: bool
    flexible_correct: bool
    timed_out: bool = False


def summarise(grades: Sequence[Grade]) -> dict[str, float]:
    """Accuracy under both extraction rules, and counts of timeouts and answerless responses."""
    if not grades:
        raise ValueError("grades is empty: grade at least one response before summarising")
    count = len(grades)
    return {
        "strict_accuracy": sum(g.strict_correct for g in grades) / count,
        "flexible_accuracy": sum(g.flexible_correct for g in grades) / count,
        "timeouts": float(sum(g.timed_out for g in grades)),
        "no_answer": float(sum(g.flexible_answer is None for g in grades)),
    }


def _check_inputs(responses: Sequence[str], gold_answers: Sequence[str]) -> None:
    if len(responses) != len(gold_answers):
        raise ValueError(
            f"len(responses)={len(responses)} != len(gold_answers)={len(gold_answers)}: "
            "pass one gold answer per response (repeat a problem's gold for each sample)"
        )
    for index, (response, gold) in enumerate(zip(responses, gold_answers, strict=True)):
        if not isinstance(response, str):
            raise TypeError(f"responses[{index}] is {type(response).__name__}, expected str")
        if not isinstance(gold, str) or not gold.strip():
            raise ValueError(
                f"gold_answers[{index}]={gold!r} is not a non-empty string: fix that problem's "
                "answer field in the benchmark data"
            )


def _check_timeout(timeout_s: float) -> float:
    if not timeout_s > 0 or not math.isfinite(timeout_s):
        raise ValueError(f"timeout_s={timeout_s!r} must be a finite number of seconds > 0")
    return float(timeout_s)


class Grader:
    """A pool of math-verify worker processes; grade many batches, then close (or use `with`).

    workers: processes to run (default: CPU count, at most 8). timeout_s: per-answer limit on
    math-verify; each overrun costs a worker restart (about a second), so keep it well above the
    few milliseconds one comparison takes. Safe to call from any thread; concurrent calls take
    turns on the pool.
    """

    def __init__(self, workers: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S):
        workers = min(os.cpu_count() or 1, 8) if workers is None else workers
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers={workers!r} must be an int >= 1")
        self.timeout_s = _check_timeout(timeout_s)
        self._pool = _WorkerPool(workers)
        self._lock = threading.Lock()
        # Kills the workers if the Grader is dropped without close(); daemons die at exit anyway.
        self._finalizer = weakref.finalize(self, self._pool.close)

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker processes. Idempotent; waits for a grade() running in another thread."""
        with self._lock:
            self._finalizer()

    def grade(
        self,
        responses: Sequence[str],
        gold_answers: Sequence[str],
        *,
        timeout_s: float | None = None,
    ) -> list[Grade]:
        """One Grade per response, in order. timeout_s overrides the Grader's for this call."""
        timeout_s = self._start_call(responses, gold_answers, timeout_s)
        extractions = [extract_answers(response) for response in responses]
        plans = [
            ("fixed", False) if found.flexible is None
            else _plan(found.parts or (found.flexible,), gold)
            for found, gold in zip(extractions, gold_answers, strict=True)
        ]
        # Samples of one problem often agree, so each distinct pair is decided once.
        pairs = list(dict.fromkeys(pair for plan in plans for pair in _pairs(plan)))
        equal = self._equalities(pairs, timeout_s)
        return [
            _grade_from(found, *_decide(plan, equal))
            for found, plan in zip(extractions, plans, strict=True)
        ]

    def math_verify_direct(
        self,
        responses: Sequence[str],
        gold_answers: Sequence[str],
        *,
        timeout_s: float | None = None,
    ) -> list[bool]:
        """math-verify's own verdict on each whole response, without this grader's rules:
        ``verify(parse("\\boxed{gold}"), parse(response))``. A yardstick for measuring the
        grader (tests/tasks/test_grader.py, bench/grader.py), not a grade; a timeout is False."""
        timeout_s = self._start_call(responses, gold_answers, timeout_s)
        jobs = [
            (job, response, _for_math_verify(gold))
            for job, (response, gold) in enumerate(zip(responses, gold_answers, strict=True))
        ]
        outcomes = self._run(jobs, timeout_s)
        return [outcomes[job][0] for job in range(len(jobs))]

    def _start_call(
        self, responses: Sequence[str], gold_answers: Sequence[str], timeout_s: float | None
    ) -> float:
        """Refuse a closed Grader or bad inputs; return the timeout that applies."""
        if not self._finalizer.alive:
            raise RuntimeError("this Grader is closed: create a new Grader to grade more responses")
        _check_inputs(responses, gold_answers)
        return self.timeout_s if timeout_s is None else _check_timeout(timeout_s)

    def _equalities(
        self, pairs: list[tuple[str, str]], timeout_s: float
    ) -> dict[tuple[str, str], tuple[bool, bool]]:
        """(correct, timed_out) per (answer, gold): exact after `normalise`, else math-verify."""
        equal = {pair: (True, False) for pair in pairs if normalise(pair[0]) == normalise(pair[1])}
        to_verify = [pair for pair in pairs if pair not in equal]
        jobs = [
            (job, _for_math_verify(answer), _for_math_verify(gold))
            for job, (answer, gold) in enumerate(to_verify)
        ]
        outcomes = self._run(jobs, timeout_s)
        equal.update({pair: outcomes[job] for job, pair in enumerate(to_verify)})
        return equal

    def _run(self, jobs: list[Job], timeout_s: float) -> dict[int, tuple[bool, bool]]:
        if not jobs:
            return {}
        with self._lock:
            return self._pool.run(jobs, timeout_s)


def _grade_from(found: Extraction, correct: bool, timed_out: bool) -> Grade:
    return Grade(
        strict_answer=found.strict,
        flexible_answer=found.flexible,
        method=found.method,
        strict_correct=correct and found.strict is not None,
        flexible_correct=correct,
        timed_out=timed_out,
    )


def grade(
    responses: Sequence[str],
    gold_answers: Sequence[str],
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    workers: int | None = None,
) -> list[Grade]:
    """Grade one batch with a throwaway Grader; hold a Grader yourself to grade many batches."""
    with Grader(workers=workers, timeout_s=timeout_s) as grader:
        return grader.grade(responses, gold_answers)


# ----------------------------------------------------------------------------- worker pool

Job = tuple[int, str, str]  # (job id, wrapped answer, wrapped gold)


class _Worker:
    """One math-verify process, the chunk it is working through, and its clock.

    Workers run ``python -m tasks.grader --worker`` and speak JSON lines over their stdin and
    stdout. Unlike multiprocessing's spawn they never re-import the caller's ``__main__``, so a
    script without an ``if __name__ == "__main__":`` guard, or one piped on stdin, can grade.
    """

    def __init__(self) -> None:
        project_root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [project_root, env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tasks.grader", "--worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, start_new_session=True,
        )
        self.fd = self.process.stdout.fileno()
        self._buffer = b""
        self.ready = False
        self.chunk: deque[Job] = deque()
        self.last_event = time.monotonic()

    def send(self, chunk: list[Job]) -> None:
        self.chunk = deque(chunk)
        self.last_event = time.monotonic()
        try:
            self.process.stdin.write((json.dumps(chunk) + "\n").encode())
            self.process.stdin.flush()
        except BrokenPipeError:  # it died; the pool sees EOF on its output and replaces it
            pass

    def read_messages(self) -> list | None:
        """Complete messages now available; None when the worker has exited (EOF)."""
        data = os.read(self.fd, 1 << 16)
        if not data:
            return None
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        return [json.loads(line) for line in lines if line]

    def deadline(self, timeout_s: float) -> float | None:
        """When the current answer (or start-up) overruns; None while idle."""
        if not self.ready:
            return self.last_event + STARTUP_TIMEOUT_S
        return self.last_event + timeout_s if self.chunk else None

    def overdue(self, now: float, timeout_s: float) -> bool:
        deadline = self.deadline(timeout_s)
        return deadline is not None and now > deadline

    def kill(self) -> None:
        self.process.kill()
        self.wait_stopped()

    def ask_to_stop(self) -> None:
        """Close an idle worker's input (it exits at EOF); kill one that is starting or busy."""
        if not self.ready or self.chunk:
            self.process.kill()
            return
        try:
            self.process.stdin.close()
        except OSError:  # already dead: nothing to tell it
            pass

    def wait_stopped(self) -> None:
        try:
            self.process.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass


class _WorkerPool:
    """Hands chunks of jobs to workers; enforces the per-answer timeout by killing overruns."""

    def __init__(self, size: int):
        # Fresh interpreters, not fork: forking a parent that runs threads (Prefect, torch) can
        # deadlock.
        self._workers = [_Worker() for _ in range(size)]

    def close(self) -> None:
        # Ask all first, then wait: workers shut down in parallel.
        for worker in self._workers:
            worker.ask_to_stop()
        for worker in self._workers:
            worker.wait_stopped()
        self._workers = []

    def run(self, jobs: list[Job], timeout_s: float) -> dict[int, tuple[bool, bool]]:
        """(correct, timed_out) for each job id."""
        chunk = max(1, min(MAX_CHUNK, math.ceil(len(jobs) / (4 * len(self._workers)))))
        pending = deque(jobs[start : start + chunk] for start in range(0, len(jobs), chunk))
        verdicts: dict[int, tuple[bool, bool]] = {}
        try:
            while len(verdicts) < len(jobs):
                self._dispatch(pending)
                self._collect(verdicts, pending, timeout_s)
        except BaseException:
            # Busy workers would send stale results into the next batch: replace them.
            for slot, worker in enumerate(self._workers):
                if worker.chunk:
                    self._replace(slot)
            raise
        return verdicts

    def _dispatch(self, pending: deque[list[Job]]) -> None:
        for worker in self._workers:
            if pending and worker.ready and not worker.chunk:
                worker.send(pending.popleft())

    def _collect(self, verdicts: dict, pending: deque[list[Job]], timeout_s: float) -> None:
        deadlines = [d for w in self._workers if (d := w.deadline(timeout_s)) is not None]
        wait_s = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
        readable, _, _ = select.select([worker.fd for worker in self._workers], [], [], wait_s)
        for slot, worker in enumerate(self._workers):
            if worker.fd in readable:
                self._receive(slot, verdicts, pending)
        now = time.monotonic()
        for slot, worker in enumerate(self._workers):
            if worker.overdue(now, timeout_s):
                self._give_up_on_current(slot, verdicts, pending, "timed out")

    def _receive(self, slot: int, verdicts: dict, pending: deque[list[Job]]) -> None:
        worker = self._workers[slot]
        messages = worker.read_messages()
        if messages is None:
            self._give_up_on_current(slot, verdicts, pending, "died")
            return
        for message in messages:
            if message[0] == "ready":
                worker.ready = True
            elif message[0] == "result":
                verdicts[message[1]] = (message[2], False)
                worker.chunk.popleft()
            else:
                raise RuntimeError(f"a grader worker failed inside math-verify:\n{message[1]}")
            worker.last_event = time.monotonic()

    def _give_up_on_current(self, slot: int, verdicts: dict, pending: deque, why: str) -> None:
        """The worker's current answer is graded incorrect and timed out; the rest go back."""
        worker = self._workers[slot]
        if not worker.ready:
            raise RuntimeError(
                f"a grader worker {why} before it was ready (exit code "
                f"{worker.process.poll()}; its traceback is on stderr). Check that "
                f"`{sys.executable} -c 'import math_verify'` works"
            )
        if worker.chunk:
            job, answer, _ = worker.chunk.popleft()
            verdicts[job] = (False, True)
            logger.warning("grader worker %s on answer %.80r; replacing it", why, answer)
            if worker.chunk:
                pending.appendleft(list(worker.chunk))
        self._replace(slot)

    def _replace(self, slot: int) -> None:
        self._workers[slot].kill()
        self._workers[slot] = _Worker()


# ----------------------------------------------------------------------------- worker side

# Warm sympy's lazy paths before reporting ready, so a cold worker's first answer is not
# charged ~0.2 s of one-off set-up against the per-answer timeout.
_WARM_UP = (("\\frac{1}{2}", "0.5"), ("x^2+1", "1+x^2"), ("(1,2)", "(1, 2)"), ("5", "x=5"))


def _worker_main() -> None:
    """Worker process: read chunks of jobs, write one ["result", job id, correct] per job."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    # The protocol owns the real stdout; anything a library prints goes to stderr instead.
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    def send(*message: object) -> None:
        channel.write(json.dumps(message) + "\n")

    try:
        verify_one = _load_math_verify()
        for gold, answer in _WARM_UP:
            verify_one(_for_math_verify(answer), _for_math_verify(gold))
    except BaseException:
        send("error", traceback.format_exc())
        return
    send("ready")
    for line in sys.stdin:  # EOF: the parent closed our input or has gone
        for job, answer, gold in json.loads(line):
            try:
                correct = verify_one(answer, gold)
            except Exception:
                send("error", traceback.format_exc())
                return
            send("result", job, correct)


def _load_math_verify():
    """math-verify's parse + verify, with its signal alarms off: the parent enforces time."""
    from math_verify import parse, verify

    # With timeouts off math-verify warns once per process that we must enforce them; we do.
    logging.getLogger("math_verify").setLevel(logging.ERROR)

    @lru_cache(maxsize=4096)  # golds repeat: every sample of a problem shares one
    def parse_gold(gold: str):
        return parse(gold, parsing_timeout=None)

    def verify_one(answer: str, gold: str) -> bool:
        # An answer math-verify cannot parse is a wrong answer, so its parse errors stay off.
        parsed = parse(answer, parsing_timeout=None)
        return bool(verify(parse_gold(gold), parsed, timeout_seconds=None))

    return verify_one


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    _worker_main()
