"""Reverse KL from sampled tokens only: the policy-gradient (REINFORCE) form.

On student-written prefixes the response tokens y_t were sampled from q_student, so reverse
KL(q_student ‖ p_teacher) can be optimised from the sampled tokens' log-probs alone, without the
full vocabulary:

    reward  r_t = log p_teacher(y_t | s_t) − log q_student(y_t | s_t)      (no gradient)
    surrogate_t = −r_t · log q_student(y_t | s_t)
    ∇ surrogate_t = (log q − log p)(y_t) ∇ log q(y_t),  an unbiased estimate of
    ∇ KL(q ‖ p) = E_{y~q}[(log q(y) − log p(y)) ∇ log q(y)]   (E_q[∇ log q] = 0 drops the +1)

Its mean −r over the sampled tokens is the single-sample (k1) estimate of the reverse KL value.
"""

from __future__ import annotations

import torch

from distill_core._checks import check_temperature


def sampled_token_logprobs(
    logits_BTV: torch.Tensor, token_ids_BT: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """log softmax(logits / τ)[token] per position, (B, T) float32, differentiable.

    Uses gather − logsumexp, so only the (B, T, V) gradient buffer is ever full-vocabulary.
    """
    check_temperature(temperature)
    if logits_BTV.shape[:-1] != token_ids_BT.shape:
        raise ValueError(
            f"token_ids_BT has shape {tuple(token_ids_BT.shape)} but logits_BTV has token "
            f"positions {tuple(logits_BTV.shape[:-1])}; pass one sampled token per position"
        )
    scaled = logits_BTV.float() / temperature
    picked = scaled.gather(-1, token_ids_BT.long().unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(scaled, dim=-1)


def reverse_kl_surrogate(
    student_logprobs_BT: torch.Tensor, teacher_logprobs_BT: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token REINFORCE surrogate for reverse KL(q_student ‖ p_teacher) and its reward.

    student_logprobs_BT: (B, T) log q_student(y_t | s_t) of the sampled tokens, with gradient.
    teacher_logprobs_BT: (B, T) log p_teacher(y_t | s_t) of the same tokens.
    Returns (surrogate_BT, reward_BT): reduce the surrogate with masked_mean and backpropagate;
    reward_BT = log p − log q is detached (its negated masked mean estimates the reverse KL).
    """
    if student_logprobs_BT.shape != teacher_logprobs_BT.shape:
        raise ValueError(
            f"student_logprobs_BT has shape {tuple(student_logprobs_BT.shape)} but "
            f"teacher_logprobs_BT has shape {tuple(teacher_logprobs_BT.shape)}; they must match"
        )
    if bool(torch.isnan(teacher_logprobs_BT).any()):
        raise ValueError("teacher_logprobs_BT holds NaN; check the teacher's forward pass")
    reward_BT = (teacher_logprobs_BT.detach().float() - student_logprobs_BT.detach().float())
    surrogate_BT = -reward_BT * student_logprobs_BT.float()
    return surrogate_BT, reward_BT
