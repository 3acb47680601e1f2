"""Sparse teacher (top-k + tail bucket): the documented tail treatment, its error, bad input, and
the sparse loss's properties."""

import math

import pytest
import torch

from distill_core import (
    LOSSES,
    Objective,
    TeacherTopK,
    forward_kl,
    mix_kl,
    reverse_kl,
    sparse_kl_terms,
)


def _top_k(teacher_logits, k):
    log_p = teacher_logits.log_softmax(-1)
    values, ids = log_p.topk(k, dim=-1)
    return values, ids


def _within_tail_terms(student_logits, teacher_logits, ids):
    """p_tail · KL(p(·|tail) ‖ q(·|tail)) and q_tail · KL(q(·|tail) ‖ p(·|tail)), by hand."""
    log_p = teacher_logits.double().log_softmax(-1)
    log_q = student_logits.double().log_softmax(-1)
    in_tail = torch.ones_like(log_p, dtype=torch.bool).scatter(-1, ids, False)
    big_negative = torch.finfo(torch.float64).min
    log_p_tail = log_p.masked_fill(~in_tail, big_negative).logsumexp(-1, keepdim=True)
    log_q_tail = log_q.masked_fill(~in_tail, big_negative).logsumexp(-1, keepdim=True)
    cond_p, cond_q = log_p - log_p_tail, log_q - log_q_tail
    forward = (in_tail * cond_p.exp() * (cond_p - cond_q)).sum(-1) * log_p_tail.squeeze(-1).exp()
    reverse = (in_tail * cond_q.exp() * (cond_q - cond_p)).sum(-1) * log_q_tail.squeeze(-1).exp()
    return forward, reverse


def test_full_kl_is_bucket_kl_plus_the_within_tail_term():
    student, teacher = torch.randn(2, 4, 40), torch.randn(2, 4, 40) * 2
    values, ids = _top_k(teacher, 5)
    sparse_forward, sparse_reverse = sparse_kl_terms(student, values, ids)
    tail_forward, tail_reverse = _within_tail_terms(student, teacher, ids)
    torch.testing.assert_close(sparse_forward.double() + tail_forward,
                               forward_kl(student, teacher).double(), atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(sparse_reverse.double() + tail_reverse,
                               reverse_kl(student, teacher).double(), atol=2e-6, rtol=1e-5)


def test_sparse_never_exceeds_full_and_is_exact_with_the_whole_vocabulary():
    student, teacher = torch.randn(3, 5, 30), torch.randn(3, 5, 30)
    for k in (1, 4, 16):
        forward, reverse = sparse_kl_terms(student, *_top_k(teacher, k))
        assert (forward <= forward_kl(student, teacher) + 1e-6).all()
        assert (reverse <= reverse_kl(student, teacher) + 1e-6).all()
    forward, reverse = sparse_kl_terms(student, *_top_k(teacher, 30))
    torch.testing.assert_close(forward, forward_kl(student, teacher), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(reverse, reverse_kl(student, teacher), atol=1e-5, rtol=1e-4)


def test_error_against_full_vocabulary_shrinks_with_k():
    # Gaussian logits × 4 over 2,000 tokens: top-100 covers ~97.5% of the teacher's mass.
    torch.manual_seed(1)
    teacher = torch.randn(4, 8, 2000) * 4
    student = teacher + torch.randn(4, 8, 2000)
    full_forward, full_reverse = forward_kl(student, teacher), reverse_kl(student, teacher)
    errors = []
    for k in (5, 20, 100, 400):
        forward, reverse = sparse_kl_terms(student, *_top_k(teacher, k))
        errors.append((
            ((full_forward - forward).abs().mean() / full_forward.mean()).item(),
            ((full_reverse - reverse).abs().mean() / full_reverse.mean()).item(),
        ))
    assert errors == sorted(errors, reverse=True)  # more of the teacher kept, smaller error
    assert max(errors[2]) < 0.05, errors  # k = 100: under 5% relative error in both directions
    assert min(errors[0]) > 0.2, errors  # k = 5 misses a lot: the check can tell


def test_gradient_moves_tail_mass_and_is_finite():
    student = torch.randn(2, 3, 25, requires_grad=True)
    values, ids = _top_k(torch.randn(2, 3, 25), 4)
    values[0, 0, -1] = float("-inf")  # a padded cache slot
    loss = mix_kl(*sparse_kl_terms(student, values, ids), 0.5).sum()
    (grad,) = torch.autograd.grad(loss, student)
    assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 0


def test_identical_distributions_give_zero():
    logits = torch.randn(2, 3, 12)
    forward, reverse = sparse_kl_terms(logits, *_top_k(logits, 5))
    torch.testing.assert_close(forward, torch.zeros(2, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(reverse, torch.zeros(2, 3), atol=1e-6, rtol=0)


def test_ids_outside_the_student_vocabulary():
    values, ids = _top_k(torch.randn(1, 2, 12), 3)
    with pytest.raises(ValueError, match=r"token ids in \[0, 10\)"):
        sparse_kl_terms(torch.randn(1, 2, 10), values, ids + 10)


def test_repeated_ids():
    values, ids = _top_k(torch.randn(1, 2, 12), 3)
    ids[0, 1, 2] = ids[0, 1, 0]
    with pytest.raises(ValueError, match="repeats a token id"):
        sparse_kl_terms(torch.randn(1, 2, 12), values, ids)


def test_raw_logits_instead_of_log_probs():
    logits = torch.randn(1, 2, 12)
    values, ids = logits.topk(3, dim=-1)
    with pytest.raises(ValueError, match="positive log-probabilities|sum to"):
        sparse_kl_terms(torch.randn(1, 2, 12), values.abs() * 0 - 0.1, ids)


def test_probabilities_summing_above_one_name_the_position():
    values, ids = _top_k(torch.randn(2, 2, 12), 3)
    values[1, 0] = torch.log(torch.tensor([0.6, 0.3, 0.3]))
    with pytest.raises(ValueError, match=r"sum to 1.2.*token position \(1, 0\)"):
        sparse_kl_terms(torch.randn(2, 2, 12), values, ids)


def test_shape_mismatch():
    values, ids = _top_k(torch.randn(1, 3, 12), 3)
    with pytest.raises(ValueError, match=r"must both be \(B, T, K\)"):
        sparse_kl_terms(torch.randn(1, 2, 12), values, ids)


# ----------------------------------------------------------------------------- the sparse loss
# LOSSES["sparse"]: masked mean of λ · KL(Q_student ‖ P_teacher) + (1 − λ) · KL(P_teacher ‖
# Q_student) over the (k + 1) buckets.


def _sparse(student, topk, mask, lam, **options):
    return LOSSES["sparse"](student, topk, mask, Objective("teacher", lam), **options)


def _random(batch=2, length=3, vocab=12, k=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(batch, length, vocab, generator=generator).requires_grad_(True)
    values, ids = _top_k(torch.randn(batch, length, vocab, generator=generator) * 2, k)
    return student, TeacherTopK(values, ids), torch.ones(batch, length)


def test_sparse_hand_computed_value_pins_the_direction():
    # Teacher's top-1 is token 0 (p = 0.8, tail 0.2); the student has q = (0.5, 0.3, 0.2), so
    # buckets P = (0.8, 0.2), Q = (0.5, 0.5).
    student = torch.tensor([0.5, 0.3, 0.2]).log().view(1, 1, 3)
    topk = TeacherTopK(torch.tensor([[[math.log(0.8)]]]), torch.tensor([[[0]]]))
    forward = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)  # 0.192745…
    reverse = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)  # 0.223144…
    out = _sparse(student, topk, torch.ones(1, 1), 0.25)
    assert out.forward_kl_BT.item() == pytest.approx(forward, abs=1e-6)
    assert out.reverse_kl_BT.item() == pytest.approx(reverse, abs=1e-6)
    assert out.loss.item() == pytest.approx(0.25 * reverse + 0.75 * forward, abs=1e-6)


def test_sparse_endpoints_are_the_pure_directions():
    student, topk, mask = _random()
    forward, reverse = sparse_kl_terms(student, topk.logprobs_BTK, topk.ids_BTK)
    torch.testing.assert_close(_sparse(student, topk, mask, 0.0).loss, forward.mean())
    torch.testing.assert_close(_sparse(student, topk, mask, 1.0).loss, reverse.mean())
    torch.testing.assert_close(_sparse(student, topk, mask, 0.4).loss,
                               mix_kl(forward.mean(), reverse.mean(), 0.4))


def test_sparse_is_zero_with_zero_gradient_on_identical_inputs():
    student, _, mask = _random()
    out = _sparse(student, TeacherTopK(*_top_k(student.detach(), 5)), mask, 0.5)
    (grad,) = torch.autograd.grad(out.loss, student)
    assert abs(out.loss.item()) < 1e-6
    assert grad.abs().max() < 1e-6


def test_sparse_fully_masked_batch_gives_zero_not_nan():
    student, topk, _ = _random()
    out = _sparse(student, topk, torch.zeros(2, 3), 0.5)
    (grad,) = torch.autograd.grad(out.loss, student)
    assert out.loss.item() == 0.0
    assert grad.abs().max() == 0


def _buckets(student_logits, topk, temperature):
    """Per vocabulary entry: log q, and its bucket's log Q and log P (top-k token or the tail)."""
    log_q = (student_logits.detach() / temperature).log_softmax(-1).double()
    ids, log_p_topk = topk.ids_BTK, topk.logprobs_BTK.double()
    in_topk = torch.zeros_like(log_q, dtype=torch.bool).scatter(-1, ids, True)
    log_q_tail = log_q.masked_fill(in_topk, -math.inf).logsumexp(-1, keepdim=True)
    log_p_tail = torch.log1p(-log_p_topk.exp().sum(-1, keepdim=True))
    log_Q = torch.where(in_topk, log_q, log_q_tail)
    log_P = log_p_tail.expand_as(log_q).scatter(-1, ids, log_p_topk)
    return log_q, log_Q, log_P


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sparse_forward_gradient_is_softmax_minus_bucketed_teacher(temperature):
    # ∂ KL(P ‖ Q)/∂z_v = (q_v − P_b · q_v / Q_b) / τ, b = v's bucket: the DESIGN identity
    # q − p with the teacher's bucket mass spread over the bucket in the student's shape.
    student, topk, mask = _random()
    (grad,) = torch.autograd.grad(_sparse(student, topk, mask, 0.0, temperature=temperature)
                                  .loss, student)
    log_q, log_Q, log_P = _buckets(student, topk, temperature)
    q = log_q.exp()
    expected = (q - (log_P - log_Q).exp() * q) / temperature / 6
    torch.testing.assert_close(grad.double(), expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("temperature", [1.0, 1.5])
def test_sparse_reverse_gradient_identity(temperature):
    # ∂ KL(Q ‖ P)/∂z_v = q_v (log Q_b − log P_b − KL(Q ‖ P)) / τ: the DESIGN identity per bucket.
    student, topk, mask = _random()
    out = _sparse(student, topk, mask, 1.0, temperature=temperature)
    (grad,) = torch.autograd.grad(out.loss, student)
    log_q, log_Q, log_P = _buckets(student, topk, temperature)
    kl = out.reverse_kl_BT.double().unsqueeze(-1)
    expected = log_q.exp() * (log_Q - log_P - kl) / temperature / 6
    torch.testing.assert_close(grad.double(), expected, rtol=1e-4, atol=1e-7)


def test_sparse_is_normalised_by_num_valid_tokens_across_micro_batches():
    student, topk, mask = _random()
    whole = _sparse(student, topk, mask, 0.5)
    (whole_grad,) = torch.autograd.grad(whole.loss, student)
    total, accumulated = 0.0, torch.zeros_like(student)
    for part in (slice(0, 1), slice(1, 2)):
        micro = student.detach()[part].clone().requires_grad_(True)
        piece = TeacherTopK(topk.logprobs_BTK[part], topk.ids_BTK[part])
        out = _sparse(micro, piece, mask[part], 0.5, num_valid_tokens=mask.sum())
        out.loss.backward()
        total += out.loss.item()
        accumulated[part] = micro.grad
    assert total == pytest.approx(whole.loss.item(), rel=1e-6)
    torch.testing.assert_close(accumulated, whole_grad)
