"""Sampled-token reverse KL: its surrogate's gradient is an unbiased REINFORCE estimate."""

import pytest
import torch

from distill_core import (
    masked_mean,
    reverse_kl,
    reverse_kl_surrogate,
    sampled_token_logprobs,
)


def test_monte_carlo_gradient_converges_to_exact_reverse_kl_gradient():
    torch.manual_seed(0)
    vocab, samples = 5, 200_000
    student_logits = torch.randn(vocab, requires_grad=True)
    teacher_logits = torch.randn(vocab)
    exact = reverse_kl(student_logits.view(1, 1, -1), teacher_logits.view(1, 1, -1)).sum()
    (exact_grad,) = torch.autograd.grad(exact, student_logits)

    tokens = torch.multinomial(student_logits.detach().softmax(-1), samples, replacement=True)
    batch_logits = student_logits.view(1, 1, vocab).expand(1, samples, vocab)
    student_logprobs = sampled_token_logprobs(batch_logits, tokens.view(1, -1))
    teacher_logprobs = teacher_logits.log_softmax(-1)[tokens].view(1, -1)
    surrogate, reward = reverse_kl_surrogate(student_logprobs, teacher_logprobs)
    (estimate,) = torch.autograd.grad(masked_mean(surrogate, torch.ones(1, samples)),
                                      student_logits)
    torch.testing.assert_close(estimate, exact_grad, atol=0.01, rtol=0.05)
    # −mean(reward) is the k1 estimate of the reverse KL value itself.
    assert -reward.mean().item() == pytest.approx(exact.item(), abs=0.01)


def test_reward_is_detached_and_surrogate_gradient_is_reinforce():
    student_logprobs = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    teacher_logprobs = torch.tensor([[-1.5, -0.5]])
    surrogate, reward = reverse_kl_surrogate(student_logprobs, teacher_logprobs)
    assert not reward.requires_grad
    torch.testing.assert_close(reward, torch.tensor([[-0.5, 1.5]]))
    (grad,) = torch.autograd.grad(surrogate.sum(), student_logprobs)
    torch.testing.assert_close(grad, -reward)  # (log q − log p) per token


def test_sampled_token_logprobs_match_log_softmax():
    logits = torch.randn(2, 3, 7)
    tokens = torch.randint(0, 7, (2, 3))
    expected = (logits / 1.3).log_softmax(-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(sampled_token_logprobs(logits, tokens, 1.3), expected)


def test_shape_mismatches():
    with pytest.raises(ValueError, match="token_ids_BT has shape"):
        sampled_token_logprobs(torch.randn(2, 3, 7), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="teacher_logprobs_BT has shape"):
        reverse_kl_surrogate(torch.zeros(2, 3), torch.zeros(2, 4))


def test_nan_teacher_logprobs():
    with pytest.raises(ValueError, match="teacher_logprobs_BT holds NaN"):
        reverse_kl_surrogate(torch.zeros(1, 2), torch.tensor([[0.0, float("nan")]]))
