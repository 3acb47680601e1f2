"""The step benches (bench/step_breakdown.py, bench/vs_trl.py) measure what they say: the parts
they time exist in the trainer, a part timed inside another is not counted twice, the step meter
skips the warm-up, and our trainer's runs (live teacher and top-k cache) finish on tiny models.
TRL's own runs need the bench extra and are run by hand (docs/performance.md)."""

from pathlib import Path

import pytest
import torch

import tasks.train as trainer
from bench import step_breakdown, vs_trl
from tasks import bootstrap
from tasks.data import read_problems, write_problems
from tasks.profiles import PROFILES

ROOT = Path(__file__).resolve().parents[2]


class _Clock:
    """A clock the test advances by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_every_function_the_breakdown_times_is_in_the_trainer():
    for name, *_ in step_breakdown.TRAINER_PARTS:
        assert callable(getattr(trainer, name, None)), f"tasks.train.{name} is gone"


@pytest.mark.parametrize(("name", "builder", "profile"), [
    ("default", "bootstrap_default", "default"),
    ("real-weights", "bootstrap_real_weights", "real-weights")])
def test_a_bench_profile_takes_its_prompt_template_and_problems_from_the_profile(
        tmp_path, tiny_problems, monkeypatch, name, builder, profile):
    data = tmp_path / "data"
    write_problems(tiny_problems["train"], data / "train.jsonl")
    built = bootstrap.BootstrapArtifacts(data, tmp_path / "teacher", tmp_path / "student")
    monkeypatch.setattr(bootstrap, builder, lambda **kwargs: built)  # the bootstrap: minutes
    resolved = step_breakdown.resolve_profile(name, tmp_path / "root")
    assert resolved.prompt_template == PROFILES[profile].prompt_template
    assert resolved.teacher == built.teacher_dir and resolved.student == built.student_dir
    assert read_problems(resolved.problems) == tiny_problems["train"][:step_breakdown.PROBLEMS]


def test_a_part_timed_inside_another_is_taken_out_of_it(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(step_breakdown.time, "perf_counter", clock)

    class Owner:
        @staticmethod
        def inner():
            clock.now += 2.0

        @staticmethod
        def outer():
            clock.now += 1.0
            Owner.inner()
            clock.now += 0.5

    timer = step_breakdown._Timer()
    timer.wrap(Owner, "inner", "teacher_forward")
    timer.wrap(Owner, "outer", "loss", minus="teacher_forward")
    Owner.outer()
    Owner.inner()
    assert timer.seconds["teacher_forward"] == 4.0
    assert timer.seconds["loss"] == 1.5


def test_the_step_meter_counts_the_steps_and_tokens_after_the_warm_up(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(vs_trl.time, "perf_counter", clock)
    monkeypatch.setattr(vs_trl.time, "process_time", clock)
    tokens = [100.0, 30.0, 50.0]
    meter = vs_trl._StepMeter(1, tokens)
    for seconds in (9.0, 2.0, 3.0):  # the warm-up's 9 s is not counted
        clock.now += seconds
        meter.step_ended()
    result = meter.result()
    assert (result["steps"], result["tokens"], result["wall"], result["cpu"]) == (2, 80.0, 5.0, 5.0)
    assert result["peak_mib"] > 0


@pytest.fixture(scope="module")
def spec(tiny_pair, tiny_problems, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("bench")
    write_problems(tiny_problems["train"][:16], root / "problems.jsonl")
    teacher, student = tiny_pair
    return {"teacher": str(teacher), "student": str(student),
            "problems": str(root / "problems.jsonl"), "prompt_template": "bare",
            "batch_size": 4, "max_new_tokens": 8, "steps": 2, "threads": 1, "root": str(root)}


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["sft", "opd"])
def test_the_breakdown_splits_a_real_step_into_its_parts(spec, cell):
    result = step_breakdown.run_child("bench.step_breakdown",
                                      {**spec, "code": str(ROOT), "cell": cell})
    assert set(step_breakdown.PARTS) <= set(result) and result["tokens"] > 0
    assert all(result[part] > 0 for part in ("generate", "teacher_forward", "student_forward",
                                                "loss", "backward", "optimizer"))
    assert result["other"] >= 0  # the timed parts do not overlap: none is counted twice


@pytest.mark.slow
def test_ours_with_the_top_k_cache_times_the_cache_build_beside_the_steps(spec):
    run = {**spec, "cell": "sft", "warmup": 1}
    live = step_breakdown.run_child("bench.vs_trl", {**run, "trainer": "ours"})
    cached = step_breakdown.run_child("bench.vs_trl", {**run, "trainer": "ours, top-k cache"})
    for result in (live, cached):
        assert result["steps"] == 2 and result["tokens"] > 0 and result["wall"] > 0
    assert cached["cache_build_s"] > 0
    assert cached["cache_tokens"] >= cached["tokens"]  # the cache covers every rollout


def test_the_bare_decode_loop_draws_the_tokens_generate_draws(tiny_pair, tiny_problems):
    """bench.decode_overhead times generate's loop as the difference to a bare loop: only valid
    if both draw the same tokens (left padding and early stops included)."""
    from bench import decode_overhead
    from tasks.models import load_model, load_tokenizer
    from tasks.rollout import _left_padded

    _, student = tiny_pair
    model, tokenizer = load_model(student).eval(), load_tokenizer(student)
    rows = tokenizer([p.problem for p in tiny_problems["train"][:6]],
                     add_special_tokens=False)["input_ids"]
    input_ids, attention_mask = _left_padded(rows, tokenizer.pad_token_id)
    assert len(set(map(len, rows))) > 1  # some rows are padded
    drawn = decode_overhead._generate(model, tokenizer, input_ids, attention_mask, 24)
    # The untrained model rarely draws its EOS: make its most drawn token the EOS, so rows stop
    # early and are padded after it.
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(
        int(drawn[:, input_ids.shape[1]:].flatten().mode().values))
    generated = decode_overhead._generate(model, tokenizer, input_ids, attention_mask, 24)
    bare = decode_overhead._bare(model, tokenizer, input_ids, attention_mask, 24)
    assert (generated == tokenizer.pad_token_id)[:, input_ids.shape[1]:].any()  # a row stopped
    assert torch.equal(generated, bare)
