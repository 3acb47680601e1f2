"""fused_head: a real (tiny) HF model's head for distill_core's fused loss; the heads refused."""

import pytest
import torch
import transformers

import distill_core as dc
from tasks.models import fused_head
from tasks.rollout import Sample
from tasks.scoring import response_batch, response_hidden_states, response_logits

SIZES = dict(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
             num_attention_heads=2, num_key_value_heads=2, head_dim=8)


def _model(config_class: str, **extra) -> transformers.PreTrainedModel:
    config = getattr(transformers, config_class)(**SIZES, **extra)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config)


def test_tied_llama_head_is_the_embedding_and_the_fused_loss_matches_its_logits():
    student = _model("LlamaConfig", tie_word_embeddings=True)
    teacher = _model("LlamaConfig", tie_word_embeddings=True)
    weight, facts = fused_head(student)
    dc.check_fused_head(facts)
    assert weight is student.get_input_embeddings().weight
    input_ids = torch.randint(0, 40, (2, 6))
    mask = torch.ones(2, 6)
    vocab = 37  # a tokenizer smaller than the (padded) head
    with torch.no_grad():
        teacher_logits = teacher(input_ids=input_ids).logits[..., :vocab]
    objective = dc.Objective("student", 0.5)

    def embedding_grad(fused: bool) -> torch.Tensor:
        student.zero_grad(set_to_none=True)
        if fused:
            hidden = student.model(input_ids=input_ids).last_hidden_state
            inputs = dc.HiddenStates(hidden, weight, vocab_size=vocab)
        else:
            inputs = student(input_ids=input_ids).logits[..., :vocab]
        out = dc.LOSSES["exact"](inputs, dc.TeacherLogits(teacher_logits), mask, objective)
        out.loss.backward()
        return weight.grad.clone()

    torch.testing.assert_close(embedding_grad(True), embedding_grad(False), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("config_class, attribute", [
    ("Gemma2Config", "logit_softcap=30.0"),
    ("CohereConfig", "logit_scale=0.0625"),
])
def test_soft_capped_or_scaled_heads_are_refused(config_class, attribute):
    _, facts = fused_head(_model(config_class))
    with pytest.raises(ValueError, match=attribute):
        dc.check_fused_head(facts)


def test_a_head_with_a_bias_is_refused():
    model = _model("LlamaConfig")
    model.lm_head = torch.nn.Linear(16, 40, bias=True)
    _, facts = fused_head(model)
    with pytest.raises(ValueError, match="bias=True"):
        dc.check_fused_head(facts)


@pytest.mark.parametrize("tied", [True, False])
def test_response_hidden_states_times_the_head_are_the_response_logits(tied):
    """What the trainer's fused path hands the loss: hidden states at the response positions
    whose product with the head (cut to the tokenizer's vocabulary) is response_logits."""
    model = _model("LlamaConfig", tie_word_embeddings=tied)
    samples = [Sample(0, 0, (1, 2, 3), (4, 5), "", "stop"),
               Sample(1, 0, (6, 7), (8, 9, 10, 11), "", "length")]
    batch = response_batch(samples, pad_token_id=0)
    vocab = 37  # a tokenizer smaller than the (padded) head
    weight, _ = fused_head(model)
    hidden = response_hidden_states(model, batch)
    assert hidden.shape == (2, 4, 16)
    mask = batch.response_mask_BT.bool()
    torch.testing.assert_close((hidden @ weight[:vocab].T)[mask],
                               response_logits(model, batch, vocab)[mask], rtol=1e-5, atol=1e-6)
