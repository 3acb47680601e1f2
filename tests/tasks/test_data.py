"""Loading benchmark problems: each format on its fixture, auto-detection, every bad-input message.

The fixtures under tests/fixtures/data/ are small files in the real benchmarks' shapes, written
for these tests (no benchmark problems are copied). Broken inputs are written to tmp_path.
"""

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.data import (
    BadRow,
    LoadResult,
    Problem,
    detect_format,
    load_problems,
    read_problems,
    write_problems,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"


def write_jsonl(path: Path, records: list) -> Path:
    """Records as JSONL; a str record is written as the raw line (to make malformed input)."""
    lines = [record if isinstance(record, str) else json.dumps(record) for record in records]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- formats


def test_gsm8k_final_answer_after_hashes_and_solution_before():
    result = load_problems(FIXTURES / "gsm8k_sample.jsonl")
    assert result.format == "gsm8k" and result.skipped == []
    assert [p.answer for p in result.problems] == ["23", "1350", "8", "37"]  # "1,350" loses comma
    first = result.problems[0]
    assert first == Problem(
        id="gsm8k_sample-1",
        problem="A farmer collects 14 eggs on Monday and 9 eggs on Tuesday. "
        "How many eggs does he collect in total?",
        answer="23",
        solution="He collects 14 + 9 = <<14+9=23>>23 eggs.",
        source="gsm8k_sample",
    )
    assert [p.id for p in result.problems][-1] == "gsm8k_sample-4"


def test_math500_answer_field_or_last_boxed_with_nested_and_escaped_braces():
    result = load_problems(FIXTURES / "math500_sample.jsonl", benchmark_name="math500")
    assert result.format == "math"
    answers = [p.answer for p in result.problems]
    # rows 2 and 3 have no answer field: the last \boxed{...} of the solution, braces balanced
    assert answers == ["\\frac{3}{4}", "\\frac{\\sqrt{2}}{2}", "\\{1, 2\\}", "32"]
    assert [p.id for p in result.problems][:2] == ["test/prealgebra/1.json",
                                                   "test/precalculus/2.json"]
    assert {p.source for p in result.problems} == {"math500"}
    assert result.problems[1].solution.endswith("\\boxed{\\frac{\\sqrt{2}}{2}}$.")


def test_aime_int_answers_become_strings_and_ids_come_from_the_file():
    result = load_problems(FIXTURES / "aime_sample.jsonl", benchmark_name="aime24")
    assert result.format == "aime"
    assert [(p.id, p.answer, p.source) for p in result.problems] == [
        ("1", "14", "aime24"), ("2", "68", "aime24"), ("3", "24", "aime24")]
    assert result.problems[2].solution == "$2^{10} = 1024$, which leaves $24$."


def test_amc_style_question_field_and_float_answers(tmp_path):
    path = write_jsonl(tmp_path / "amc.jsonl", [
        {"question": "What is half of 46?", "answer": 23.0},
        {"question": "What is half of 1?", "answer": 0.5},
        {"question": "What is 3 minus 5?", "answer": -2},
    ])
    result = load_problems(path)
    assert result.format == "aime"
    assert [p.answer for p in result.problems] == ["23", "0.5", "-2"]
    assert [p.solution for p in result.problems] == [None, None, None]


def test_deepscaler_parquet_rows_are_numbered_from_zero():
    auto = load_problems(FIXTURES / "deepscaler_sample.parquet")
    explicit = load_problems(FIXTURES / "deepscaler_sample.parquet", format="deepscaler")
    assert auto.problems == explicit.problems
    assert [p.answer for p in explicit.problems] == ["\\frac{1}{2}", "12", "7"]
    assert [p.id for p in explicit.problems] == [f"deepscaler_sample-{i}" for i in range(3)]
    assert explicit.problems[1].solution.startswith("A cube has 4 edges")


def test_json_array_file_reads_like_jsonl(tmp_path):
    path = tmp_path / "deepscaler.json"
    path.write_text(json.dumps([{"problem": "1+1?", "answer": "2", "solution": "$\\boxed{2}$"}]))
    assert load_problems(path).problems == [
        Problem("deepscaler-0", "1+1?", "2", "$\\boxed{2}$", "deepscaler")]


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"question": "q", "answer": "work\n#### 4"}, "gsm8k"),
        ({"problem": "p", "solution": "\\boxed{1}"}, "math"),
        ({"problem": "p", "solution": "s", "answer": "1", "level": 3}, "math"),
        ({"id": 7, "problem": "p", "answer": 7}, "aime"),
        ({"question": "q", "answer": 7.0}, "aime"),
        ({"id": "a", "problem": "p", "answer": "1", "solution": None, "source": "s"}, "problems"),
    ],
)
def test_detect_format(record, expected):
    assert detect_format(record) == expected


def test_limit_stops_after_that_many_problems():
    assert len(load_problems(FIXTURES / "gsm8k_sample.jsonl", limit=2).problems) == 2


# ----------------------------------------------------------------------------- reasoning_gym


def test_reasoning_gym_is_deterministic_per_seed():
    first = load_problems("reasoning_gym:chain_sum", size=5, seed=3)
    again = load_problems("reasoning_gym:chain_sum", size=5, seed=3)
    other = load_problems("reasoning_gym:chain_sum", size=5, seed=4)
    assert first == again
    assert [p.problem for p in first.problems] != [p.problem for p in other.problems]
    assert [p.id for p in first.problems] == [f"chain_sum-3-{i}" for i in range(5)]
    assert {p.source for p in first.problems} == {"chain_sum"}
    assert all(p.answer.lstrip("-").isdigit() for p in first.problems)


def test_reasoning_gym_word_problems_and_errors():
    problems = load_problems("reasoning_gym:gsm_symbolic", size=2, seed=0).problems
    assert len(problems) == 2 and all(p.problem and p.answer for p in problems)
    with pytest.raises(ValueError, match=r"reasoning_gym:chain_sum: pass size="):
        load_problems("reasoning_gym:chain_sum")
    with pytest.raises(ValueError, match=r"reasoning_gym:no_such_set: .*not registered"):
        load_problems("reasoning_gym:no_such_set", size=2)


def test_reasoning_gym_takes_the_generators_own_settings():
    one_digit = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
    problems = load_problems("reasoning_gym:chain_sum", size=50, seed=0,
                             generator_options=one_digit).problems
    terms = [p.problem.rsplit(":", 1)[1].strip(" =").split() for p in problems]
    assert all(len(t) == 3 and len(t[0]) == 1 and len(t[2]) == 1 for t in terms), terms[:3]
    with pytest.raises(ValueError, match=r"reasoning_gym:chain_sum: generator_options="
                                         r"\{'max_digit': 1\} were refused: .*max_digit"):
        load_problems("reasoning_gym:chain_sum", size=2, generator_options={"max_digit": 1})
    with pytest.raises(ValueError, match="generator_options=.* does not apply to 'a.jsonl'"):
        load_problems("a.jsonl", generator_options=one_digit)


# ----------------------------------------------------------------------------- own format


def test_write_then_read_round_trip(tmp_path):
    problems = [
        Problem("a-1", "Combien font 2 + 2 ? Réponds en chiffres.", "4", "\\boxed{4}", "arith"),
        Problem("a-2", "What is 10 / 4?", "\\frac{5}{2}"),
    ]
    path = write_problems(problems, tmp_path / "out" / "problems.jsonl")
    assert read_problems(path) == problems
    assert load_problems(path).format == "problems"
    assert os.listdir(path.parent) == ["problems.jsonl"]  # the temp file was renamed away
    (tmp_path / "plain").touch()
    assert path.stat().st_mode == (tmp_path / "plain").stat().st_mode  # umask, not 0600
    write_problems(problems[:1], path)  # replaces, never appends
    assert read_problems(path) == problems[:1]
    write_problems([], path)
    assert read_problems(path) == []


def test_to_dict_from_dict_and_validation():
    problem = Problem("x", "p", "1", None, "s")
    assert Problem.from_dict(problem.to_dict()) == problem
    with pytest.raises(ValueError, match="field 'answer': is empty"):
        Problem("x", "p", " ")
    with pytest.raises(ValueError, match="field 'answer': must be a string"):
        Problem.from_dict({"id": "x", "problem": "p", "answer": 1})
    with pytest.raises(ValueError, match="field 'level': unknown field"):
        Problem.from_dict({"id": "x", "problem": "p", "answer": "1", "level": 2})


def test_write_refuses_duplicate_ids_and_leaves_the_old_file(tmp_path):
    path = write_problems([Problem("a", "p", "1")], tmp_path / "p.jsonl")
    with pytest.raises(ValueError, match=r"p\.jsonl: duplicate problem id 'b'"):
        write_problems([Problem("b", "p", "1"), Problem("b", "q", "2")], path)
    assert read_problems(path) == [Problem("a", "p", "1")]


def test_failed_write_keeps_the_old_file(tmp_path):
    path = write_problems([Problem("a", "p", "1")], tmp_path / "p.jsonl")

    def interrupted():
        yield Problem("b", "q", "2")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_problems(interrupted(), path)
    assert read_problems(path) == [Problem("a", "p", "1")]
    assert os.listdir(tmp_path) == ["p.jsonl"]


def test_read_problems_is_strict(tmp_path):
    path = write_jsonl(tmp_path / "own.jsonl", [
        {"id": "a", "problem": "p", "answer": "1", "solution": None, "source": ""},
        {"id": "b", "problem": "p", "answer": 2, "solution": None, "source": ""},
    ])
    with pytest.raises(ValueError, match=r"own\.jsonl, line 2, field 'answer': must be a string"):
        read_problems(path)


# ----------------------------------------------------------------------------- bad input

GOOD = {"id": 1, "problem": "What is 1 + 1?", "answer": 2}


@pytest.mark.parametrize(
    ("records", "format", "expected"),
    [
        ([GOOD, '{"problem": "2+2?", "answer": 4'], "auto",
         r"bad\.jsonl, line 2: is not valid JSON \(Expecting ',' delimiter"),
        ([GOOD, {"id": 2, "problem": "x"}, GOOD], "aime",
         r"bad\.jsonl, line 2, field 'answer': missing \(the record has fields \['id', "
         r"'problem'\]"),
        ([GOOD, {"id": 2, "problem": "  ", "answer": 3}], "auto",
         r"bad\.jsonl, line 2, field 'problem': is empty"),
        ([GOOD, {"id": 1, "problem": "Again?", "answer": 3}], "auto",
         r"bad\.jsonl, line 2, field 'id': duplicate id '1' \(first at line 1\)"),
        ([GOOD, [1, 2]], "auto", r"bad\.jsonl, line 2: is a JSON list, expected an object"),
        ([{"question": "q", "answer": "no marker"}], "gsm8k",
         r"line 1, field 'answer': has no '#### <final answer>' line"),
        ([{"problem": "p", "solution": "no box here"}], "math",
         r"line 1, field 'solution': has no complete \\boxed"),
        ([{"problem": "p", "answer": True}], "aime",
         r"line 1, field 'answer': must be a number or text, got True"),
        ([{"problem": "p", "answer": "1"}], "gsm8k",
         r"line 1, field 'question': missing \(the record has fields \['answer', 'problem'\]\)"),
        ([{"prompt": "p", "target": "1"}], "auto",
         r"bad\.jsonl, line 1: unknown format: fields \['prompt', 'target'\]; pass format=\.\.\."),
        ([{"problem": "p", "question": "q", "answer": "1"}], "auto",
         r"line 1: ambiguous format: .* pass format="),
    ],
    ids=["malformed-json", "missing-answer", "empty-problem", "duplicate-id", "not-an-object",
         "gsm8k-no-marker", "math-no-box", "bool-answer", "wrong-format", "unknown-format",
         "ambiguous-format"],
)
def test_bad_rows_name_file_line_and_field(tmp_path, records, format, expected):
    path = write_jsonl(tmp_path / "bad.jsonl", records)
    with pytest.raises(ValueError, match=expected) as raised:
        load_problems(path, format=format)
    assert str(path) in str(raised.value)


def test_undecodable_line_names_the_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"problem": "p", "answer": "1"}\n{"problem": "caf\xe9", "answer": "2"}\n')
    with pytest.raises(ValueError, match=r"latin1\.jsonl, line 2: is not valid UTF-8"):
        load_problems(path)


def test_bad_parquet_row_names_the_row(tmp_path):
    pa = pytest.importorskip("pyarrow")
    from pyarrow import parquet

    path = tmp_path / "rows.parquet"
    parquet.write_table(pa.Table.from_pylist(
        [{"problem": "p", "answer": "1"}, {"problem": "q", "answer": None}]), path)
    with pytest.raises(ValueError, match=r"rows\.parquet, row 1, field 'answer': missing"):
        load_problems(path)



# ----------------------------------------------------------------------------- size limits

# Run in a fresh interpreter, so that its peak memory is its own: the memory a load adds.
_MEASURE_LOAD = """
import json, resource, sys, time
from tasks.data import load_problems
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.monotonic()
try:
    load_problems(sys.argv[1])
    message = None
except ValueError as error:
    message = str(error)
print(json.dumps({"message": message, "seconds": time.monotonic() - started,
                  "grew_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before}))
"""


def test_a_50_mb_line_is_refused_without_reading_it_whole(tmp_path):
    path = tmp_path / "huge.jsonl"
    with path.open("wb") as handle:  # written in chunks: this process never holds the line
        handle.write(json.dumps(GOOD).encode() + b"\n" + b'{"problem": "')
        for _ in range(50):
            handle.write(b"7" * 2**20)
        handle.write(b'", "answer": "1"}\n')
    out = subprocess.run([sys.executable, "-c", _MEASURE_LOAD, str(path)], capture_output=True,
                         text=True, timeout=120, check=True)
    measured = json.loads(out.stdout)
    assert measured["message"].startswith(
        f"{path}, line 2: is 52,428,830 bytes, over the limit of 1,048,576 for a JSONL line "
        "(shorten it, or raise the limit with $DISTILL_LAB_MAX_LINE_BYTES)")
    assert measured["grew_kb"] < 20 * 1024  # the line is never held whole (50 MB and more)
    assert measured["seconds"] < 5


@pytest.mark.parametrize(("field", "record", "env", "limit"), [
    ("problem", {"problem": "9" * 20_001, "answer": "1"}, "DISTILL_LAB_MAX_PROBLEM_CHARS",
     "20,000"),
    ("answer", {"problem": "p", "answer": "9" * 1_001}, "DISTILL_LAB_MAX_ANSWER_CHARS",
     "1,000"),
    ("solution", {"problem": "p", "answer": "1", "solution": "9" * 200_001},
     "DISTILL_LAB_MAX_SOLUTION_CHARS", "200,000"),
])
def test_a_text_over_its_limit_names_the_record_field_and_limit(tmp_path, field, record, env,
                                                                limit):
    path = tmp_path / "array.json"  # a JSON array: parsed whole, then checked field by field
    path.write_text(json.dumps([GOOD, record]))
    size = f"{len(record[field]):,}"
    with pytest.raises(ValueError, match=rf"array\.json, record 1, field '{field}': is {size} "
                                         rf"characters, over the limit of {limit} .*\${env}\)"):
        load_problems(path, format="aime")


def test_a_limit_is_raised_through_its_environment_variable(tmp_path, monkeypatch):
    pa = pytest.importorskip("pyarrow")
    from pyarrow import parquet

    path = tmp_path / "long.parquet"
    parquet.write_table(pa.Table.from_pylist([{"problem": "9" * 25_000, "answer": "1"}]), path)
    with pytest.raises(ValueError, match=r"long\.parquet, row 0, field 'problem': is 25,000"):
        load_problems(path)
    monkeypatch.setenv("DISTILL_LAB_MAX_PROBLEM_CHARS", "30000")
    assert len(load_problems(path).problems[0].problem) == 25_000
    monkeypatch.setenv("DISTILL_LAB_MAX_PROBLEM_CHARS", "lots")
    with pytest.raises(ValueError, match=r"\$DISTILL_LAB_MAX_PROBLEM_CHARS='lots' is not a "
                                         "positive whole number of characters"):
        load_problems(path)


def test_a_line_at_the_limit_is_read_and_one_byte_more_is_refused(tmp_path, monkeypatch):
    line = json.dumps(GOOD).encode()
    monkeypatch.setenv("DISTILL_LAB_MAX_LINE_BYTES", str(len(line)))
    path = tmp_path / "edge.jsonl"
    path.write_bytes(line + b"\n" + line + b"\n")
    skipped = load_problems(path, on_bad_row="skip")
    assert len(skipped.problems) == 1 and skipped.skipped[0].line == 2  # duplicate id only
    path.write_bytes(line + b"\n" + line[:-1] + b' }\r\n' + line)  # one byte more, then the last
    result = load_problems(path, on_bad_row="skip")
    assert [(bad.line, bad.field) for bad in result.skipped] == [(2, None), (3, "id")]
    assert result.skipped[0].reason.startswith(
        f"is {len(line) + 1} bytes, over the limit of {len(line)} for a JSONL line")


def test_missing_empty_and_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.jsonl: no such file"):
        load_problems(tmp_path / "nowhere.jsonl")
    with pytest.raises(FileNotFoundError, match=r"typo\.parquet: no such file"):
        load_problems(str(tmp_path / "typo.parquet"))  # a str path, not a Hub name
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match=r"empty\.jsonl: no records"):
        load_problems(tmp_path / "empty.jsonl")
    (tmp_path / "fake.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match=r"fake\.parquet: not a readable Parquet file"):
        load_problems(tmp_path / "fake.parquet")
    (tmp_path / "table.csv").write_text("problem,answer\n")
    with pytest.raises(ValueError, match=r"table\.csv: unsupported file type '\.csv'"):
        load_problems(tmp_path / "table.csv")


def test_bad_arguments_say_what_to_pass():
    gsm8k = FIXTURES / "gsm8k_sample.jsonl"
    with pytest.raises(ValueError, match=r"format='csv': pass one of \('auto', 'gsm8k'"):
        load_problems(gsm8k, format="csv")
    with pytest.raises(ValueError, match=r"on_bad_row='ignore': pass one of"):
        load_problems(gsm8k, on_bad_row="ignore")
    with pytest.raises(ValueError, match=r"split='test' does not apply .* Hugging Face dataset"):
        load_problems(gsm8k, split="test")
    with pytest.raises(ValueError, match=r"size=3 does not apply .* reasoning_gym"):
        load_problems(gsm8k, size=3)
    with pytest.raises(ValueError, match=r"limit=0: pass a positive integer"):
        load_problems(gsm8k, limit=0)


def test_skip_mode_skips_and_lists_every_bad_row(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [
        GOOD,
        "{not json",
        {"id": 2, "problem": "No answer here"},
        {"id": 3, "problem": "What is 2 + 1?", "answer": 3},
        {"id": 3, "problem": "Same id again", "answer": 9},
        {"id": 4, "problem": "What is 2 + 2?", "answer": 4},
    ])
    result = load_problems(path, on_bad_row="skip")
    assert [p.id for p in result.problems] == ["1", "3", "4"]
    assert result.problems[1].problem == "What is 2 + 1?"  # the first of the duplicates stays
    assert [(b.line, b.field) for b in result.skipped] == [(2, None), (3, "answer"), (5, "id")]
    assert all(isinstance(b, BadRow) and b.file == str(path) for b in result.skipped)
    assert str(result.skipped[2]).startswith(f"{path}, line 5, field 'id': duplicate id '3'")


def test_skip_mode_still_fails_when_nothing_is_left(tmp_path):
    path = write_jsonl(tmp_path / "all_bad.jsonl", ["{", "[1"])
    with pytest.raises(ValueError, match=r"all_bad\.jsonl: all 2 records are bad, the first: .*"
                                         r"line 1: is not valid JSON"):
        load_problems(path, on_bad_row="skip")


# ----------------------------------------------------------------------------- Hugging Face cache


def cache_like_the_hub(cache_dir: Path, repo_id: str, config: str, split: str, data: Path):
    """Prepare `data` into cache_dir exactly where load_dataset(repo_id, config) caches it.

    A local builder writes the arrow files; the directories are then renamed to the layout a
    Hub download leaves (`owner___name/<config>/<version>/<hash>`), which the datasets library's
    own offline fallback reads (load_dataset(repo_id, config) loads this cache offline too).
    """
    from datasets.packaged_modules.json.json import Json

    owner, name = repo_id.split("/")
    Json(cache_dir=str(cache_dir), dataset_name=name, config_name=config,
         data_files={split: str(data)}, hash="0123abcd").download_and_prepare()
    (cache_dir / name).rename(cache_dir / f"{owner}___{name}")
    [config_dir] = glob.glob(str(cache_dir / f"{owner}___{name}" / f"{config}-*"))
    os.rename(config_dir, cache_dir / f"{owner}___{name}" / config)


def test_cached_hugging_face_dataset_loads_offline(tmp_path):
    pytest.importorskip("datasets")
    cache = tmp_path / "hf"
    cache_like_the_hub(cache, "toy/gsm8k", "main", "test", FIXTURES / "gsm8k_sample.jsonl")
    result = load_problems("toy/gsm8k", config_name="main", split="test", cache_dir=cache)
    assert isinstance(result, LoadResult) and result.format == "gsm8k"
    assert [p.answer for p in result.problems] == ["23", "1350", "8", "37"]
    assert [p.id for p in result.problems][:2] == ["gsm8k-0", "gsm8k-1"]
    with pytest.raises(ValueError, match=r"split='train' is not cached; pass split=\.\.\. one of "
                                         r"\['test'\]"):
        load_problems("toy/gsm8k", config_name="main", split="train", cache_dir=cache)


def test_uncached_hugging_face_dataset_fails_at_once(tmp_path):
    pytest.importorskip("datasets")
    with pytest.raises(FileNotFoundError, match=r"'nobody/nothing' is neither a file nor a "
                                                r"Hugging Face dataset .* never downloads"):
        load_problems("nobody/nothing", split="test", cache_dir=tmp_path)
