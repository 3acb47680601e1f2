"""Bootstrapping the embedded default end to end, at reduced size: real tokenizer, real HF
models through from_pretrained, real SFT, the real grader, and the content-hash cache. Also the
full default's shape (context vs. answer lengths)."""

import json

import pytest
import torch

from tasks.arithmetic import generate_splits
from tasks.bootstrap import DefaultBootstrapConfig, bootstrap_default, held_out_greedy_accuracy
from tasks.data import read_problems
from tasks.models import build_tiny_model, build_tokenizer, load_model, load_tokenizer
from tasks.rollout import render_prompts


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
    assert config.teacher.max_positions >= longest_prompt + evaluation_cap  # the student's too


@pytest.mark.slow
def test_teacher_beats_untrained_student(bootstrapped):
    artifacts, lines = bootstrapped.artifacts, bootstrapped.lines
    assert any("sft: 800 of 800 steps (100%)" in line for line in lines)  # progress was shown
    teacher_metrics = json.loads((artifacts.teacher_dir / "bootstrap_metrics.json").read_text())
    tokenizer = load_tokenizer(artifacts.teacher_dir)
    held_out = read_problems(artifacts.split("held_out"))
    cap = bootstrapped.config.greedy_max_new_tokens
    untrained = build_tiny_model(bootstrapped.config.teacher, tokenizer, seed=0)
    untrained_accuracy = held_out_greedy_accuracy(untrained, tokenizer, held_out, cap)
    teacher_accuracy = held_out_greedy_accuracy(load_model(artifacts.teacher_dir), tokenizer,
                                                held_out, cap)
    assert teacher_accuracy["strict_accuracy"] == teacher_metrics["strict_accuracy"]
    assert teacher_accuracy["strict_accuracy"] >= untrained_accuracy["strict_accuracy"] + 0.2
    assert teacher_metrics["build_seconds"] >= teacher_metrics["sft/seconds"]


@pytest.mark.slow
def test_the_student_is_the_teachers_cut_healed(bootstrapped):
    teacher = load_model(bootstrapped.artifacts.teacher_dir)
    student = load_model(bootstrapped.artifacts.student_dir)
    keep = bootstrapped.config.student_layers
    assert student.config.num_hidden_layers == len(keep) < teacher.config.num_hidden_layers
    assert student.config.hidden_size == teacher.config.hidden_size
    healed = json.loads((bootstrapped.artifacts.student_dir / "bootstrap_metrics.json")
                        .read_text())
    assert healed["sft/tokens"] > 0  # the cut was healed by SFT, not saved as cut


@pytest.mark.slow
def test_two_bootstraps_give_identical_models(bootstrapped, tmp_path):
    """The whole reduced bootstrap again in an empty artifact root, same process and threads:
    the data, the tokenizer and both models' weights are identical, bit for bit."""
    again = bootstrap_default(bootstrapped.config, root=tmp_path, log=lambda _: None)
    first = bootstrapped.artifacts
    assert again.teacher_dir.name == first.teacher_dir.name  # same content keys
    for name in ("train", "held_out", "test"):
        assert again.split(name).read_bytes() == first.split(name).read_bytes()
    for role in ("teacher_dir", "student_dir"):
        built, original = (load_model(getattr(a, role)).state_dict() for a in (again, first))
        assert built.keys() == original.keys()
        assert all(torch.equal(built[name], original[name]) for name in built), role


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
