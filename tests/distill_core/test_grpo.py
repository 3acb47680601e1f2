"""GRPO: group advantages and the clipped token loss, on tiny CPU tensors."""

import math

import pytest
import torch

from distill_core import group_advantages, grpo_token_loss, k3_kl


def test_advantages_of_one_zero_one_zero_by_hand():
    advantages, all_equal = group_advantages(torch.tensor([[1.0, 0.0, 1.0, 0.0]]))
    # mean 0.5, population std 0.5 → ±0.5 / (0.5 + 1e-6)
    expected = torch.tensor([[1.0, -1.0, 1.0, -1.0]]) * 0.5 / (0.5 + 1e-6)
    torch.testing.assert_close(advantages, expected)
    assert not all_equal.item()
    centred, _ = group_advantages(torch.tensor([[1.0, 0.0, 1.0, 0.0]]), normalise_std=False)
    torch.testing.assert_close(centred, torch.tensor([[0.5, -0.5, 0.5, -0.5]]))


def test_all_equal_group_gives_exact_zeros_and_is_flagged():
    rewards = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    for normalise in (True, False):
        advantages, all_equal = group_advantages(rewards, normalise_std=normalise, eps=0.0)
        assert torch.isfinite(advantages).all()
        assert all_equal.tolist() == [True, True, False]
        assert advantages[:2].eq(0).all()
        assert advantages[2].abs().sum() > 0


def test_advantages_reject_single_sample_groups_and_nan():
    with pytest.raises(ValueError, match="G >= 2"):
        group_advantages(torch.tensor([[1.0], [0.0]]))
    with pytest.raises(ValueError, match="NaN"):
        group_advantages(torch.tensor([[1.0, math.nan]]))


def test_ratio_one_loss_is_minus_mean_advantage_and_gradient_is_reinforce():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.2, -4.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    advantages = torch.tensor([0.7, -1.3])
    loss, stats = grpo_token_loss(logprobs, logprobs.detach(), advantages, mask)
    tokens_advantage = torch.tensor([0.7, 0.7, 0.7, -1.3, -1.3])
    assert loss.item() == pytest.approx(-tokens_advantage.mean().item(), abs=1e-6)
    (grad,) = torch.autograd.grad(loss, logprobs)
    # ∂/∂ log q_t = −A · ratio / N = −A / N at ratio 1 (the REINFORCE gradient), 0 on padding
    expected = -advantages.unsqueeze(1) * mask / mask.sum()
    torch.testing.assert_close(grad, expected.float())
    assert stats["ratio_mean"] == pytest.approx(1.0)
    assert stats["clip_fraction"] == 0.0


def test_clipping_stops_gradient_outside_trust_region_for_positive_advantage():
    old = torch.zeros(1, 3)
    # ratios e^0.5 ≈ 1.65 (above 1.2: clipped), e^0.1 ≈ 1.105 (inside), e^-0.5 ≈ 0.61 (below 0.8)
    logprobs = torch.tensor([[0.5, 0.1, -0.5]], requires_grad=True)
    loss, stats = grpo_token_loss(logprobs, old, torch.tensor([1.0]), torch.ones(1, 3),
                                  clip_eps=0.2)
    (grad,) = torch.autograd.grad(loss, logprobs)
    assert grad[0, 0].item() == 0.0  # A > 0 and ratio > 1 + ε: no further push up
    assert grad[0, 1].item() == pytest.approx(-math.exp(0.1) / 3)
    # A > 0 and ratio < 1 − ε: min keeps the unclipped term, so the gradient still pulls it up
    assert grad[0, 2].item() == pytest.approx(-math.exp(-0.5) / 3)
    assert stats["clip_fraction"] == pytest.approx(1 / 3)
    # negative advantage: clipped below 1 − ε instead
    loss, _ = grpo_token_loss(logprobs, old, torch.tensor([-1.0]), torch.ones(1, 3))
    (grad,) = torch.autograd.grad(loss, logprobs)
    assert grad[0, 2].item() == 0.0 and grad[0, 0].item() > 0


def test_masked_tokens_contribute_nothing():
    logprobs = torch.randn(2, 4, requires_grad=True)
    old = logprobs.detach() + 0.05 * torch.randn(2, 4)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]])
    advantages = torch.tensor([1.0, -0.5])
    loss, _ = grpo_token_loss(logprobs, old, advantages, mask)
    changed = logprobs.detach().clone()
    changed[mask == 0] = 50.0  # garbage on padding
    loss_changed, _ = grpo_token_loss(changed, old, advantages, mask)
    assert loss.item() == pytest.approx(loss_changed.item())
    (grad,) = torch.autograd.grad(loss, logprobs)
    assert grad[mask == 0].eq(0).all()
    empty, stats = grpo_token_loss(logprobs, old, advantages, torch.zeros(2, 4))
    assert empty.item() == 0.0 and math.isfinite(stats["ratio_mean"])


def test_global_token_normalisation_splits_into_micro_batches():
    logprobs = torch.randn(4, 5)
    old = logprobs + 0.1 * torch.randn(4, 5)
    mask = (torch.rand(4, 5) > 0.3).int()
    advantages = torch.randn(4)
    whole, _ = grpo_token_loss(logprobs, old, advantages, mask)
    total = mask.sum()
    parts = sum(grpo_token_loss(logprobs[i:i + 2], old[i:i + 2], advantages[i:i + 2],
                                mask[i:i + 2], num_valid_tokens=total)[0] for i in (0, 2))
    assert parts.item() == pytest.approx(whole.item(), abs=1e-6)


def test_kl_term_is_zero_when_policy_equals_reference_and_positive_otherwise():
    logprobs = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    mask = torch.ones(1, 2)
    zero_advantage = torch.zeros(1)
    loss, stats = grpo_token_loss(logprobs, logprobs.detach(), zero_advantage, mask,
                                  ref_logprobs_BT=logprobs.detach(), kl_coef=0.5)
    assert loss.item() == 0.0 and stats["kl_to_ref"] == 0.0
    (grad,) = torch.autograd.grad(loss, logprobs)
    assert grad.eq(0).all()  # k3's gradient vanishes at q_θ = q_ref
    ref = torch.tensor([[-1.5, -1.0]])
    loss, stats = grpo_token_loss(logprobs, logprobs.detach(), zero_advantage, mask,
                                  ref_logprobs_BT=ref, kl_coef=0.5)
    expected = k3_kl(logprobs.detach(), ref).mean()
    assert expected > 0
    assert stats["kl_to_ref"] == pytest.approx(expected.item())
    assert loss.item() == pytest.approx(0.5 * expected.item())


def test_kl_coef_without_reference_and_shape_mismatch_are_errors():
    logprobs = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="ref_logprobs_BT"):
        grpo_token_loss(logprobs, logprobs, torch.zeros(2), torch.ones(2, 3), kl_coef=0.1)
    with pytest.raises(ValueError, match="advantages_B"):
        grpo_token_loss(logprobs, logprobs, torch.zeros(3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="mask_BT"):
        grpo_token_loss(logprobs, logprobs, torch.zeros(2), torch.ones(2, 4))
