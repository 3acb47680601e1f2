"""Math-reasoning evaluation: one versioned procedure for every number the platform reports.

``evaluate(config)`` samples ``n`` responses per problem from a model on each benchmark, adds
one greedy response per problem, grades them with the project's one grader, runs one
full-vocabulary forward pass over the model's own responses for token entropy and one over the
benchmark's worked solutions for gold NLL, and returns per benchmark and overall
(``eval/<benchmark>/<name>``):

- ``avg_at_<k>``: mean correctness of the first k samples, averaged over problems;
- ``pass_at_<k>``: the unbiased estimator 1 − C(n − c, k) / C(n, k) (distill_core), over all n;
- ``greedy_accuracy``: correctness of the one greedy (temperature 0) response per problem, the
  accuracy of the single most likely answer. A model that only sharpens its distribution (lower
  entropy, the same mode) can raise Avg@k at temperature 1 but not this;
- ``strict_accuracy`` / ``flexible_accuracy``: over every sample, under each extraction rule
  (strict: last ``\\boxed{}`` or ``####``; flexible: else the last number);
- ``response_length_mean`` / ``response_length_median`` (tokens, EOS included),
  ``truncation_rate`` (responses that hit max_new_tokens), ``empty_responses``;
- ``entropy``: mean per-token entropy (nats) of the model's softmax at temperature 1 over its
  own sampled response tokens, token-weighted;
- ``gold_nll_digits`` / ``gold_nll_other``: how surprised the model is by the benchmark's
  reference worked solutions — mean NLL (nats per token, teacher-forced) over the tokens that
  are answer digits and over the rest (``tasks.gold_nll``), with ``gold_nll_problems``; absent
  where no problem has a solution (the embedded default and GSM8K have them);
- ``grader_timeouts``, ``no_answer``, ``problems``, ``samples``.

Avg@k, Pass@k and greedy accuracy count a response correct under ``answer_rule`` ("strict" by
default: the answer must be boxed, as the prompt asks). The per-sample table (problem id, sample
index, response, extracted answer, correct, length, truncated, entropy, greedy) goes to
``samples.jsonl`` and, with a store URL, to the rollout store: the n samples under stage
``eval/<benchmark>``, each problem's greedy response under ``eval_greedy/<benchmark>`` (flagged
``greedy`` in samples.jsonl), so nothing that iterates the samples (Avg@k, Pass@k, length,
entropy) counts it. Per-problem gold NLL goes to ``gold_nll.jsonl``. The result's identity —
procedure version, grader version, prompt template text, sampling settings, benchmark file
hashes, model — is recorded next to the numbers; ``check_comparable`` refuses to put numbers of
different procedures side by side.

Entropy comes from ``tasks.entropy``, which the curriculum gate's held-out probe shares. The
benchmark ``default`` must arrive resolved to a file (``tasks.inputs.benchmark_specs``).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import distill_core as dc
from tasks.artifacts import content_hash, file_hash
from tasks.data import Problem, load_problems
from tasks.entropy import response_entropies
from tasks.files import atomic_open, atomic_write_text
from tasks.gold_nll import GoldNLL, gold_nll, gold_nll_metrics
from tasks.grader import GRADER_VERSION, Grade, Grader
from tasks.models import load_model, load_tokenizer
from tasks.profiles import DEFAULT_BENCHMARK
from tasks.progress import Progress
from tasks.rollout import (
    PROMPT_TEMPLATES,
    WORKED_EXAMPLES,
    Sample,
    SamplingConfig,
    render_prompts,
)
from tasks.settings import check_settings, fill_profile_defaults, setting

# Bump when anything below changes what a number means (sampling, metrics, entropy, layout).
# 2: greedy responses by default, stored per problem (stage eval_greedy/…); gold NLL.
EVAL_VERSION = "distill-lab-eval/2"
ANSWER_RULES = ("strict", "flexible")
BACKENDS = ("hf", "vllm")


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation: a model on benchmarks. Each knob is declared once, here
    (``tasks.settings.setting``); the study's eval_* fields, the RL flow's eval_* fields and the
    evaluate flow's form are generated from these declarations.

    model: model directory or hub id (offline: it must be local or cached).
    benchmarks: each "default" (the profile's test split), a file path (named by its stem) or
        "name=path"; files are read by tasks.data's loaders (GSM8K, MATH500, AIME, AMC,
        DeepScaleR, the problems JSONL).
    """

    model: str
    benchmarks: tuple[str, ...] = (DEFAULT_BENCHMARK,)
    n: int = setting(4, "Samples per problem.", ge=1)
    ks: tuple[int, ...] = setting((1, 4), "The k of Avg@k and Pass@k, each at most the samples "
                                  "per problem.", ge=1)
    temperature: float = setting(1.0, "Sampling temperature (0: greedy, one sample per "
                                 "problem).", ge=0)
    top_p: float = setting(1.0, "Nucleus sampling's top-p.", gt=0, le=1)
    max_new_tokens: int | None = setting(None, "Response cap (empty: the profile's evaluation "
                                         "cap).", ge=1, profile="eval_cap")
    seed: int = setting(0, "Sampling seed, the same for every model so that models are "
                        "compared on paired samples.")
    greedy: bool = setting(True, "Also decode each problem greedily for greedy accuracy (one "
                           "greedy pass: 1/n of the sampling's cost).")
    backend: str = setting("hf", "hf: transformers' generate; vllm: vLLM in its own "
                           "environment (tasks/vllm_backend.py).", choices=BACKENDS)
    prompt_template: str | None = setting(
        None, "bare: the default task's prompt; boxed: asks instruction-tuned models to box "
        "their answer; empty: the profile's.", choices=tuple(PROMPT_TEMPLATES),
        profile="prompt_template")
    limit: int | None = setting(50, "Problems per benchmark, the first ones (empty: all).",
                                ge=1)
    answer_rule: str = setting("strict", "Which answer extraction decides correct: strict (the "
                               "boxed or final answer) or flexible (the last number, a "
                               "diagnostic).", choices=ANSWER_RULES)
    batch_size: int = setting(64, "Prompts per generation batch.", ge=1)
    entropy_batch_size: int = setting(16, "Responses per entropy forward pass (bounds the "
                                      "(B, T, V) logits).", ge=1)
    grader_timeout_s: float = setting(5.0, "Seconds the grader may spend on one answer.", gt=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "benchmarks", tuple(self.benchmarks))
        object.__setattr__(self, "ks", tuple(sorted(set(self.ks))))
        fill_profile_defaults(self)
        check_settings(self)
        if not self.benchmarks:
            raise ValueError("benchmarks is empty: name at least one (e.g. 'default')")
        if not self.ks:
            raise ValueError("ks is empty: give the k of Avg@k / Pass@k, e.g. [1, 4]")
        if max(self.ks) > self.n:
            raise ValueError(f"ks={list(self.ks)} has k={max(self.ks)} > n={self.n}: Avg@k and "
                             "Pass@k need at least k samples per problem; raise n or lower k")
        self.sampling  # noqa: B018  (validates temperature, top_p, n, max_new_tokens)

    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(n=self.n, temperature=self.temperature, top_p=self.top_p,
                              max_new_tokens=self.max_new_tokens, seed=self.seed,
                              batch_size=self.batch_size)


@dataclass(frozen=True)
class SampleResult:
    """One graded response: a row of the per-sample table. greedy: the problem's one greedy
    (temperature 0) response, not one of its n samples; only greedy_accuracy counts it."""

    benchmark: str
    problem_id: str
    sample_index: int
    response: str
    extracted_answer: str | None
    correct: bool
    strict_correct: bool
    flexible_correct: bool
    length: int
    truncated: bool
    entropy: float | None  # mean over the response's tokens; None for an empty response
    timed_out: bool = False
    greedy: bool = False


@dataclass
class EvalResult:
    """What one evaluation produced. samples: the n sampled responses per problem; greedy: the
    one greedy response per problem (empty with config.greedy off); gold: gold NLL per problem
    with a worked solution."""

    metrics: dict[str, float]
    samples: list[SampleResult]
    identity: dict
    identity_hash: str
    output_dir: Path | None = None
    per_benchmark: dict[str, dict[str, float]] = field(default_factory=dict)
    greedy: list[SampleResult] = field(default_factory=list)
    gold: list[GoldNLL] = field(default_factory=list)


# ----------------------------------------------------------------------------- metrics


def summarise_samples(rows: Sequence[SampleResult], ks: Sequence[int]) -> dict[str, float]:
    """Avg@k, Pass@k, accuracy, length, truncation and entropy of a per-sample table, and
    greedy_accuracy when it holds greedy rows (which count for nothing else).

    Every problem must have the same number of samples n >= max(ks), indexed 0..n-1; Avg@k uses
    samples 0..k-1. entropy is token-weighted: each sample's mean entropy weighs by its length.
    """
    greedy = [r for r in rows if r.greedy]
    rows = [r for r in rows if not r.greedy]
    if not rows:
        raise ValueError("no samples to summarise: the benchmark produced no responses")
    by_problem: dict[tuple[str, str], list[SampleResult]] = {}
    for row in rows:
        by_problem.setdefault((row.benchmark, row.problem_id), []).append(row)
    correct = [[r.correct for r in sorted(group, key=lambda r: r.sample_index)]
               for group in by_problem.values()]
    counts = {len(c) for c in correct}
    if len(counts) != 1:
        raise ValueError(f"problems have different sample counts {sorted(counts)}: every "
                         "problem needs the same n")
    metrics = {f"avg_at_{k}": dc.avg_at_k(correct, k) for k in ks}
    metrics.update({f"pass_at_{k}": dc.mean_pass_at_k(correct, k) for k in ks})
    lengths = [r.length for r in rows]
    weighted = [(r.entropy, r.length) for r in rows if r.entropy is not None and r.length]
    tokens = sum(length for _, length in weighted)
    metrics.update({
        "strict_accuracy": sum(r.strict_correct for r in rows) / len(rows),
        "flexible_accuracy": sum(r.flexible_correct for r in rows) / len(rows),
        "response_length_mean": sum(lengths) / len(lengths),
        "response_length_median": float(statistics.median(lengths)),
        "truncation_rate": sum(r.truncated for r in rows) / len(rows),
        "entropy": sum(h * n for h, n in weighted) / tokens if tokens else float("nan"),
        "empty_responses": float(sum(r.length == 0 or not r.response.strip() for r in rows)),
        "no_answer": float(sum(r.extracted_answer is None for r in rows)),
        "grader_timeouts": float(sum(r.timed_out for r in rows)),
        "problems": float(len(by_problem)),
        "samples": float(len(rows)),
    })
    return metrics | (greedy_metrics(greedy) if greedy else {})


def greedy_metrics(rows: Sequence[SampleResult]) -> dict[str, float]:
    """greedy_accuracy: the share of problems whose one greedy response is correct."""
    problems = {(r.benchmark, r.problem_id) for r in rows}
    if len(problems) != len(rows):
        raise ValueError(f"{len(rows)} greedy rows for {len(problems)} problems: a problem has "
                         "exactly one greedy response (greedy=True rows)")
    return {"greedy_accuracy": sum(r.correct for r in rows) / len(rows)}


# ----------------------------------------------------------------------------- benchmarks


@dataclass(frozen=True)
class Benchmark:
    name: str
    path: Path
    problems: list[Problem]


def resolve_benchmarks(specs: Sequence[str], limit: int | None = None,
                       artifacts_root: str | Path | None = None) -> list[Benchmark]:
    """Benchmarks from "default", "path" or "name=path" specs, loaded by tasks.data."""
    benchmarks, seen = [], set()
    for spec in specs:
        name, path = _parse_spec(spec, artifacts_root)
        if name in seen:
            raise ValueError(f"benchmark name {name!r} appears twice in {list(specs)}; give one "
                             "of them another name with 'name=path'")
        seen.add(name)
        problems = load_problems(path, benchmark_name=name, limit=limit).problems
        if not problems:
            raise ValueError(f"benchmark {name!r} ({path}) has no problems")
        benchmarks.append(Benchmark(name, path, problems))
    return benchmarks


def _parse_spec(spec: str, artifacts_root: str | Path | None) -> tuple[str, Path]:
    if spec == "default":
        raise ValueError("benchmark 'default' names the profile's test split, which "
                         "tasks.inputs resolves to a file (default=<path>); pass that spec")
    name, _, path = spec.rpartition("=")
    path = Path(path)
    name = name or path.stem
    if not path.is_file():
        raise FileNotFoundError(f"benchmark {spec!r}: no file at {path}; pass 'default', a "
                                "problems/GSM8K/MATH500/AIME/AMC file, or 'name=path'")
    return name, path


def identity(config: EvalConfig, benchmarks: Sequence[Benchmark]) -> dict:
    """What makes two results comparable: everything but the model being evaluated."""
    return {
        "eval_version": EVAL_VERSION,
        "grader_version": GRADER_VERSION,
        "prompt_template": config.prompt_template,
        "prompt_template_text": PROMPT_TEMPLATES[config.prompt_template],
        **({"prompt_worked_examples": WORKED_EXAMPLES[config.prompt_template]}
           if config.prompt_template in WORKED_EXAMPLES else {}),
        "sampling": asdict(config.sampling) | {"batch_size": None},
        "ks": list(config.ks),
        "answer_rule": config.answer_rule,
        "greedy": config.greedy,
        "limit": config.limit,
        "benchmarks": {b.name: file_hash(b.path) for b in benchmarks},
    }


def check_comparable(identities: dict[str, dict]) -> None:
    """Raise if the named results were produced by different evaluation procedures."""
    items = list(identities.items())
    first_name, first = items[0] if items else ("", {})
    for name, other in items[1:]:
        differing = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
        if differing:
            raise ValueError(f"results {first_name!r} and {name!r} come from different "
                             f"evaluation procedures (differing: {', '.join(differing)}); "
                             "re-evaluate both with one EvalConfig before comparing")


# ----------------------------------------------------------------------------- the procedure


def evaluate(
    config: EvalConfig,
    output_dir: str | Path | None = None,
    store_url: str | None = None,
    run_id: str | None = None,
    step: int = 0,
    artifacts_root: str | Path | None = None,
    log: Callable[[str], None] = print,
    label: str | None = None,
) -> EvalResult:
    """Evaluate config.model on config.benchmarks (see the module docstring).

    label: the model's name in the log lines ("distill-opd v3"; default: its folder's name).
    output_dir: writes metrics.json (metrics + identity), samples.jsonl and gold_nll.jsonl there.
    store_url, run_id, step: also writes the per-sample table to the rollout store, stages
    ``eval/<benchmark>`` and ``eval_greedy/<benchmark>``, under run_id (created if missing), at
    step (e.g. a training step).
    """
    benchmarks = resolve_benchmarks(config.benchmarks, config.limit, artifacts_root)
    ident = identity(config, benchmarks)
    tokenizer, model = load_tokenizer(config.model), load_model(config.model)
    started = time.perf_counter()
    rows: list[SampleResult] = []
    gold: list[GoldNLL] = []
    per_benchmark: dict[str, dict[str, float]] = {}
    with Grader(timeout_s=config.grader_timeout_s) as grader, _backend(config, model,
                                                                       tokenizer) as backend:
        for benchmark in benchmarks:
            with Progress(len(benchmark.problems) * config.n,
                          _evaluating(label or Path(config.model).name, benchmark, config), log,
                          unit="samples", uneven="a batch takes as long as its longest "
                          "answer") as progress:
                bench_rows, bench_gold = _evaluate_benchmark(
                    config, benchmark, model, tokenizer, backend, grader, progress)
            per_benchmark[benchmark.name] = _benchmark_metrics(config, bench_rows, bench_gold)
            rows.extend(bench_rows)
            gold.extend(bench_gold)
            _log_line(log, benchmark.name, per_benchmark[benchmark.name], config.ks)
    per_benchmark["overall"] = _benchmark_metrics(config, rows, gold)
    per_benchmark["overall"]["seconds"] = time.perf_counter() - started
    metrics = {f"eval/{name}/{key}": value for name, values in per_benchmark.items()
               for key, value in values.items()}
    result = EvalResult(metrics, [r for r in rows if not r.greedy], ident, content_hash(ident),
                        None, per_benchmark, [r for r in rows if r.greedy], gold)
    if output_dir is not None:
        result.output_dir = write_result(result, config, output_dir)
    if store_url is not None:
        store_samples(result, benchmarks, store_url, run_id or f"eval-{result.identity_hash}",
                      step, config)
    return result


def _evaluating(label: str, benchmark: Benchmark, config: EvalConfig) -> str:
    """What a log line says is being evaluated, and how: "evaluating distill-opd v3 on default
    (20 problems × 4 samples, T=1.0, cap 256)"."""
    return (f"evaluating {label} on {benchmark.name} ({len(benchmark.problems)} problems × "
            f"{config.n} samples, T={config.temperature}, cap {config.max_new_tokens})")


def _backend(config: EvalConfig, model, tokenizer):
    if config.backend == "vllm":
        from tasks.vllm_backend import VLLMBackend
        return VLLMBackend(config.model)
    from contextlib import nullcontext

    from tasks.rollout import HFBackend
    return nullcontext(HFBackend(model, tokenizer))


def _evaluate_benchmark(config, benchmark, model, tokenizer, backend, grader,
                        progress: Progress) -> tuple[list[SampleResult], list[GoldNLL]]:
    """The benchmark's per-sample table (its greedy rows last) and its gold NLL per problem."""
    problems = benchmark.problems
    prompts = render_prompts(tokenizer, problems, config.prompt_template)
    samples = backend.generate(prompts, config.sampling, progress=progress)
    grades = grader.grade([s.text for s in samples],
                          [problems[s.prompt_index].answer for s in samples])
    entropies = response_entropies(model, samples, tokenizer.pad_token_id,
                                   config.entropy_batch_size)
    rows = [_row(config, benchmark.name, problems[s.prompt_index], s, g, h)
            for s, g, h in zip(samples, grades, entropies, strict=True)]
    if config.greedy:
        rows += _greedy_rows(config, benchmark, prompts, backend, grader)
    return rows, gold_nll(model, tokenizer, benchmark.name, problems, prompts,
                          config.entropy_batch_size)


def _greedy_rows(config, benchmark, prompts, backend, grader) -> list[SampleResult]:
    """One greedy (temperature 0) response per problem, graded, flagged greedy; no entropy."""
    greedy_config = SamplingConfig(temperature=0.0, max_new_tokens=config.max_new_tokens,
                                   seed=config.seed, batch_size=config.batch_size)
    answers = backend.generate(prompts, greedy_config)
    grades = grader.grade([s.text for s in answers],
                          [benchmark.problems[s.prompt_index].answer for s in answers])
    return [_row(config, benchmark.name, benchmark.problems[s.prompt_index], s, g, None,
                 greedy=True) for s, g in zip(answers, grades, strict=True)]


def _is_correct(config: EvalConfig, grade: Grade) -> bool:
    return grade.strict_correct if config.answer_rule == "strict" else grade.flexible_correct


def _row(config, benchmark: str, problem: Problem, sample: Sample, grade: Grade,
         entropy: float | None, greedy: bool = False) -> SampleResult:
    answer = grade.strict_answer if config.answer_rule == "strict" else grade.flexible_answer
    return SampleResult(
        benchmark=benchmark, problem_id=problem.id, sample_index=sample.sample_index,
        response=sample.text, extracted_answer=answer, correct=_is_correct(config, grade),
        strict_correct=grade.strict_correct, flexible_correct=grade.flexible_correct,
        length=sample.length, truncated=sample.truncated, entropy=entropy,
        timed_out=grade.timed_out, greedy=greedy,
    )


def _benchmark_metrics(config, rows: list[SampleResult], gold: list[GoldNLL]
                       ) -> dict[str, float]:
    return summarise_samples(rows, config.ks) | gold_nll_metrics(gold)


def _log_line(log, name: str, metrics: dict[str, float], ks) -> None:
    k = max(ks)
    greedy = (f"  greedy {metrics['greedy_accuracy']:.3f}" if "greedy_accuracy" in metrics
              else "")
    gold = ("  gold NLL digits {:.3f} / other {:.3f}".format(
        metrics.get("gold_nll_digits", float("nan")), metrics.get("gold_nll_other", float("nan")))
        if "gold_nll_problems" in metrics else "  gold NLL: no worked solutions")
    log(f"  {name}: avg@{k} {metrics[f'avg_at_{k}']:.3f}  pass@{k} {metrics[f'pass_at_{k}']:.3f}"
        f"{greedy}  length {metrics['response_length_mean']:.1f}  truncated "
        f"{metrics['truncation_rate']:.1%}  entropy {metrics['entropy']:.3f}{gold}")


# ----------------------------------------------------------------------------- outputs


def write_result(result: EvalResult, config: EvalConfig, output_dir: str | Path) -> Path:
    """metrics.json (metrics, identity, config), samples.jsonl (the per-sample table, the
    greedy rows last) and gold_nll.jsonl (per problem; only where there are solutions)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    _write_jsonl(output_dir / "samples.jsonl", [*result.samples, *result.greedy])
    if result.gold:
        _write_jsonl(output_dir / "gold_nll.jsonl", result.gold)
    summary = {"model": config.model, "metrics": result.metrics,
               "identity": result.identity, "identity_hash": result.identity_hash,
               "config": asdict(config)}
    atomic_write_text(output_dir / "metrics.json", json.dumps(summary, indent=2))
    return output_dir


def _write_jsonl(path: Path, rows: Sequence) -> None:
    """One JSON object per dataclass row, whole or not at all (tasks.files)."""
    with atomic_open(path) as handle:
        for row in rows:
            handle.write(json.dumps(asdict(row)) + "\n")


def read_result(output_dir: str | Path) -> EvalResult:
    """An EvalResult written by write_result (one written before greedy rows or gold NLL
    existed reads with none)."""
    output_dir = Path(output_dir)
    summary = json.loads((output_dir / "metrics.json").read_text())
    with open(output_dir / "samples.jsonl", encoding="utf-8") as handle:
        rows = [SampleResult(**json.loads(line)) for line in handle]
    gold_path = output_dir / "gold_nll.jsonl"
    gold = ([GoldNLL(**json.loads(line)) for line in gold_path.read_text().splitlines()]
            if gold_path.is_file() else [])
    return EvalResult(summary["metrics"], [r for r in rows if not r.greedy],
                      summary["identity"], summary["identity_hash"], output_dir,
                      greedy=[r for r in rows if r.greedy], gold=gold)


def store_samples(result: EvalResult, benchmarks: Sequence[Benchmark], store_url: str,
                  run_id: str, step: int, config: EvalConfig) -> None:
    """The per-sample table into the rollout store, one transaction per benchmark and stage:
    the samples under ``eval/<benchmark>``, the greedy responses under
    ``eval_greedy/<benchmark>``."""
    from tasks.store import EVAL_STAGE, GREEDY_STAGE, RolloutStore, SampleRecord

    with RolloutStore(store_url) as store:
        store.ensure_run(run_id, f"evaluate {config.model}", "evaluate",
                         {"eval": asdict(config), "identity_hash": result.identity_hash})
        for benchmark in benchmarks:
            store.add_prompts(run_id, [(f"{benchmark.name}/{p.id}", p.problem, p.answer)
                                       for p in benchmark.problems])
            for stage, rows in ((EVAL_STAGE, result.samples), (GREEDY_STAGE, result.greedy)):
                store.add_samples(run_id, f"{stage}{benchmark.name}", step, [
                    SampleRecord(f"{r.benchmark}/{r.problem_id}", r.sample_index, r.response,
                                 r.length, r.truncated, r.correct, r.entropy)
                    for r in rows if r.benchmark == benchmark.name], replace=True)
