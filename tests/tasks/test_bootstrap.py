"""Bootstrapping the embedded default end to end, at reduced size: real tokenizer, real HF
models through from_pretrained, real SFT, the real grader, and the content-hash cache. Also the
full default's shape (context vs. answer lengths) and the SFT batching the bootstrap relies on."""

import json
import random

import pytest

from tasks.arithmetic import generate_splits
from tasks.bootstrap import DefaultBootstrapConfig, bootstrap_default, held_out_greedy_accuracy
from tasks.data import read_problems
from tasks.models import build_tiny_model, build_tokenizer, load_model, load_tokenizer
from tasks.rollout import render_prompts
from tasks.sft import length_grouped_batches


def test_default_context_holds_the_longest_prompt_and_the_evaluation_cap():
    config = DefaultBootstrapConfig()
    splits = generate_splits(config.task)
    tokenizer = build_tokenizer([p.problem + "\n" + p.solution for p in splits["train"][:2000]],
                                config.vocab_size)
    prompts = tokenizer(render_prompts(tokenizer, splits["test"]), add_special_tokens=False)
    answers = tokenizer([p.solution for p in splits["test"]], add_special_tokens=False)
    longest_prompt = max(len(ids) for ids in prompts["input_ids"])
    longest_answer = max(len(ids) + 1 for ids in answers["input_ids"])  # + EOS
    evaluation_cap = config.greedy_max_new_tokens
    assert evaluation_cap >= 1.5 * longest_answer
    for shape in (config.teacher, config.student):
        assert shape.max_positions >= longest_prompt + evaluation_cap


def test_length_grouped_batches_cover_each_example_once_and_pad_little():
    rng = random.Random(0)
    lengths = [rng.randint(20, 300) for _ in range(1000)]
    batches = length_grouped_batches(lengths, 32, 8, random.Random(1))
    seen = [i for batch in batches for i in batch]
    assert len(seen) == len(set(seen)) and len(seen) > 1000 - 32 * 8
    assert all(len(batch) == 32 for batch in batches)
    assert batches == length_grouped_batches(lengths, 32, 8, random.Random(1))  # seeded

    def padding(groups):
        return sum(32 * max(lengths[i] for i in g) - sum(lengths[i] for i in g) for g in groups)

    plain = length_grouped_batches(lengths, 32, 1, random.Random(1))
    assert padding(batches) < padding(plain) / 3


@pytest.mark.slow
def test_teacher_beats_untrained_student(bootstrapped):
    artifacts, lines = bootstrapped.artifacts, bootstrapped.lines
    assert any("sft: 800 of 800 steps (100%)" in line for line in lines)  # progress was shown
    teacher_metrics = json.loads((artifacts.teacher_dir / "bootstrap_metrics.json").read_text())
    tokenizer = load_tokenizer(artifacts.teacher_dir)
    held_out = read_problems(artifacts.split("held_out"))
    cap = bootstrapped.config.greedy_max_new_tokens
    untrained = build_tiny_model(bootstrapped.config.student, tokenizer, seed=0)
    untrained_accuracy = held_out_greedy_accuracy(untrained, tokenizer, held_out, cap)
    teacher_accuracy = held_out_greedy_accuracy(load_model(artifacts.teacher_dir), tokenizer,
                                                held_out, cap)
    assert teacher_accuracy["strict_accuracy"] == teacher_metrics["strict_accuracy"]
    assert teacher_accuracy["strict_accuracy"] >= untrained_accuracy["strict_accuracy"] + 0.2
    assert teacher_metrics["build_seconds"] >= teacher_metrics["sft/seconds"]


@pytest.mark.slow
def test_second_bootstrap_reuses_every_artifact(bootstrapped):
    root, artifacts = bootstrapped.root, bootstrapped.artifacts
    lines: list[str] = []
    again = bootstrap_default(bootstrapped.config, root=root, log=lines.append)
    assert again == artifacts
    assert not any(line.startswith("sft:") for line in lines)
    assert sum("reusing" in line for line in lines) == 2


@pytest.mark.slow
def test_bootstrapped_pair_shares_one_tokenizer(bootstrapped):
    artifacts = bootstrapped.artifacts
    teacher, student = (load_tokenizer(artifacts.teacher_dir),
                        load_tokenizer(artifacts.student_dir))
    assert teacher.get_vocab() == student.get_vocab()
    splits = {name: read_problems(artifacts.split(name)) for name in ("train", "held_out", "test")}
    assert [len(splits[name]) for name in ("train", "held_out", "test")] == [3000, 100, 100]
