"""The one math grader: evaluation accuracy and the RL reward both come from here.

A response is graded in two steps.

1. Extraction (plain functions in this process). The *strict* answer is the content of the last
   complete ``\\boxed{...}`` (or ``\\fbox{...}``, or ``\\boxed 5``), else the rest of the line
   after the last ``####`` (GSM8K style). The *flexible* answer is the strict one if there is
   one, else the last number in the text (``-3``, ``0.5``, ``1,234``). ``Grade.method`` says which
   rule produced it: "boxed", "hash", "last_number", or None when there is no answer.
2. Comparison. An exact match after light normalisation (whitespace, thousands commas, a trailing
   ``.0``) counts as correct at once; anything else goes to math-verify (``parse`` then
   ``verify``), which knows ``\\frac{1}{2} == 0.5`` and ``x^2+1 == 1+x^2``.

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
from functools import lru_cache
from importlib import metadata
from pathlib import Path

logger = logging.getLogger(__name__)

# Bump when extraction, normalisation or comparison rules change.
RULES_VERSION = "distill-lab-grader/1"


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


# ----------------------------------------------------------------------------- extraction

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_HASH_LINE = re.compile(r"####([^\n]*)")
# A minus sign counts only when it is not a binary minus ("3-5" ends in 5, not -5).
_NUMBER = re.compile(r"(?:(?<![\w)}\]])-)?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?")
_COMMA_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_WHOLE_FLOAT = re.compile(r"(-?\d+)\.0+")


@dataclass(frozen=True)
class Extraction:
    """The answers found in one response; see the module docstring for the rules."""

    strict: str | None
    flexible: str | None
    method: str | None  # "boxed", "hash", "last_number" or None


def _clean(answer: str) -> str | None:
    """Drop surrounding space and a sentence-final period ("18." does not parse as 18)."""
    cleaned = answer.strip().removesuffix(".").strip()
    return cleaned or None


def _braced(text: str, open_index: int) -> str | None:
    """Content of the brace group opening at text[open_index], or None if it never closes."""
    depth = 0
    index = open_index
    while index < len(text):
        char = text[index]
        if char == "\\":  # \{ and \} are literal braces, not grouping
            index += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[open_index + 1 : index]
        index += 1
    return None


def _box_argument(text: str, end: int) -> str | None:
    """The argument of a box command ending at `end`: `{...}`, or one token as in `\\boxed 5`."""
    rest = text[end:]
    stripped = rest.lstrip()
    if stripped.startswith("{"):
        return _braced(text, end + len(rest) - len(stripped))
    if len(stripped) == len(rest):  # `\boxedx` is another command, not a box
        return None
    token = re.match(r"[^\s$]+", stripped)
    return token.group(0) if token else None


def last_boxed(text: str) -> str | None:
    """Content of the last complete, non-empty `\\boxed{...}` / `\\fbox{...}` in text.

    A box cut off by truncation (no closing brace) is skipped, so an earlier complete one counts.
    """
    for match in reversed(list(_BOX_COMMAND.finditer(text))):
        argument = _box_argument(text, match.end())
        if argument is not None and (answer := _clean(argument)) is not None:
            return answer
    return None


def _after_last_hash(text: str) -> str | None:
    lines = _HASH_LINE.findall(text)
    return _clean(lines[-1]) if lines else None


def _last_number(text: str) -> str | None:
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def extract_answers(response: str) -> Extraction:
    """Strict and flexible answers of one response, and the rule that produced them."""
    if (boxed := last_boxed(response)) is not None:
        return Extraction(boxed, boxed, "boxed")
    if (hashed := _after_last_hash(response)) is not None:
        return Extraction(hashed, hashed, "hash")
    if (number := _last_number(response)) is not None:
        return Extraction(None, number, "last_number")
    return Extraction(None, None, None)


def normalise(answer: str) -> str:
    """The form compared for an exact match: no whitespace, `1,234` → `1234`, `51.0` → `51`."""
    text = "".join(answer.split()).removesuffix(".")
    if _COMMA_NUMBER.fullmatch(text):
        text = text.replace(",", "")
    if whole := _WHOLE_FLOAT.fullmatch(text):
        text = whole.group(1)
    return text


def _for_math_verify(answer: str) -> str:
    """Wrap an answer so math-verify finds it: bare `x^2+1` or `\\sqrt{2}` parse to nothing.

    A final period goes: math-verify reads `\\boxed{18.}` as the string "18.", not the number 18.
    """
    return "\\boxed{" + answer.strip().removesuffix(".") + "}"


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
        if not self._finalizer.alive:
            raise RuntimeError("this Grader is closed: create a new Grader to grade more responses")
        _check_inputs(responses, gold_answers)
        timeout_s = self.timeout_s if timeout_s is None else _check_timeout(timeout_s)
        extractions = [extract_answers(response) for response in responses]
        verdicts: dict[int, tuple[bool, bool]] = {}  # index -> (correct, timed_out)
        # Samples of one problem often agree, so each distinct (answer, gold) pair is verified once.
        to_verify: dict[tuple[str, str], list[int]] = {}
        for index, (found, gold) in enumerate(zip(extractions, gold_answers, strict=True)):
            if found.flexible is None:
                verdicts[index] = (False, False)
            elif normalise(found.flexible) == normalise(gold):
                verdicts[index] = (True, False)
            else:
                pair = (_for_math_verify(found.flexible), _for_math_verify(gold))
                to_verify.setdefault(pair, []).append(index)
        if to_verify:
            verdicts.update(self._verify(to_verify, timeout_s))
        return [_grade_from(found, *verdicts[i]) for i, found in enumerate(extractions)]

    def _verify(
        self, to_verify: dict[tuple[str, str], list[int]], timeout_s: float
    ) -> dict[int, tuple[bool, bool]]:
        pairs = list(to_verify)
        jobs = [(job, answer, gold) for job, (answer, gold) in enumerate(pairs)]
        with self._lock:
            outcomes = self._pool.run(jobs, timeout_s)
        return {index: outcomes[job] for job, pair in enumerate(pairs) for index in to_verify[pair]}


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
