"""HF rollout: seeded determinism, stop vs truncation, context fitting, caching of teacher
rollouts, and the pairing check before any generation."""

import pytest
import torch

from tasks.compute import ComputeMeter
from tasks.data import Problem
from tasks.gold_nll import gold_samples
from tasks.models import build_tokenizer, load_model, load_tokenizer
from tasks.rollout import (
    HFBackend,
    SamplingConfig,
    chat_messages,
    fit_prompts,
    generate_hf,
    read_samples,
    render_prompts,
    teacher_rollouts,
    text_budget,
    write_samples,
)


@pytest.fixture(scope="module")
def teacher(tiny_pair):
    return load_model(tiny_pair[0]), load_tokenizer(tiny_pair[0])


@pytest.fixture(scope="module")
def prompts(teacher, tiny_problems):
    return render_prompts(teacher[1], tiny_problems["held_out"][:6])


def test_same_seed_same_samples_other_seed_other_samples(teacher, prompts):
    model, tokenizer = teacher
    config = SamplingConfig(n=2, temperature=1.0, max_new_tokens=12, seed=3, batch_size=5)
    first = generate_hf(model, tokenizer, prompts, config)
    torch.manual_seed(999)  # whatever ran before must not matter
    again = generate_hf(model, tokenizer, prompts, config)
    other = generate_hf(model, tokenizer, prompts, SamplingConfig(
        n=2, temperature=1.0, max_new_tokens=12, seed=4, batch_size=5))
    assert first == again
    assert [s.response_ids for s in first] != [s.response_ids for s in other]
    assert [(s.prompt_index, s.sample_index) for s in first] == [
        (p, i) for p in range(len(prompts)) for i in range(2)]


def test_batching_does_not_change_greedy_output(teacher, prompts):
    model, tokenizer = teacher
    one = generate_hf(model, tokenizer, prompts, SamplingConfig(temperature=0, max_new_tokens=10,
                                                                batch_size=1))
    many = generate_hf(model, tokenizer, prompts, SamplingConfig(temperature=0,
                                                                 max_new_tokens=10,
                                                                 batch_size=6))
    assert [s.response_ids for s in one] == [s.response_ids for s in many]


def test_truncation_flags_and_lengths(teacher, prompts):
    model, tokenizer = teacher
    samples = generate_hf(model, tokenizer, prompts, SamplingConfig(temperature=0,
                                                                    max_new_tokens=3))
    for sample in samples:
        stopped = sample.response_ids[-1:] == (tokenizer.eos_token_id,)
        assert sample.finish_reason == ("stop" if stopped else "length")
        assert sample.truncated == (not stopped)
        assert sample.length == len(sample.response_ids) <= 3
        assert sample.truncated or sample.length < 3 or stopped
    assert any(s.truncated for s in samples)  # an untrained model rarely says EOS in 3 tokens


def test_eos_stops_generation(tiny_pair, prompts):
    tokenizer = load_tokenizer(tiny_pair[0])
    model = load_model(tiny_pair[0])
    eos_bias = torch.zeros(model.config.vocab_size)
    eos_bias[tokenizer.eos_token_id] = 1e4  # make EOS the model's certain next token
    model.lm_head.register_forward_hook(lambda _module, _inputs, logits: logits + eos_bias)
    samples = generate_hf(model, tokenizer, prompts, SamplingConfig(temperature=0,
                                                                    max_new_tokens=8))
    assert all(s.response_ids == (tokenizer.eos_token_id,) and s.finish_reason == "stop"
               and s.text == "" for s in samples)


def test_long_prompts_are_cut_from_the_left_or_refused():
    fitted, dropped = fit_prompts([[1, 2, 3, 4, 5], [6, 7]], context_length=6, max_new_tokens=3)
    assert fitted == [[3, 4, 5], [6, 7]] and dropped == [2, 0]
    with pytest.raises(ValueError, match="prompt 0 has 5 tokens.*allows 3"):
        fit_prompts([[1, 2, 3, 4, 5]], context_length=6, max_new_tokens=3, strict=True)
    with pytest.raises(ValueError, match="leaves no room"):
        fit_prompts([[1]], context_length=6, max_new_tokens=6)


def test_generate_counts_cut_prompts_and_compute(teacher):
    model, tokenizer = teacher
    long_prompt = render_prompts(tokenizer, [_problem("7 " * 200)])
    meter = ComputeMeter(student_parameters=10, teacher_parameters=20)
    [sample] = generate_hf(model, tokenizer, long_prompt,
                           SamplingConfig(temperature=0, max_new_tokens=8), meter)
    assert sample.prompt_truncated > 0
    assert len(sample.prompt_ids) == model.config.max_position_embeddings - 8
    assert meter.tokens["generate"] == len(sample.prompt_ids) + sample.length
    with pytest.raises(ValueError, match="strict_context=False"):
        generate_hf(model, tokenizer, long_prompt,
                    SamplingConfig(temperature=0, max_new_tokens=8, strict_context=True))



class _Recording:
    """The real tokenizer, noting the longest text it was asked to tokenise."""

    def __init__(self, tokenizer):
        self.tokenizer, self.longest = tokenizer, 0

    def __call__(self, texts, **options):
        self.longest = max([self.longest, *map(len, texts)])
        return self.tokenizer(texts, **options)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_a_huge_prompt_is_never_tokenised_whole(teacher):
    model, tokenizer = teacher
    context = model.config.max_position_embeddings
    huge, long = (render_prompts(tokenizer, [_problem("7 " * count)]) for count in (10**6, 200))
    recording = _Recording(tokenizer)
    config = SamplingConfig(temperature=0, max_new_tokens=8)
    [sample] = generate_hf(model, recording, huge, config)
    assert recording.longest == text_budget(context) < len(huge[0]) // 100
    # the end that is tokenised holds all the context keeps: the same prompt as a shorter one's
    [short] = generate_hf(model, tokenizer, long, config)
    assert sample.prompt_ids == short.prompt_ids and len(sample.prompt_ids) == context - 8
    with pytest.raises(ValueError, match="prompt 0 has 2,000,[0-9]+ characters, far more than"):
        generate_hf(model, recording, huge, SamplingConfig(temperature=0, max_new_tokens=8,
                                                           strict_context=True))
    solved = [Problem("huge", "7 " * 10**6, "0", "7 " * 10**6, "test")]
    recording.longest = 0
    assert gold_samples(recording, solved, huge, context) == []  # its prompt fills the context
    assert recording.longest == text_budget(context)


def test_hf_backend_is_generate_hf(teacher, prompts):
    model, tokenizer = teacher
    config = SamplingConfig(temperature=0, max_new_tokens=5)
    assert HFBackend(model, tokenizer).generate(prompts, config) == generate_hf(
        model, tokenizer, prompts, config)


def test_samples_round_trip_and_bad_line(tmp_path, teacher, prompts):
    model, tokenizer = teacher
    samples = generate_hf(model, tokenizer, prompts, SamplingConfig(temperature=0,
                                                                    max_new_tokens=4))
    path = write_samples(samples, tmp_path / "samples.jsonl")
    assert read_samples(path) == samples
    path.write_text(path.read_text() + '{"prompt_index": 1}\n')
    with pytest.raises(ValueError, match=rf"samples.jsonl:{len(samples) + 1}: not a rollout"):
        read_samples(path)


def test_teacher_rollouts_are_cached(tmp_path, tiny_pair, tiny_problems):
    problems = tiny_problems["held_out"][:4]
    config = SamplingConfig(temperature=0, max_new_tokens=6)
    first_meter = ComputeMeter(1, 1)
    path, samples = teacher_rollouts(*tiny_pair, problems, config, root=tmp_path,
                                     meter=first_meter)
    second_meter = ComputeMeter(1, 1)
    again_path, again = teacher_rollouts(*tiny_pair, problems, config, root=tmp_path,
                                         meter=second_meter)
    assert (again_path, again) == (path, samples)
    assert first_meter.tokens["generate"] > 0 and second_meter.tokens["generate"] == 0


def test_mismatched_pair_fails_before_generation(tmp_path, tiny_pair, tiny_problems):
    other = build_tokenizer(["entirely different text " * 3], vocab_size=280)
    student = load_model(tiny_pair[1])
    student.save_pretrained(tmp_path / "student")
    other.save_pretrained(tmp_path / "student")
    meter = ComputeMeter(1, 1)
    with pytest.raises(ValueError, match="vocabularies differ"):
        teacher_rollouts(tiny_pair[0], tmp_path / "student", tiny_problems["held_out"][:2],
                         SamplingConfig(temperature=0), root=tmp_path, meter=meter)
    assert meter.tokens["generate"] == 0


def _problem(text):
    return Problem(id="long", problem=text, answer="0", solution=None, source="test")


def test_a_worked_example_template_asks_after_its_solved_turns():
    bare = chat_messages("4 - 1 =", "bare")
    assert bare == [{"role": "user", "content": "4 - 1 ="}]
    shown = chat_messages("4 - 1 =", "worked-example")
    assert [m["role"] for m in shown] == ["user", "assistant", "user"]
    assert shown[1]["content"].endswith("\\boxed{19}.") and shown[-1] == bare[0]
