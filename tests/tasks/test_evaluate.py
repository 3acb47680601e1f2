"""Evaluation: metrics on hand-built per-sample tables, entropy of models with known
distributions, bad configurations, and the bootstrapped teacher against an untrained student
through the whole procedure (real generate, the real grader, a real SQLite store)."""

import json
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tasks.data import write_problems
from tasks.entropy import entropy_probe, response_entropies
from tasks.evaluate import (
    EvalConfig,
    SampleResult,
    check_comparable,
    evaluate,
    read_result,
    resolve_benchmarks,
    summarise_samples,
)
from tasks.models import build_tiny_model, load_tokenizer
from tasks.rollout import SamplingConfig, generate_hf, render_prompts
from tasks.store import RolloutStore


def row(problem, index, correct, length=10, truncated=False, entropy=1.0, response="x",
        benchmark="b"):
    return SampleResult(benchmark, problem, index, response, "1" if correct else None, correct,
                        correct, correct, length, truncated, entropy)


# ----------------------------------------------------------------------------- metrics


def test_avg_and_pass_at_k_on_a_hand_built_table():
    # p1: T F T F -> avg@1 1, avg@4 .5, pass@1 .5, pass@2 1 - C(2,2)/C(4,2) = 5/6
    # p2: F F F T -> avg@1 0, avg@4 .25, pass@1 .25, pass@2 1 - C(3,2)/C(4,2) = 1/2
    flags = {"p1": [True, False, True, False], "p2": [False, False, False, True]}
    rows = [row(p, i, c) for p, values in flags.items() for i, c in enumerate(values)]
    metrics = summarise_samples(rows[::-1], ks=[1, 2, 4])  # order of rows does not matter
    assert metrics["avg_at_1"] == pytest.approx(0.5)
    assert metrics["avg_at_2"] == pytest.approx((0.5 + 0.0) / 2)
    assert metrics["avg_at_4"] == pytest.approx(0.375)
    assert metrics["pass_at_1"] == pytest.approx(0.375)
    assert metrics["pass_at_2"] == pytest.approx((5 / 6 + 1 / 2) / 2)
    assert metrics["pass_at_4"] == pytest.approx(1.0)
    assert metrics["strict_accuracy"] == pytest.approx(3 / 8)
    assert metrics["problems"] == 2 and metrics["samples"] == 8


def test_length_truncation_and_token_weighted_entropy():
    rows = [row("p", 0, True, length=10, entropy=1.0),
            row("p", 1, False, length=30, entropy=2.0, truncated=True),
            row("p", 2, False, length=0, entropy=None, response=""),
            row("p", 3, False, length=1, entropy=0.0, response=" ")]
    metrics = summarise_samples(rows, ks=[4])
    assert metrics["response_length_mean"] == pytest.approx(41 / 4)
    assert metrics["response_length_median"] == pytest.approx(5.5)
    assert metrics["truncation_rate"] == pytest.approx(0.25)
    assert metrics["entropy"] == pytest.approx((10 * 1.0 + 30 * 2.0 + 1 * 0.0) / 41)
    assert metrics["empty_responses"] == 2


def test_same_problem_id_in_two_benchmarks_is_two_problems():
    rows = [row("p", 0, True, benchmark="a"), row("p", 0, False, benchmark="b")]
    assert summarise_samples(rows, ks=[1])["problems"] == 2


def test_uneven_sample_counts_are_refused():
    with pytest.raises(ValueError, match="same n"):
        summarise_samples([row("p", 0, True), row("q", 0, True), row("q", 1, True)], ks=[1])


# ----------------------------------------------------------------------------- configuration


def test_k_larger_than_n_is_a_configuration_error():
    with pytest.raises(ValueError, match="k=8 > n=4"):
        EvalConfig(model="m", n=4, ks=(1, 8))


def test_no_benchmarks_and_greedy_with_many_samples_are_refused():
    with pytest.raises(ValueError, match="benchmarks is empty"):
        EvalConfig(model="m", benchmarks=())
    with pytest.raises(ValueError, match="greedy samples would all be identical"):
        EvalConfig(model="m", temperature=0.0, n=4)


def test_empty_benchmark_file_is_refused(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        resolve_benchmarks([str(empty)])


def test_benchmark_without_answers_names_the_line_and_field(tmp_path):
    path = tmp_path / "gsm.jsonl"
    path.write_text(json.dumps({"question": "1+1?", "answer": "2 #### 2"}) + "\n"
                    + json.dumps({"question": "2+2?"}) + "\n")
    with pytest.raises(ValueError, match=r"gsm.jsonl.*line 2.*answer"):
        resolve_benchmarks([f"gsm8k={path}"])


def test_missing_benchmark_file_says_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="'default', a"):
        resolve_benchmarks([str(tmp_path / "nope.jsonl")])


def test_results_of_different_procedures_are_not_comparable():
    check_comparable({"a": {"grader_version": "1"}, "b": {"grader_version": "1"}})
    with pytest.raises(ValueError, match="differing: prompt_template"):
        check_comparable({"a": {"prompt_template": "bare"}, "b": {"prompt_template": "boxed"}})


# ----------------------------------------------------------------------------- entropy


def constant_model(tokenizer, peak_token: int | None):
    """A Llama whose next-token distribution ignores the input: every hidden state is the
    all-ones vector (identical embeddings, zeroed residual branches); the untied output head is
    zero (uniform over V) or puts logit 60 on peak_token (entropy ~ 0)."""
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, intermediate_size=32,
                         max_position_embeddings=128, tie_word_embeddings=False,
                         pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight.fill_(1.0)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        if peak_token is not None:
            model.lm_head.weight[peak_token].fill_(60.0 / 16)
    return model


@pytest.fixture(scope="module")
def tokenizer(tiny_pair):
    return load_tokenizer(tiny_pair[1])


def test_uniform_model_has_entropy_log_v(tokenizer, tiny_problems):
    model = constant_model(tokenizer, peak_token=None)
    prompts = render_prompts(tokenizer, tiny_problems["test"][:4])
    entropy = entropy_probe(model, tokenizer, prompts, max_new_tokens=8, seed=0)
    assert entropy == pytest.approx(math.log(len(tokenizer)), abs=1e-4)


def test_one_token_model_has_entropy_zero(tokenizer, tiny_problems):
    peak = tokenizer.convert_tokens_to_ids("7")
    model = constant_model(tokenizer, peak_token=peak)
    prompts = render_prompts(tokenizer, tiny_problems["test"][:4])
    samples = generate_hf(model, tokenizer, prompts, SamplingConfig(max_new_tokens=8, seed=0))
    assert all(s.response_ids == (peak,) * 8 for s in samples)
    entropies = response_entropies(model, samples, tokenizer.pad_token_id, batch_size=3)
    assert all(h is not None and 0 <= h < 1e-6 for h in entropies)


def test_a_model_that_emits_nothing_is_graded_incorrect_and_counted(tmp_path, tokenizer,
                                                                     tiny_problems):
    model = constant_model(tokenizer, peak_token=tokenizer.eos_token_id)
    model.save_pretrained(tmp_path / "silent")
    tokenizer.save_pretrained(tmp_path / "silent")
    bench = write_problems(tiny_problems["test"][:5], tmp_path / "bench.jsonl")
    result = evaluate(EvalConfig(model=str(tmp_path / "silent"), benchmarks=(str(bench),), n=2,
                                 ks=(1, 2), max_new_tokens=8), log=lambda _: None)
    metrics = result.metrics
    assert metrics["eval/bench/empty_responses"] == 10
    assert metrics["eval/bench/avg_at_2"] == 0 and metrics["eval/bench/pass_at_2"] == 0
    assert metrics["eval/bench/response_length_mean"] == 1  # the EOS alone
    assert all(not r.correct and r.extracted_answer is None for r in result.samples)


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_bootstrapped_teacher_beats_an_untrained_student(bootstrapped, tmp_path):
    artifacts = bootstrapped.artifacts
    tokenizer = load_tokenizer(artifacts.teacher_dir)
    untrained = build_tiny_model(bootstrapped.config.student, tokenizer, seed=0)
    untrained.save_pretrained(tmp_path / "untrained")
    tokenizer.save_pretrained(tmp_path / "untrained")
    benchmark = f"default={artifacts.split('test')}"
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    results = {}
    for name, model in {"teacher": artifacts.teacher_dir,
                        "untrained": tmp_path / "untrained"}.items():
        config = EvalConfig(model=str(model), benchmarks=(benchmark,), n=4, ks=(1, 4),
                            limit=40, max_new_tokens=48, greedy=True)
        results[name] = evaluate(config, output_dir=tmp_path / name, store_url=store_url,
                                 run_id=f"eval-{name}", log=lambda _: None)
    teacher, untrained = results["teacher"].metrics, results["untrained"].metrics
    assert teacher["eval/default/avg_at_4"] >= untrained["eval/default/avg_at_4"] + 0.3
    assert teacher["eval/default/pass_at_4"] >= teacher["eval/default/avg_at_4"]
    assert teacher["eval/default/greedy_accuracy"] >= 0.5
    # the teacher was trained to stop; the untrained model babbles until the cap
    assert teacher["eval/default/truncation_rate"] < untrained["eval/default/truncation_rate"]
    assert teacher["eval/default/entropy"] < untrained["eval/default/entropy"]
    assert teacher["eval/overall/samples"] == 160
    check_comparable({name: r.identity for name, r in results.items()})

    written = read_result(tmp_path / "teacher")
    assert written.metrics == teacher and len(written.samples) == 160
    with RolloutStore(store_url) as store:
        rows = store.samples("eval-teacher", stage="eval/default")
    assert len(rows) == 160
    assert sum(r.correct for r in rows) / 160 == pytest.approx(teacher["eval/default/avg_at_4"])
