"""The chunked path: same values and gradients as the straightforward one, and lean."""

import pytest
import torch

from distill_core import kl_loss


def _inputs(dtype=torch.float32, batch=3, length=7, vocab=29):
    student = (torch.randn(batch, length, vocab) * 2).to(dtype).requires_grad_(True)
    teacher = (torch.randn(batch, length, vocab) * 2).to(dtype)
    mask = torch.ones(batch, length)
    mask[0, 5:] = 0
    mask[2, :2] = 0
    return student, teacher, mask


def _run(student, teacher, mask, chunk_size, **kwargs):
    out = kl_loss(student, teacher, mask, chunk_size=chunk_size, **kwargs)
    (grad,) = torch.autograd.grad(out.loss, student)
    return out, grad


@pytest.mark.parametrize("reverse_weight", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("chunk_size", [1, 4, "auto"])
def test_chunked_matches_straightforward_fp32(reverse_weight, temperature, chunk_size):
    student, teacher, mask = _inputs()
    kwargs = dict(reverse_weight=reverse_weight, temperature=temperature)
    reference, reference_grad = _run(student, teacher, mask, None, **kwargs)
    chunked, chunked_grad = _run(student, teacher, mask, chunk_size, **kwargs)
    torch.testing.assert_close(chunked.loss, reference.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chunked_grad, reference_grad, rtol=1e-4, atol=1e-7)
    for name in ("forward_kl_BT", "reverse_kl_BT", "student_entropy_BT"):
        torch.testing.assert_close(getattr(chunked, name), getattr(reference, name),
                                   rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("reverse_weight", [0.0, 0.5, 1.0])
def test_chunked_matches_straightforward_bf16(reverse_weight):
    student, teacher, mask = _inputs(dtype=torch.bfloat16)
    reference, reference_grad = _run(student, teacher, mask, None, reverse_weight=reverse_weight)
    chunked, chunked_grad = _run(student, teacher, mask, 4, reverse_weight=reverse_weight)
    assert chunked_grad.dtype == torch.bfloat16
    torch.testing.assert_close(chunked.loss, reference.loss, rtol=1e-5, atol=1e-6)
    # Both compute in float32 and round the gradient to bf16 once: equal to bf16 precision.
    torch.testing.assert_close(chunked_grad.float(), reference_grad.float(), rtol=1e-2, atol=1e-4)


def test_global_token_count_makes_accumulation_match_one_batch():
    student, teacher, mask = _inputs()
    whole, whole_grad = _run(student, teacher, mask, 3, reverse_weight=0.5)
    total = mask.sum()
    accumulated = torch.zeros_like(student)
    loss_sum = 0.0
    for part in (slice(0, 1), slice(1, 3)):  # two micro-batches, one optimiser step
        micro = student.detach()[part].clone().requires_grad_(True)
        out = kl_loss(micro, teacher[part], mask[part], 0.5, num_valid_tokens=total, chunk_size=3)
        out.loss.backward()
        accumulated[part] = micro.grad
        loss_sum += out.loss.item()
    assert loss_sum == pytest.approx(whole.loss.item(), rel=1e-5)
    torch.testing.assert_close(accumulated, whole_grad)


def test_fully_masked_batch_gives_zero_not_nan():
    student, teacher, _ = _inputs()
    for chunk_size in (None, 2):
        out, grad = _run(student, teacher, torch.zeros(3, 7), chunk_size, reverse_weight=0.5)
        assert out.loss.item() == 0.0
        assert grad.abs().max() == 0


def test_masked_rows_are_never_computed():
    # Garbage (NaN) logits at padded positions cannot leak into the loss or the gradient.
    student, teacher, mask = _inputs()
    student = student.detach().clone()
    student[0, 6] = float("nan")
    teacher[2, 0] = float("nan")
    student.requires_grad_(True)
    out, grad = _run(student, teacher, mask, 2, reverse_weight=0.5)
    assert torch.isfinite(out.loss)
    assert torch.isfinite(grad).all()
    assert grad[0, 6].abs().max() == 0


def test_upstream_gradient_scales_the_result():
    student, teacher, mask = _inputs()
    _, grad = _run(student, teacher, mask, 4, reverse_weight=0.2)
    scaled = 2.5 * kl_loss(student, teacher, mask, 0.2, chunk_size=4).loss
    (scaled_grad,) = torch.autograd.grad(scaled, student)
    torch.testing.assert_close(scaled_grad, 2.5 * grad)


def test_second_backward_is_refused():
    student, teacher, mask = _inputs()
    loss = kl_loss(student, teacher, mask, 0.5, chunk_size=4).loss
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward pass"):
        loss.backward()


def test_no_gradient_needed_still_gives_values():
    student, teacher, mask = _inputs()
    reference = kl_loss(student, teacher, mask, 0.5, chunk_size=None)
    with torch.no_grad():
        chunked = kl_loss(student, teacher, mask, 0.5, chunk_size=4)
    torch.testing.assert_close(chunked.loss, reference.loss.detach(), rtol=1e-5, atol=1e-6)


def test_non_contiguous_logits_slice():
    # Training code slices logits[:, :-1]; the chunked path must not need a contiguous copy.
    student, teacher, mask = _inputs(length=8)
    sliced_student, sliced_teacher, sliced_mask = student[:, :-1], teacher[:, :-1], mask[:, :-1]
    assert not sliced_student.is_contiguous()
    reference, reference_grad = _run(sliced_student, sliced_teacher, sliced_mask, None,
                                     reverse_weight=0.5)
    chunked, chunked_grad = _run(sliced_student, sliced_teacher, sliced_mask, 3,
                                 reverse_weight=0.5)
    torch.testing.assert_close(chunked.loss, reference.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chunked_grad, reference_grad, rtol=1e-4, atol=1e-7)
