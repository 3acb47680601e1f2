"""Sparse teacher (top-k + tail bucket): the documented tail treatment, its error, bad input."""

import pytest
import torch

from distill_core import forward_kl, mix_kl, reverse_kl, sparse_kl_terms


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
