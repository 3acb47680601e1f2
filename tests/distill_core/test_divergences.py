"""Per-token divergences: which direction is which, the gradient identities, edge cases."""

import math

import pytest
import torch
import torch.nn.functional as F

from distill_core import (
    forward_kl,
    kl_loss,
    kl_terms,
    masked_mean,
    mix_kl,
    reverse_kl,
    token_entropy,
)

# A 3-token vocabulary where the two directions differ, so a swapped argument order shows.
P_TEACHER = torch.tensor([0.8, 0.1, 0.1])
Q_STUDENT = torch.tensor([0.5, 0.25, 0.25])
FORWARD_BY_HAND = 0.8 * math.log(0.8 / 0.5) + 2 * 0.1 * math.log(0.1 / 0.25)  # 0.192745…
REVERSE_BY_HAND = 0.5 * math.log(0.5 / 0.8) + 2 * 0.25 * math.log(0.25 / 0.1)  # 0.223144…


def _as_logits(probs):
    return probs.log().reshape(1, 1, -1)


def test_hand_computed_values_pin_the_directions():
    student, teacher = _as_logits(Q_STUDENT), _as_logits(P_TEACHER)
    assert forward_kl(student, teacher).item() == pytest.approx(FORWARD_BY_HAND, abs=1e-6)
    assert reverse_kl(student, teacher).item() == pytest.approx(REVERSE_BY_HAND, abs=1e-6)
    assert FORWARD_BY_HAND == pytest.approx(0.192745, abs=1e-6)
    assert REVERSE_BY_HAND == pytest.approx(0.223144, abs=1e-6)


def test_direction_agrees_with_torch_kl_div_used_correctly():
    student, teacher = torch.randn(2, 3, 17), torch.randn(2, 3, 17)
    log_q, log_p = student.log_softmax(-1), teacher.log_softmax(-1)
    # F.kl_div(input, target) computes KL(target ‖ input): forward KL takes input = log q.
    expected = F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(forward_kl(student, teacher), expected)
    expected_reverse = F.kl_div(log_p, log_q, log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(reverse_kl(student, teacher), expected_reverse)


def test_entropy_by_hand():
    entropy = token_entropy(_as_logits(Q_STUDENT)).item()
    assert entropy == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)), abs=1e-6)


def test_identical_inputs_give_zero():
    logits = torch.randn(3, 4, 50) * 3
    for value in (forward_kl(logits, logits), reverse_kl(logits, logits),
                  kl_loss(logits, logits, torch.ones(3, 4), 0.4, chunk_size=None).loss):
            torch.testing.assert_close(value, torch.zeros_like(value), atol=1e-6, rtol=0)


@pytest.mark.parametrize("chunk_size", [None, "auto"])
def test_mixture_endpoints(chunk_size):
    student, teacher = torch.randn(2, 5, 9), torch.randn(2, 5, 9)
    mask = torch.ones(2, 5)
    forward = forward_kl(student, teacher).mean()
    reverse = reverse_kl(student, teacher).mean()
    for weight, expected in ((0.0, forward), (1.0, reverse), (0.3, 0.3 * reverse + 0.7 * forward)):
        loss = kl_loss(student, teacher, mask, weight, chunk_size=chunk_size).loss
        torch.testing.assert_close(loss, expected)


def test_mix_kl_is_the_lambda_mix_and_checks_lambda():
    forward, reverse = torch.tensor([1.0, 2.0]), torch.tensor([10.0, 20.0])
    torch.testing.assert_close(mix_kl(forward, reverse, 0.25), torch.tensor([3.25, 6.5]))
    torch.testing.assert_close(mix_kl(forward, reverse, 0.0), forward)
    assert mix_kl(1.0, 3.0, 1.0) == 3.0  # batch means mix the same way
    with pytest.raises(ValueError, match="reverse_weight=1.5"):
        mix_kl(forward, reverse, 1.5)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_forward_kl_gradient_is_softmax_minus_teacher(temperature):
    student = torch.randn(2, 3, 11, requires_grad=True)
    teacher = torch.randn(2, 3, 11)
    (grad,) = torch.autograd.grad(forward_kl(student, teacher, temperature).sum(), student)
    q = torch.softmax(student.detach() / temperature, -1)
    p = torch.softmax(teacher / temperature, -1)
    torch.testing.assert_close(grad, (q - p) / temperature)
    # …which is the gradient of cross-entropy against the teacher's soft labels.
    soft_ce = F.cross_entropy(
        (student / temperature).reshape(-1, 11), p.reshape(-1, 11), reduction="sum"
    )
    (ce_grad,) = torch.autograd.grad(soft_ce, student)
    torch.testing.assert_close(grad, ce_grad)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_reverse_kl_gradient_identity(temperature):
    student = torch.randn(2, 3, 11, requires_grad=True)
    teacher = torch.randn(2, 3, 11)
    kl = reverse_kl(student, teacher, temperature)
    (grad,) = torch.autograd.grad(kl.sum(), student)
    log_q = torch.log_softmax(student.detach() / temperature, -1)
    log_p = torch.log_softmax(teacher / temperature, -1)
    expected = log_q.exp() * (log_q - log_p - kl.detach().unsqueeze(-1)) / temperature
    torch.testing.assert_close(grad, expected)


def test_teacher_never_receives_gradient():
    student = torch.randn(1, 2, 5, requires_grad=True)
    teacher = torch.randn(1, 2, 5, requires_grad=True)
    mask = torch.ones(1, 2)
    for chunk_size in (None, "auto"):
        kl_loss(student, teacher, mask, 0.5, chunk_size=chunk_size).loss.backward()
    (reverse_kl(student, teacher) + forward_kl(student, teacher)).sum().backward()
    assert teacher.grad is None
    assert student.grad is not None


def test_negative_infinity_logits_give_no_nan():
    # Padded vocabulary rows: -inf in both models; one token ruled out by the student only.
    student = torch.randn(2, 3, 8)
    teacher = torch.randn(2, 3, 8)
    student[..., 6:] = float("-inf")
    teacher[..., 6:] = float("-inf")
    student[0, 0, 2] = float("-inf")
    teacher[0, 0, 2] = float("-inf")
    student.requires_grad_(True)
    mask = torch.ones(2, 3)
    for chunk_size in (None, 2):
        out = kl_loss(student, teacher, mask, 0.5, chunk_size=chunk_size)
        (grad,) = torch.autograd.grad(out.loss, student)
        assert torch.isfinite(out.loss)
        assert torch.isfinite(grad).all()
        assert grad[..., 6:].abs().max() == 0
    for value in (*kl_terms(student, teacher), token_entropy(student)):
        assert torch.isfinite(value).all()


def test_masked_mean_of_fully_masked_batch_is_zero_with_zero_gradient():
    values = torch.randn(2, 3, requires_grad=True)
    result = masked_mean(values, torch.zeros(2, 3))
    assert result.item() == 0.0
    (grad,) = torch.autograd.grad(result, values)
    assert grad.abs().max() == 0


def test_masked_mean_ignores_nan_at_masked_positions():
    values = torch.tensor([[1.0, 3.0, float("nan")]])
    assert masked_mean(values, torch.tensor([[1, 1, 0]])).item() == 2.0


def test_masked_mean_global_count():
    values = torch.tensor([[1.0, 2.0, 3.0]])
    assert masked_mean(values, torch.ones(1, 3), num_valid_tokens=6).item() == 1.0
    assert masked_mean(values, torch.ones(1, 3), num_valid_tokens=torch.tensor(12)).item() == 0.5


@pytest.mark.parametrize("count", [-1, float("nan")])
def test_masked_mean_bad_count(count):
    with pytest.raises(ValueError, match="num_valid_tokens"):
        masked_mean(torch.ones(1, 2), torch.ones(1, 2), num_valid_tokens=count)


def test_mismatched_vocabularies_are_refused_not_broadcast():
    student = torch.zeros(1, 1, 151_936)
    teacher = torch.zeros(1, 1, 151_665)
    for function in (forward_kl, reverse_kl, kl_terms):
        with pytest.raises(ValueError, match=r"student_logits has shape \(1, 1, 151936\).*"
                                             r"teacher_logits has shape \(1, 1, 151665\)"):
            function(student, teacher)
    with pytest.raises(ValueError, match="151665"):
        kl_loss(student, teacher, torch.ones(1, 1), 0.0)


def test_broadcastable_shapes_are_refused():
    with pytest.raises(ValueError, match="must match exactly"):
        forward_kl(torch.zeros(2, 3, 5), torch.zeros(1, 3, 5))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("chunk_size", [None, "auto"])
def test_nan_or_inf_teacher_is_refused(bad, chunk_size):
    teacher = torch.randn(2, 3, 6)
    teacher[1, 2, 4] = bad
    with pytest.raises(ValueError, match=r"teacher_logits give NaN probabilities"):
        kl_loss(torch.randn(2, 3, 6), teacher, torch.ones(2, 3), 0.5, chunk_size=chunk_size)


@pytest.mark.parametrize("chunk_size", [None, 1, 3])
def test_nan_teacher_error_names_the_position(chunk_size):
    teacher = torch.randn(2, 4, 6)
    teacher[1, 2, 4] = float("nan")
    mask = torch.ones(2, 4)
    mask[1, 1] = 0  # the chunked path gathers rows around the gap
    with pytest.raises(ValueError, match=r"token position \(1, 2\)"):
        kl_loss(torch.randn(2, 4, 6), teacher, mask, 0.5, chunk_size=chunk_size)
    with pytest.raises(ValueError, match=r"token position \(1, 2\)"):
        forward_kl(torch.randn(2, 4, 6), teacher)


@pytest.mark.parametrize("weight", [-0.1, 1.01, float("nan")])
def test_reverse_weight_outside_unit_interval(weight):
    logits = torch.randn(1, 2, 4)
    with pytest.raises(ValueError, match="reverse_weight="):
        mix_kl(logits, logits, weight)
    with pytest.raises(ValueError, match="reverse_weight="):
        kl_loss(logits, logits, torch.ones(1, 2), weight)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("inf")])
def test_bad_temperature(temperature):
    logits = torch.randn(1, 2, 4)
    with pytest.raises(ValueError, match="temperature="):
        forward_kl(logits, logits, temperature)


def test_mask_shape_must_match_tokens():
    logits = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match=r"response_mask_BT has shape \(2, 4\)"):
        kl_loss(logits, logits, torch.ones(2, 4), 0.0)


def test_bad_chunk_size():
    logits = torch.randn(1, 2, 4)
    with pytest.raises(ValueError, match="chunk_size=0"):
        kl_loss(logits, logits, torch.ones(1, 2), 0.0, chunk_size=0)
