"""GRPO: group-relative advantages and the clipped policy-gradient loss, per token.

GRPO (after distillation, with an accuracy reward) samples G responses per prompt from the
sampling ("old") policy q_old, scores each with a scalar reward r, and uses the group as its own
baseline — no value model:

    A_i = (r_i − mean_group r) / (std_group r + ε)        (or without the ÷ std)

Every token of response i carries A_i. With ratio_t = q_θ(y_t | s_t) / q_old(y_t | s_t) the
clipped (PPO) per-token loss is

    loss_t = −min(ratio_t · A, clip(ratio_t, 1 − ε_clip, 1 + ε_clip) · A)
           + β · k3_t,   k3_t = exp(log q_ref − log q_θ) − (log q_ref − log q_θ) − 1

k3 is a non-negative, unbiased estimate of KL(q_θ ‖ q_ref) to the initial (reference) policy on
tokens sampled from q_θ. Tokens are aggregated globally: Σ over all real response tokens of the
step divided by their count (not a per-sequence mean first), so long and short responses weigh
each token equally and micro-batches can share one denominator.
"""

from __future__ import annotations

import torch


def group_advantages(
    rewards_G_N: torch.Tensor, normalise_std: bool = True, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-relative advantages A = r − mean_group(r) [÷ (std_group(r) + eps)].

    rewards_G_N: (groups, G) rewards, one row per prompt, G samples each (G >= 2).
    normalise_std: divide by the group's (population, unbiased=False) standard deviation.
    Returns (advantages (groups, G) float32, all_equal_mask (groups,) bool): a group whose rewards
    are all equal carries no learning signal; its advantages are exactly 0 (never NaN) and it is
    flagged so the caller can count or skip it.
    """
    if rewards_G_N.dim() != 2 or rewards_G_N.shape[1] < 2:
        raise ValueError(f"rewards_G_N has shape {tuple(rewards_G_N.shape)}; expected "
                         "(groups, G) with G >= 2 samples per prompt")
    rewards = rewards_G_N.detach().float()
    if not bool(torch.isfinite(rewards).all()):
        raise ValueError("rewards_G_N holds NaN or inf; check the reward function")
    all_equal = (rewards == rewards[:, :1]).all(dim=1)
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if normalise_std:
        centred = centred / (rewards.std(dim=1, unbiased=False, keepdim=True) + eps)
    advantages = torch.where(all_equal.unsqueeze(1), torch.zeros_like(centred), centred)
    return advantages, all_equal


def k3_kl(logprobs_BT: torch.Tensor, ref_logprobs_BT: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(q_θ ‖ q_ref) on tokens sampled from q_θ, (B, T), >= 0:
    exp(log q_ref − log q_θ) − (log q_ref − log q_θ) − 1. Differentiable in logprobs_BT."""
    log_ratio = ref_logprobs_BT.detach().float() - logprobs_BT.float()
    return torch.exp(log_ratio) - log_ratio - 1.0


def grpo_token_loss(
    logprobs_BT: torch.Tensor,
    old_logprobs_BT: torch.Tensor,
    advantages_B: torch.Tensor,
    mask_BT: torch.Tensor,
    clip_eps: float = 0.2,
    ref_logprobs_BT: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    num_valid_tokens: float | int | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped GRPO loss with an optional k3 KL penalty to the reference policy.

    logprobs_BT: (B, T) log q_θ(y_t | s_t) of the sampled tokens, with gradient.
    old_logprobs_BT: (B, T) the same under the sampling policy q_old (no gradient).
    advantages_B: (B,) one advantage per response (from group_advantages, flattened).
    mask_BT: (B, T) 1 for real response tokens, 0 for padding.
    ref_logprobs_BT: (B, T) log q_ref of the tokens; needed when kl_coef > 0.
    num_valid_tokens: the denominator (default mask_BT.sum()): pass the step's global count of
        response tokens when the batch is split into micro-batches or processes.

    loss = Σ_t mask_t · [−min(ratio_t A, clip(ratio_t, 1 ± ε) A) + kl_coef · k3_t] / num_valid.
    Stats (floats, means over masked tokens): clip_fraction (tokens where the clipped term is the
    active one, so no gradient flows), kl_to_ref (k3; 0 without ref), ratio_mean.
    """
    if clip_eps <= 0:
        raise ValueError(f"clip_eps={clip_eps} must be > 0")
    if kl_coef < 0:
        raise ValueError(f"kl_coef={kl_coef} must be >= 0")
    if kl_coef > 0 and ref_logprobs_BT is None:
        raise ValueError(f"kl_coef={kl_coef} > 0 needs ref_logprobs_BT (the initial policy's)")
    for name, tensor in (("old_logprobs_BT", old_logprobs_BT), ("mask_BT", mask_BT),
                         ("ref_logprobs_BT", ref_logprobs_BT)):
        if tensor is not None and tensor.shape != logprobs_BT.shape:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)} but logprobs_BT has "
                             f"{tuple(logprobs_BT.shape)}; they must match")
    if advantages_B.shape != logprobs_BT.shape[:1]:
        raise ValueError(f"advantages_B has shape {tuple(advantages_B.shape)}; expected "
                         f"({logprobs_BT.shape[0]},): one advantage per response")

    mask = mask_BT.float()
    denominator = mask.sum() if num_valid_tokens is None else num_valid_tokens
    denominator = torch.clamp(torch.as_tensor(denominator, dtype=torch.float32,
                                              device=mask.device), min=1.0)
    advantage_BT = advantages_B.detach().float().unsqueeze(1)
    ratio = torch.exp(logprobs_BT.float() - old_logprobs_BT.detach().float())
    unclipped = ratio * advantage_BT
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantage_BT
    per_token = -torch.minimum(unclipped, clipped)
    kl_BT = k3_kl(logprobs_BT, ref_logprobs_BT) if ref_logprobs_BT is not None else None
    if kl_coef > 0:
        per_token = per_token + kl_coef * kl_BT
    loss = (per_token * mask).sum() / denominator

    with torch.no_grad():
        tokens = torch.clamp(mask.sum(), min=1.0)
        clip_active = (clipped < unclipped).float()  # min picked the clipped term: no gradient
        stats = {
            "clip_fraction": float((clip_active * mask).sum() / tokens),
            "kl_to_ref": float((kl_BT * mask).sum() / tokens) if kl_BT is not None else 0.0,
            "ratio_mean": float((ratio * mask).sum() / tokens),
        }
    return loss, stats
