"""Benchmark problems in, one normalised record out.

Every benchmark this project trains or evaluates on becomes a list of ``Problem`` records
(id, problem, answer, solution?, source), stored as JSONL by ``write_problems`` and read back by
``read_problems``. ``load_problems`` turns what users have on disk into that list:

- files: JSONL (``.jsonl``, or ``.json`` holding JSONL or one JSON array) and Parquet;
- a Hugging Face dataset name (``openai/gsm8k`` with ``config_name="main", split="test"``), read
  only from the local ``datasets`` cache: this module never downloads, online or offline;
- ``reasoning_gym:<name>`` (``reasoning_gym:chain_sum``), generated offline from a size and seed.

Record formats (``format=``; ``"auto"`` decides from the first record's fields, and picks
``aime`` over ``math`` when the answer is a number):

==============  ====================================================================
``gsm8k``       question, answer = "<worked solution>\\n#### <final>" (``1,350`` → ``1350``)
``math``        problem, solution, answer? (else the last ``\\boxed{...}`` of the solution)
``aime``        problem or question, answer (``23`` or ``23.0`` → ``"23"``), solution?
``deepscaler``  problem, answer, solution? (read exactly as ``aime``)
``problems``    this module's own normalised form, read strictly
==============  ====================================================================

Ids come from a record's ``id`` / ``unique_id`` / ``idx`` field, else ``<source>-<position>``
(the 1-based JSONL line, or the 0-based row of a Parquet file, JSON array or dataset).

Bad rows (malformed JSON, a missing answer, an empty problem, a duplicate id, a size over
``SIZE_LIMITS``) raise a ``ValueError`` naming the file, line or row, and field. With
``on_bad_row="skip"`` they are skipped instead and listed in ``LoadResult.skipped``, never
dropped silently.

Sizes are bounded when a file is read, so that one hostile or broken record cannot exhaust
memory later (a 50 MB problem line once grew an evaluation to 15.7 GB while it was tokenised): a
JSONL line over its byte limit is refused before it is decoded or parsed, and read past in
chunks, never held whole; problem, answer and solution texts have character limits. Each limit
is raised through its environment variable (``SIZE_LIMITS``). A JSONL file is read a line at a
time; a JSON array is parsed whole, so convert a large one to JSONL.

pyarrow (Parquet), ``datasets`` and ``reasoning_gym`` are imported only by the paths that need
them, so reading JSONL needs none of them.
"""

from __future__ import annotations

import importlib
import itertools
import json
import math
import numbers
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from tasks.files import atomic_open
from tasks.grader import last_boxed

FORMATS = ("gsm8k", "math", "aime", "deepscaler", "problems")
ON_BAD_ROW = ("error", "skip")
ID_FIELDS = ("id", "unique_id", "idx")
REASONING_GYM_PREFIX = "reasoning_gym:"
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
PARQUET_SUFFIXES = (".parquet",)
# An owner/name (or legacy bare name) as the Hugging Face Hub spells dataset ids.
_HF_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(?:/[A-Za-z0-9][\w.-]*)?")
_COMMA_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_SKIP_HINT = "fix the row, or pass on_bad_row='skip' to skip bad rows (they are listed in .skipped)"


# ----------------------------------------------------------------------------- size limits


@dataclass(frozen=True)
class SizeLimit:
    """The largest input of one kind that is read: its default and the environment variable
    that overrides it (read at each use, so a rerun with the variable set takes it)."""

    what: str  # as messages name it
    unit: str
    default: int
    env: str

    def value(self) -> int:
        text = os.environ.get(self.env)
        if text is None:
            return self.default
        if not text.strip().isdigit() or int(text) < 1:
            raise ValueError(f"${self.env}={text!r} is not a positive whole number of "
                             f"{self.unit}; set it to one (default {self.default:,}) or unset it")
        return int(text)

    def refusal(self, size: int, limit: int) -> str:
        return (f"is {size:,} {self.unit}, over the limit of {limit:,} for {self.what} "
                f"(shorten it, or raise the limit with ${self.env})")


# Generous for real math benchmarks: MATH problems are under 5,000 characters and their answers
# under 200; long chain-of-thought solutions reach about 100,000 characters. A line holds its
# record's problem, answer and solution (up to 4 bytes a character in UTF-8) with room to spare.
SIZE_LIMITS = {
    "line": SizeLimit("a JSONL line", "bytes", 1 << 20, "DISTILL_LAB_MAX_LINE_BYTES"),
    "problem": SizeLimit("a problem", "characters", 20_000, "DISTILL_LAB_MAX_PROBLEM_CHARS"),
    "answer": SizeLimit("an answer", "characters", 1_000, "DISTILL_LAB_MAX_ANSWER_CHARS"),
    "solution": SizeLimit("a solution", "characters", 200_000,
                          "DISTILL_LAB_MAX_SOLUTION_CHARS"),
}
_TEXT_FIELDS = ("problem", "answer", "solution")
_SKIP_CHUNK = 1 << 20  # bytes read at a time past a line over the limit


# ----------------------------------------------------------------------------- records


class _RowError(ValueError):
    """What is wrong with one record: the field (None for the record as a whole) and why."""

    def __init__(self, field: str | None, reason: str):
        self.field, self.reason = field, reason
        super().__init__(f"field '{field}': {reason}" if field else reason)


@dataclass(frozen=True)
class Problem:
    """One problem with its gold answer; the unit every later stage consumes.

    id: unique within its file. answer: the final answer as the grader compares it.
    solution: a worked solution where the benchmark has one. source: the benchmark's name.
    """

    id: str
    problem: str
    answer: str
    solution: str | None = None
    source: str = ""

    def __post_init__(self) -> None:
        for name in ("id", "problem", "answer"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise _RowError(name, f"must be a string, got {type(value).__name__} {value!r}")
            if not value.strip():
                raise _RowError(name, "is empty")
        if self.solution is not None and not isinstance(self.solution, str):
            raise _RowError("solution", f"must be a string or null, got {self.solution!r}")
        if not isinstance(self.source, str):
            raise _RowError("source", f"must be a string, got {self.source!r}")

    def to_dict(self) -> dict[str, str | None]:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> Problem:
        """The inverse of ``to_dict``; strict: unknown or missing fields raise ``ValueError``."""
        known = [field.name for field in fields(cls)]
        for name in record:
            if name not in known:
                raise _RowError(name, f"unknown field; a problem record has only {known}")
        for name in ("id", "problem", "answer"):
            if name not in record:
                raise _RowError(name, "missing")
        return cls(**record)


@dataclass(frozen=True)
class BadRow:
    """A record that could not become a Problem: where it is, which field, and why.

    line is the 1-based line of a JSONL file, or the 0-based index ``unit`` names otherwise
    ("row" of a Parquet file or dataset, "record" of a JSON array, "item" of a generator).
    field is None when the record as a whole is unreadable (not JSON, not an object).
    """

    file: str
    line: int
    field: str | None
    reason: str
    unit: str = "line"

    def __str__(self) -> str:
        where = f"{self.file}, {self.unit} {self.line}"
        if self.field is None:
            return f"{where}: {self.reason}"
        return f"{where}, field '{self.field}': {self.reason}"


@dataclass(frozen=True)
class LoadResult:
    """The problems loaded, the bad rows skipped (empty unless on_bad_row='skip'), the format."""

    problems: list[Problem]
    skipped: list[BadRow]
    format: str


# ----------------------------------------------------------------------------- own JSONL files


def write_problems(problems: Iterable[Problem], path: str | Path) -> Path:
    """Write problems as JSONL, atomically: a crash leaves the old file or none, never half of one.

    Duplicate ids are refused here, because ``read_problems`` would refuse the file later.
    """
    path = Path(path)
    lines, seen = [], set()
    for problem in problems:
        if problem.id in seen:
            raise ValueError(f"{path}: duplicate problem id {problem.id!r}; ids must be unique")
        seen.add(problem.id)
        lines.append(json.dumps(problem.to_dict(), ensure_ascii=False) + "\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as handle:
        handle.writelines(lines)
    return path


def read_problems(path: str | Path) -> list[Problem]:
    """Read a file written by ``write_problems``; any bad line raises ``ValueError``."""
    path = _existing_file(path)
    rows = _Rows(str(path), "line", _jsonl_records(path))
    return _collect(rows, "problems", path.stem, None, "error", allow_empty=True).problems


# ----------------------------------------------------------------------------- record formats


class _Fields(NamedTuple):
    problem: str
    answer: str
    solution: str | None


def _required(record: Mapping[str, Any], name: str) -> Any:
    value = record.get(name)
    if value is None:
        raise _RowError(name, f"missing (the record has fields {sorted(record)})")
    return value


def _text(record: Mapping[str, Any], name: str) -> str:
    value = _required(record, name)
    if not isinstance(value, str):
        raise _RowError(name, f"must be text, got {type(value).__name__} {value!r}")
    return value


def _optional_text(record: Mapping[str, Any], name: str) -> str | None:
    value = record.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _RowError(name, f"must be text, got {type(value).__name__} {value!r}")
    return value


def _canonical_scalar(name: str, value: Any) -> str:
    """Numbers as the grader expects them: 23 and 23.0 → "23", 0.5 → "0.5"; text stripped."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool):  # bool is an Integral, but True is no answer to a math problem
        raise _RowError(name, f"must be a number or text, got {value!r}")
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        if not math.isfinite(value):
            raise _RowError(name, f"must be a finite number, got {value!r}")
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    raise _RowError(name, f"must be a number or text, got {type(value).__name__} {value!r}")


def _gsm8k_fields(record: Mapping[str, Any]) -> _Fields:
    question = _text(record, "question")
    worked = _text(record, "answer")
    solution, marker, final = worked.rpartition("####")
    if not marker:
        raise _RowError("answer", "has no '#### <final answer>' line (is this really GSM8K?)")
    final = final.strip()
    if _COMMA_NUMBER.fullmatch(final):
        final = final.replace(",", "")
    return _Fields(question, final, solution.strip() or None)


def _math_fields(record: Mapping[str, Any]) -> _Fields:
    problem = _text(record, "problem")
    solution = _text(record, "solution")
    if record.get("answer") is not None:
        answer = _canonical_scalar("answer", record["answer"])
    elif (answer := last_boxed(solution)) is None:
        raise _RowError(
            "solution", "has no complete \\boxed{...} and the record has no 'answer' field"
        )
    return _Fields(problem, answer, solution)


def _answered_fields(record: Mapping[str, Any]) -> _Fields:
    if "problem" not in record and "question" not in record:
        raise _RowError("problem", f"missing, and no 'question' either (the record has fields "
                                   f"{sorted(record)})")
    problem_field = "problem" if "problem" in record else "question"
    answer = _canonical_scalar("answer", _required(record, "answer"))
    return _Fields(_text(record, problem_field), answer, _optional_text(record, "solution"))


_FIELD_READERS: dict[str, Callable[[Mapping[str, Any]], _Fields]] = {
    "gsm8k": _gsm8k_fields,
    "math": _math_fields,
    "aime": _answered_fields,
    "deepscaler": _answered_fields,
}


def detect_format(record: Mapping[str, Any]) -> str:
    """The format whose fields ``record`` has; ``ValueError`` when none fits or two do."""
    keys = set(record)
    if keys == {field.name for field in fields(Problem)}:
        return "problems"
    if {"problem", "question"} <= keys:
        raise _RowError(None, f"ambiguous format: fields {sorted(keys)} hold both 'problem' "
                        f"and 'question'; pass format=... one of {FORMATS}")
    if "question" in keys and isinstance(record.get("answer"), str) and "####" in record["answer"]:
        return "gsm8k"
    numeric_answer = isinstance(record.get("answer"), numbers.Real)
    if {"problem", "solution"} <= keys and not numeric_answer:
        return "math"  # MATH / MATH500 / DeepScaleR: the readers agree whenever an answer is given
    if keys & {"problem", "question"} and "answer" in keys:
        return "aime"
    raise _RowError(
        None, f"unknown format: fields {sorted(keys)}; pass format=... one of {FORMATS}"
    )


def _record_id(record: Mapping[str, Any], default: str) -> str:
    for name in ID_FIELDS:
        if record.get(name) is not None:
            return _canonical_scalar(name, record[name])
    return default


def _to_problem(record: Any, format: str, source: str, default_id: str) -> Problem:
    if not isinstance(record, Mapping):
        raise _RowError(None, f"is a JSON {type(record).__name__}, expected an object {{...}}")
    if format == "problems":
        problem = Problem.from_dict(record)
    else:
        found = _FIELD_READERS[format](record)
        problem = Problem(_record_id(record, default_id), found.problem, found.answer,
                          found.solution, source)
    _check_sizes(problem)
    return problem


def _check_sizes(problem: Problem) -> None:
    """Refuse a problem, answer or solution longer than its SIZE_LIMITS entry allows."""
    for name in _TEXT_FIELDS:
        text = getattr(problem, name)
        limit = SIZE_LIMITS[name].value()
        if text is not None and len(text) > limit:
            raise _RowError(name, SIZE_LIMITS[name].refusal(len(text), limit))


# ----------------------------------------------------------------------------- sources


@dataclass
class _Rows:
    """An opened source: its name in messages, what a position counts, and its records.

    records yields (position, record); an unreadable record arrives as a _RowError instance.
    """

    label: str
    unit: str
    records: Iterator[tuple[int, Any]]


def _existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file (looked in {Path.cwd()}); check the path")
    if path.is_dir():
        raise ValueError(f"{path}: is a directory; pass a .jsonl or .parquet file inside it")
    return path


def _jsonl_records(path: Path) -> Iterator[tuple[int, Any]]:
    # Bytes in, decoded per line: a bad byte then names its line instead of failing the file.
    limit = SIZE_LIMITS["line"].value()
    with path.open("rb") as handle:
        for number, raw in enumerate(_bounded_lines(handle, limit), start=1):
            if isinstance(raw, int):
                yield number, _RowError(None, SIZE_LIMITS["line"].refusal(raw, limit))
                continue
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                yield number, _RowError(None, f"is not valid UTF-8 ({error.reason})")
                continue
            if not text.strip():
                continue
            try:
                yield number, json.loads(text)
            except json.JSONDecodeError as error:
                yield number, _RowError(None, f"is not valid JSON ({error.msg}, column "
                                              f"{error.colno}); each line must be one object")
            except RecursionError:
                yield number, _RowError(None, "nests JSON too deeply to read; each line must be "
                                              "one flat problem object")


def _bounded_lines(handle: BinaryIO, limit: int) -> Iterator[bytes | int]:
    """Each line of handle, or for a line over limit bytes (its end of line not counted) its
    size: the rest of such a line is read in chunks and dropped, so it is never held whole."""
    while line := handle.readline(limit + 1):
        if len(line) <= limit or line.endswith(b"\n"):
            yield line
            continue
        size = len(line)
        while not line.endswith(b"\n") and (line := handle.readline(_SKIP_CHUNK)):
            size += len(line)
        yield size - line.endswith(b"\n") - line.endswith(b"\r\n")


def _json_array_records(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        records = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}, line {error.lineno}: not valid JSON ({error.msg}); "
                         "fix the file or convert it to JSONL") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text (byte {error.start}: {error.reason}); "
                         "save it as UTF-8 JSON") from None
    except RecursionError:
        raise ValueError(f"{path}: nests JSON too deeply to read; expected a list of flat "
                         "problem records") from None
    if not isinstance(records, list):
        raise ValueError(f"{path}: holds one JSON {type(records).__name__}; expected a list of "
                         "records or JSONL (one object per line)")
    yield from enumerate(records)


def _parquet_records(path: Path) -> Iterator[tuple[int, Any]]:
    parquet = _import_optional("pyarrow.parquet", f"reading {path}", "pyarrow")
    try:
        batches = parquet.ParquetFile(path).iter_batches()
    except Exception as error:  # pyarrow raises ArrowInvalid / OSError for a file it can't parse
        raise ValueError(f"{path}: not a readable Parquet file ({error}); check the file") from None
    index = itertools.count()
    for batch in batches:
        for record in batch.to_pylist():
            yield next(index), record


def _open_file(path: Path) -> _Rows:
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return _Rows(str(path), "row", _parquet_records(path))
    if suffix == ".json" and _starts_with_bracket(path):
        return _Rows(str(path), "record", _json_array_records(path))
    if suffix in JSONL_SUFFIXES:
        return _Rows(str(path), "line", _jsonl_records(path))
    raise ValueError(f"{path}: unsupported file type {suffix!r}; pass a JSONL "
                     f"({', '.join(JSONL_SUFFIXES)}) or Parquet (.parquet) file")


def _starts_with_bracket(path: Path) -> bool:
    """Whether a .json file holds one JSON array rather than JSONL."""
    with path.open("rb") as handle:
        start = handle.read(4096).removeprefix(b"\xef\xbb\xbf").lstrip()
    return start[:1] == b"["


def _import_optional(module: str, purpose: str, package: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"{purpose} needs the '{package}' package: pip install {package}"
        ) from None


def _open_cached_hf_dataset(
    name: str, config_name: str | None, split: str | None, cache_dir: str | Path | None
) -> _Rows:
    """A split of a Hugging Face dataset from the local ``datasets`` cache, never the network.

    load_dataset would ask the Hub first whenever offline mode is off (and hang about 50 s where
    the Hub is unreachable); the Cache builder is the one load_dataset itself falls back to
    offline, and it reads only the cache directory.
    """
    datasets = _import_optional(
        "datasets", f"loading the Hugging Face dataset '{name}'", "datasets"
    )
    from datasets.packaged_modules.cache.cache import Cache

    cache_dir = str(cache_dir if cache_dir is not None else datasets.config.HF_DATASETS_CACHE)
    try:
        builder = Cache(cache_dir=cache_dir, repo_id=name, dataset_name=name.split("/")[-1],
                        config_name=config_name, version="auto", hash="auto")
    except ValueError as error:
        raise FileNotFoundError(
            f"{name!r} is neither a file nor a Hugging Face dataset (config_name={config_name!r}) "
            f"in the local datasets cache {cache_dir}: {error}. This "
            f"loader never downloads: check the path, or run datasets.load_dataset('{name}', "
            f"{config_name!r}) once where the Hub is reachable, or pass a JSONL/Parquet export"
        ) from None
    splits = sorted(builder.info.splits or {})
    if split not in splits:
        raise ValueError(f"Hugging Face dataset '{name}': split={split!r} is not cached; "
                         f"pass split=... one of {splits}")
    label = f"{name}[{builder.config.name}/{split}]"
    return _Rows(label, "row", enumerate(builder.as_dataset(split=split)))


def _generate_reasoning_gym(name: str, size: int | None, seed: int,
                            generator_options: Mapping[str, Any]) -> _Rows:
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"{REASONING_GYM_PREFIX}{name}: pass size=<number of problems> (>= 1), "
                         f"got size={size!r}")
    if not isinstance(seed, int):
        raise ValueError(f"{REASONING_GYM_PREFIX}{name}: seed must be an integer, got {seed!r}")
    reasoning_gym = _import_optional(
        "reasoning_gym", f"generating {REASONING_GYM_PREFIX}{name}", "reasoning-gym"
    )
    try:
        dataset = reasoning_gym.create_dataset(name, size=size, seed=seed, **generator_options)
    except ValueError as error:  # "Dataset 'x' not registered"
        raise ValueError(f"{REASONING_GYM_PREFIX}{name}: {error}; pick a name from "
                         "reasoning_gym.factory.DATASETS, e.g. chain_sum or gsm_symbolic") from None
    except (TypeError, AssertionError) as error:  # an unknown or out-of-range setting
        raise ValueError(f"{REASONING_GYM_PREFIX}{name}: generator_options="
                         f"{dict(generator_options)!r} were refused: {error}") from None
    records = (
        (index, {"id": f"{name}-{seed}-{index}", "question": entry["question"],
                 "answer": entry["answer"]})
        for index, entry in enumerate(dataset)
    )
    return _Rows(f"{REASONING_GYM_PREFIX}{name}", "item", records)


# ----------------------------------------------------------------------------- the entry point


def load_problems(
    source: str | Path,
    *,
    format: str = "auto",
    benchmark_name: str | None = None,
    limit: int | None = None,
    on_bad_row: str = "error",
    config_name: str | None = None,
    split: str | None = None,
    cache_dir: str | Path | None = None,
    size: int | None = None,
    seed: int | None = None,
    generator_options: Mapping[str, Any] | None = None,
) -> LoadResult:
    """Problems from a file, a cached Hugging Face dataset or a reasoning_gym generator.

    source: a .jsonl / .json / .parquet path; ``owner/name`` of a Hugging Face dataset already in
      the local datasets cache (with config_name, split and optionally cache_dir, which defaults
      to HF_DATASETS_CACHE); or ``reasoning_gym:<name>`` (with size, seed (default 0) and
      generator_options, the generator's own settings, e.g. chain_sum's max_digits).
    format: one of FORMATS, or "auto" to decide from the first record's fields.
    benchmark_name: the Problem.source of every record and the prefix of generated ids
      (default: the file stem, the dataset's name, or the generator's name). The "problems"
      format keeps the ids and sources its file records.
    limit: stop after this many good problems.
    on_bad_row: "error" raises at the first bad row; "skip" skips bad rows (duplicate ids: keeps
      the first) and lists them in LoadResult.skipped.
    """
    _check_choice("format", format, ("auto", *FORMATS))
    _check_choice("on_bad_row", on_bad_row, ON_BAD_ROW)
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit={limit!r}: pass a positive integer, or None for all problems")
    rows, default_name = _open_source(
        source, config_name=config_name, split=split, cache_dir=cache_dir, size=size, seed=seed,
        generator_options=generator_options,
    )
    return _collect(rows, format, benchmark_name or default_name, limit, on_bad_row)


def _check_choice(argument: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{argument}={value!r}: pass one of {choices}")


def _open_source(source: str | Path, **options: Any) -> tuple[_Rows, str]:
    """The source opened for reading, and its default benchmark name."""
    text = str(source)
    kind = _source_kind(source)
    allowed = {"reasoning_gym": {"size", "seed", "generator_options"},
               "hf": {"config_name", "split", "cache_dir"}, "file": set()}[kind]
    for option, value in options.items():
        if value is not None and option not in allowed:
            raise ValueError(f"{option}={value!r} does not apply to {text!r}: it is for "
                             + ("reasoning_gym: sources"
                                if option in {"size", "seed", "generator_options"}
                                else "Hugging Face dataset names"))
    if kind == "reasoning_gym":
        name = text.removeprefix(REASONING_GYM_PREFIX)
        seed = 0 if options["seed"] is None else options["seed"]
        return _generate_reasoning_gym(name, options["size"], seed,
                                       options["generator_options"] or {}), name
    if kind == "hf":
        rows = _open_cached_hf_dataset(
            text, options["config_name"], options["split"], options["cache_dir"]
        )
        return rows, text.split("/")[-1]
    path = _existing_file(source)
    return _open_file(path), path.stem


def _source_kind(source: str | Path) -> str:
    """'file', 'hf' (a Hugging Face dataset name) or 'reasoning_gym'.

    A string is a file if it exists or looks like one; a Hub-style name otherwise. A missing
    file with a data suffix stays a file, so a typo reports "no such file", not a Hub lookup.
    """
    if isinstance(source, Path):
        return "file"
    if source.startswith(REASONING_GYM_PREFIX):
        return "reasoning_gym"
    looks_like_file = Path(source).suffix.lower() in (*JSONL_SUFFIXES, *PARQUET_SUFFIXES)
    if Path(source).exists() or looks_like_file or not _HF_NAME.fullmatch(source):
        return "file"
    return "hf"


def _first_record_format(rows: _Rows, format: str) -> tuple[str, list[tuple[int, Any]]]:
    """The format to read with, and the records consumed to find it (to be read again)."""
    seen: list[tuple[int, Any]] = []
    for position, record in rows.records:
        seen.append((position, record))
        if isinstance(record, Mapping):
            if format != "auto":
                return format, seen
            try:
                return detect_format(record), seen
            except _RowError as error:
                bad = BadRow(rows.label, position, None, str(error), rows.unit)
                raise ValueError(str(bad)) from None
    return format, seen


def _collect(
    rows: _Rows, format: str, source: str, limit: int | None, on_bad_row: str,
    allow_empty: bool = False,
) -> LoadResult:
    """Records → problems, checking each one and the uniqueness of ids on the way."""
    format, head = _first_record_format(rows, format)
    problems: list[Problem] = []
    skipped: list[BadRow] = []
    first_position: dict[str, int] = {}
    for position, record in itertools.chain(head, rows.records):
        try:
            problem = _read_record(record, format, source, position)
            if problem.id in first_position:
                raise _RowError("id", f"duplicate id {problem.id!r} (first at {rows.unit} "
                                      f"{first_position[problem.id]}); make ids unique")
        except _RowError as error:
            bad = BadRow(rows.label, position, error.field, error.reason, rows.unit)
            if on_bad_row == "error":
                raise ValueError(f"{bad}; {_SKIP_HINT}") from None
            skipped.append(bad)
            continue
        first_position[problem.id] = position
        problems.append(problem)
        if limit is not None and len(problems) >= limit:
            break
    _check_not_empty(rows.label, problems, skipped, allow_empty)
    return LoadResult(problems, skipped, format)


def _read_record(record: Any, format: str, source: str, position: int) -> Problem:
    if isinstance(record, _RowError):
        raise record
    return _to_problem(record, format, source, f"{source}-{position}")


def _check_not_empty(label: str, problems: list[Problem], skipped: list[BadRow],
                     allow_empty: bool) -> None:
    if problems or (allow_empty and not skipped):
        return
    if not skipped:
        raise ValueError(f"{label}: no records (the source is empty); check that it is the "
                         "right file and that it was written completely")
    raise ValueError(f"{label}: all {len(skipped)} records are bad, the first: {skipped[0]}; "
                     "check format= and the file")
