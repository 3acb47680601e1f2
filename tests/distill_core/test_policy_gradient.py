"""Sampled-token reverse KL: its surrogate's gradient is an unbiased REINFORCE estimate — on
tokens the student sampled at the loss temperature, and only there — and the sampled loss's
properties."""

import math

import pytest
import torch

from distill_core import (
    LOSSES,
    Objective,
    TeacherLogits,
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


# ----------------------------------------------------------------------------- the sampled loss
# LOSSES["sampled"] = λ · mean(−r · log q(y)) + (1 − λ) · mean KL(p_teacher ‖ q_student),
# r = log p(y) − log q(y) detached, y the response tokens.

P_TEACHER = torch.tensor([0.8, 0.1, 0.1])
Q_STUDENT = torch.tensor([0.5, 0.25, 0.25])


def _sampled(student, teacher, mask, ids, lam, **options):
    return LOSSES["sampled"](student, TeacherLogits(teacher), mask, Objective("student", lam),
                             response_ids_BT=ids, **options)


def _random(batch=2, length=4, vocab=7, seed=0):
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(batch, length, vocab, generator=generator).requires_grad_(True)
    teacher = torch.randn(batch, length, vocab, generator=generator)
    ids = torch.randint(0, vocab, (batch, length), generator=generator)
    return student, teacher, torch.ones(batch, length), ids


def test_sampled_hand_computed_value_pins_the_direction():
    student, teacher = Q_STUDENT.log().view(1, 1, 3), P_TEACHER.log().view(1, 1, 3)
    ids, mask = torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1)
    surrogate = (math.log(0.5) - math.log(0.8)) * math.log(0.5)  # (log q − log p)(y) · log q(y)
    forward = 0.8 * math.log(0.8 / 0.5) + 2 * 0.1 * math.log(0.1 / 0.25)
    out = _sampled(student, teacher, mask, ids, 0.25)
    assert out.loss.item() == pytest.approx(0.25 * surrogate + 0.75 * forward, abs=1e-6)
    assert out.reverse_kl_BT.item() == pytest.approx(
        0.5 * math.log(0.5 / 0.8) + 2 * 0.25 * math.log(0.25 / 0.1), abs=1e-6)


def test_sampled_endpoints_are_the_pure_directions():
    student, teacher, mask, ids = _random()
    forward = LOSSES["exact"](student, TeacherLogits(teacher), mask, Objective("student", 0.0))
    (forward_grad,) = torch.autograd.grad(forward.loss, student)
    at_zero = _sampled(student, teacher, mask, ids, 0.0)
    (zero_grad,) = torch.autograd.grad(at_zero.loss, student)
    torch.testing.assert_close(at_zero.loss, forward.loss)
    torch.testing.assert_close(zero_grad, forward_grad)
    surrogate, _ = reverse_kl_surrogate(sampled_token_logprobs(student, ids),
                                        sampled_token_logprobs(teacher, ids))
    at_one = _sampled(student, teacher, mask, ids, 1.0)
    (one_grad,) = torch.autograd.grad(at_one.loss, student)
    (surrogate_grad,) = torch.autograd.grad(masked_mean(surrogate, mask), student)
    torch.testing.assert_close(at_one.loss, masked_mean(surrogate, mask))
    torch.testing.assert_close(one_grad, surrogate_grad)


def test_sampled_is_zero_with_zero_gradient_on_identical_inputs():
    student, _, mask, ids = _random()
    out = _sampled(student, student.detach().clone(), mask, ids, 0.5)
    (grad,) = torch.autograd.grad(out.loss, student)
    assert abs(out.loss.item()) < 1e-6
    assert grad.abs().max() < 1e-6


def test_sampled_fully_masked_batch_gives_zero_not_nan():
    student, teacher, _, ids = _random()
    out = _sampled(student, teacher, torch.zeros(2, 4), ids, 0.5)
    (grad,) = torch.autograd.grad(out.loss, student)
    assert out.loss.item() == 0.0
    assert grad.abs().max() == 0
    assert out.forward_kl_BT.abs().max() == 0


@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
def test_sampled_gradient_is_reinforce_plus_soft_cross_entropy(temperature, lam):
    # ∂/∂z = w/τ · [λ (log q(y) − log p(y)) (e_y − q) + (1 − λ)(q − p)], per token.
    student, teacher, mask, ids = _random()
    out = _sampled(student, teacher, mask, ids, lam, temperature=temperature)
    (grad,) = torch.autograd.grad(out.loss, student)
    log_q = (student.detach() / temperature).log_softmax(-1)
    log_p = (teacher / temperature).log_softmax(-1)
    one_hot = torch.nn.functional.one_hot(ids, 7).float()
    log_ratio_y = (log_q - log_p).gather(-1, ids.unsqueeze(-1))
    reinforce = log_ratio_y * (one_hot - log_q.exp())
    expected = (lam * reinforce + (1 - lam) * (log_q.exp() - log_p.exp())) / temperature / 8
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-7)


def test_sampled_gradient_averaged_over_y_from_q_is_the_reverse_kl_gradient():
    # Σ_y q(y) ∇ surrogate(y) = ∇ KL(q ‖ p) exactly (E_q[∇ log q] = 0), enumerated, not sampled.
    student = torch.randn(1, 1, 5).requires_grad_(True)
    teacher = torch.randn(1, 1, 5)
    q = student.detach().softmax(-1).view(-1)
    expected = torch.zeros(1, 1, 5)
    for token in range(5):
        out = _sampled(student, teacher, torch.ones(1, 1), torch.tensor([[token]]), 1.0)
        expected += q[token] * torch.autograd.grad(out.loss, student)[0]
    (exact,) = torch.autograd.grad(reverse_kl(student, teacher).sum(), student)
    torch.testing.assert_close(expected, exact, rtol=1e-5, atol=1e-7)


def test_sampled_is_normalised_by_num_valid_tokens():
    student, teacher, mask, ids = _random()
    own = _sampled(student, teacher, mask, ids, 0.5)
    global_count = _sampled(student, teacher, mask, ids, 0.5, num_valid_tokens=32)
    torch.testing.assert_close(global_count.loss, own.loss * 8 / 32)


# A student and teacher that disagree: the student's mode (token 4) is far from the teacher's
# favourites. Sampling tokens anywhere but from the student at the loss temperature makes the
# REINFORCE estimate point elsewhere (its expectation's cosine to the exact gradient: −0.44 on
# teacher samples, −0.91 on student samples at half the temperature).
DISAGREEING_STUDENT = torch.tensor([1.0, 1.0, 1.0, -3.0, 4.0])
DISAGREEING_TEACHER = torch.tensor([-2.0, -3.0, -3.0, 1.0, 1.0])


def _estimated_gradient(sampling_probs: torch.Tensor, samples: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.multinomial(sampling_probs, samples, replacement=True, generator=generator)
    student = DISAGREEING_STUDENT.clone().requires_grad_(True)
    out = _sampled(student.view(1, 1, 5).expand(1, samples, 5),
                   DISAGREEING_TEACHER.view(1, 1, 5).expand(1, samples, 5),
                   torch.ones(1, samples), tokens.view(1, -1), 1.0)
    return torch.autograd.grad(out.loss, student)[0]


def test_sampled_estimator_is_biased_unless_the_student_sampled_at_the_loss_temperature():
    student = DISAGREEING_STUDENT.clone().requires_grad_(True)
    exact = reverse_kl(student.view(1, 1, 5), DISAGREEING_TEACHER.view(1, 1, 5)).sum()
    (exact_grad,) = torch.autograd.grad(exact, student)

    def cosine(grad):
        return torch.nn.functional.cosine_similarity(grad, exact_grad, dim=0).item()

    q = DISAGREEING_STUDENT.softmax(-1)
    on_student = [_estimated_gradient(q, n, seed=1) for n in (500, 50_000)]
    on_teacher = _estimated_gradient(DISAGREEING_TEACHER.softmax(-1), 50_000, seed=2)
    colder_student = _estimated_gradient((DISAGREEING_STUDENT / 0.5).softmax(-1), 50_000, seed=3)
    errors = [(grad - exact_grad).norm().item() for grad in on_student]
    assert cosine(on_student[1]) > 0.99 and errors[1] < errors[0] / 3, errors  # converges
    assert cosine(on_teacher) < 0.0  # teacher-written tokens: points elsewhere
    assert cosine(colder_student) < 0.0  # student tokens at another temperature: too
