"""Gold NLL: which tokens are answer digits, a hand-computed split on a model whose logits are
fixed, the batched computation against a direct cross-entropy, cut and missing solutions."""

import math

import pytest
import torch

from tasks.data import Problem
from tasks.gold_nll import GoldNLL, gold_nll, gold_nll_metrics, gold_samples, is_answer_digit
from tasks.models import load_model, load_tokenizer
from tasks.rollout import render_prompts


@pytest.fixture(scope="module")
def tokenizer(tiny_pair):
    return load_tokenizer(tiny_pair[1])


def digit_ids(tokenizer) -> list[int]:
    return [i for i in range(len(tokenizer)) if is_answer_digit(tokenizer.decode([i]))]


@pytest.mark.parametrize(("text", "digit"), [("7", True), (" 12", True), ("0\n", True),
                                             ("7a", False), ("=", False), ("", False),
                                             (" ", False), ("²", False), ("٣", False)])
def test_answer_digits_are_tokens_of_ascii_digits_only(text, digit):
    assert is_answer_digit(text) is digit


def test_hand_computed_split_on_a_model_with_fixed_logits(tokenizer, fixed_logits_model):
    # logit a on each of the D digit tokens, 0 on the V − D others, at every position:
    # −log q(digit) = log(D·e^a + V − D) − a, −log q(other) = log(D·e^a + V − D)
    digits, vocab, a = digit_ids(tokenizer), len(tokenizer), 5.0
    assert len(digits) == 10  # the default tokenizer splits every digit
    model = fixed_logits_model(tokenizer, dict.fromkeys(digits, a))
    a *= 1 / math.sqrt(1 + model.config.rms_norm_eps)  # the final norm's eps, not quite 1
    log_z = math.log(len(digits) * math.exp(a) + vocab - len(digits))
    problem = Problem("p", "What is 12 + 30?", "42", "12+30=42\n\\boxed{42}")
    (row,) = gold_nll(model, tokenizer, "b", [problem], render_prompts(tokenizer, [problem]))
    solution = tokenizer(problem.solution, add_special_tokens=False)["input_ids"]
    assert row.digit_tokens == 8  # 1 2 3 0 4 2 4 2
    assert row.other_tokens == len(solution) + 1 - 8  # + EOS
    assert row.digit_nll == pytest.approx(8 * (log_z - a), rel=1e-5)
    assert row.other_nll == pytest.approx(row.other_tokens * log_z, rel=1e-5)
    metrics = gold_nll_metrics([row])
    assert metrics == pytest.approx({"gold_nll_problems": 1, "gold_nll_digits": log_z - a,
                                     "gold_nll_other": log_z}, rel=1e-5)


def test_batched_nll_equals_a_direct_cross_entropy(tiny_pair, tokenizer, tiny_problems):
    model = load_model(tiny_pair[1])
    problems = tiny_problems["test"][:5]  # solutions of different lengths: padded batches
    prompts = render_prompts(tokenizer, problems)
    rows = gold_nll(model, tokenizer, "b", problems, prompts, batch_size=2)
    assert [r.problem_id for r in rows] == [p.id for p in problems]
    context, cut = model.config.max_position_embeddings, 0
    for problem, prompt, row in zip(problems, prompts, rows, strict=True):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        response = tokenizer(problem.solution, add_special_tokens=False)["input_ids"] + [
            tokenizer.eos_token_id]
        cut += len(prompt_ids) + len(response) > context
        response = response[: context - len(prompt_ids)]  # what fits in the context is scored
        with torch.no_grad():
            logits = model(torch.tensor([prompt_ids + response])).logits[0]
        nll = torch.nn.functional.cross_entropy(
            logits[len(prompt_ids) - 1 : -1], torch.tensor(response), reduction="none")
        digit = torch.tensor([is_answer_digit(tokenizer.decode([t])) for t in response])
        assert row.digit_tokens == int(digit.sum()) > 0
        assert row.other_tokens == int((~digit).sum()) > 0
        assert row.digit_nll == pytest.approx(float(nll[digit].sum()), rel=1e-4)
        assert row.other_nll == pytest.approx(float(nll[~digit].sum()), rel=1e-4)
    assert 0 < cut < len(problems)  # some solutions were cut to the context, some not


def test_a_solution_is_cut_to_the_context_and_a_full_prompt_is_not_scored(tokenizer):
    problems = [Problem("p", "What is 1 + 2?", "3", "1+2=3\n\\boxed{3}")]
    prompts = render_prompts(tokenizer, problems)
    prompt_length = len(tokenizer(prompts[0], add_special_tokens=False)["input_ids"])
    (cut,) = gold_samples(tokenizer, problems, prompts, context=prompt_length + 3)
    assert cut.length == 3
    assert gold_samples(tokenizer, problems, prompts, context=prompt_length) == []


def test_no_solutions_no_rows_and_a_kind_without_tokens_is_left_out(tokenizer):
    problems = [Problem("p", "What is 1 + 2?", "3")]
    assert gold_samples(tokenizer, problems, render_prompts(tokenizer, problems), 100) == []
    assert gold_nll_metrics([]) == {}
    words_only = [GoldNLL("b", "p", 0, 0.0, 4, 2.0), GoldNLL("b", "q", 0, 0.0, 1, 3.0)]
    assert gold_nll_metrics(words_only) == {"gold_nll_problems": 2, "gold_nll_other": 1.0}
