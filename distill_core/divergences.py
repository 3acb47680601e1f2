"""Per-token divergences between teacher and student next-token distributions.

These are the straightforward full-vocabulary forms: they hold (log-)probabilities of the whole
(B, T, V) logits at once and let autograd differentiate them. They are the reference that the
chunked path (distill_core.chunked) is tested against, and the right choice for small vocabularies.

Notation: p = p_teacher = softmax(teacher_logits / τ), q = q_student = softmax(student_logits / τ).
The teacher side is always detached: no gradient ever reaches the teacher's logits.
Computation happens in float32 whatever the input dtype (bf16 log-softmax is too coarse for KL).
Vocabulary entries whose logit is -inf in both models (padded rows) contribute exactly 0.

``mix_kl`` is the one place the two directions are mixed by λ: every loss in distill_core calls
it. ``masked_mean`` / ``token_weights`` are the one masked, globally normalised reduction.
"""

from __future__ import annotations

import torch

from distill_core._checks import (
    check_logit_pair,
    check_mask,
    check_num_valid_tokens,
    check_reverse_weight,
    check_teacher_log_probs,
    check_temperature,
)


def finite_log_softmax(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """float32 log_softmax(logits / τ) with -inf replaced by the most negative finite float.

    The clamp keeps 0 · (log 0 − log 0) at 0 instead of NaN for tokens both models rule out,
    in values and in gradients.
    """
    log_probs = torch.log_softmax(logits.float() / temperature, dim=-1)
    return log_probs.clamp(min=torch.finfo(log_probs.dtype).min)


def _teacher_log_probs(teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    with torch.no_grad():
        log_p = torch.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
        check_teacher_log_probs(log_p, token_shape=teacher_logits.shape[:-1])
        return log_p.clamp_(min=torch.finfo(log_p.dtype).min)


def forward_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Forward KL(p_teacher ‖ q_student) = Σ_v p_v (log p_v − log q_v), per token.

    student_logits, teacher_logits: (B, T, V), same shape. Returns (B, T) float32.
    Gradient w.r.t. student logits z: (q − p) / τ — cross-entropy against the teacher's soft labels.
    """
    check_logit_pair(student_logits, teacher_logits)
    check_temperature(temperature)
    log_p = _teacher_log_probs(teacher_logits, temperature)
    log_q = finite_log_softmax(student_logits, temperature)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def reverse_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Reverse KL(q_student ‖ p_teacher) = Σ_v q_v (log q_v − log p_v), per token.

    student_logits, teacher_logits: (B, T, V), same shape. Returns (B, T) float32.
    Gradient w.r.t. student logits z: q ⊙ (log q − log p − KL(q ‖ p)) / τ.
    """
    check_logit_pair(student_logits, teacher_logits)
    check_temperature(temperature)
    log_p = _teacher_log_probs(teacher_logits, temperature)
    log_q = finite_log_softmax(student_logits, temperature)
    return (log_q.exp() * (log_q - log_p)).sum(dim=-1)


def mix_kl(forward, reverse, reverse_weight: float):
    """The λ-mix L_λ = λ · KL(q_student ‖ p_teacher) + (1 − λ) · KL(p_teacher ‖ q_student).

    forward: KL(p_teacher ‖ q_student), reverse: KL(q_student ‖ p_teacher) — per-token tensors of
    any one shape, or batch means (tensors or floats). reverse_weight: λ ∈ [0, 1]; 0 is pure
    forward KL, 1 pure reverse KL. Every loss in distill_core mixes its two directions here.
    """
    check_reverse_weight(reverse_weight)
    return reverse_weight * reverse + (1.0 - reverse_weight) * forward


def kl_terms(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token (KL(p_teacher ‖ q_student), KL(q_student ‖ p_teacher), H(q_student)) in one pass.

    student_logits, teacher_logits: (B, T, V), same shape. Returns three (B, T) float32 tensors,
    differentiable w.r.t. the student logits.
    """
    check_logit_pair(student_logits, teacher_logits)
    check_temperature(temperature)
    log_p = _teacher_log_probs(teacher_logits, temperature)
    log_q = finite_log_softmax(student_logits, temperature)
    log_ratio = log_q - log_p  # log q − log p
    q = log_q.exp()
    forward = -(log_p.exp() * log_ratio).sum(dim=-1)
    reverse = (q * log_ratio).sum(dim=-1)
    entropy = -(q * log_q).sum(dim=-1)
    return forward, reverse, entropy


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy H(q) = −Σ_v q_v log q_v of softmax(logits / τ), per token, in nats.

    logits: (B, T, V). Returns (B, T) float32, differentiable.
    """
    check_temperature(temperature)
    log_q = finite_log_softmax(logits, temperature)
    return -(log_q.exp() * log_q).sum(dim=-1)


def masked_mean(
    values: torch.Tensor,
    mask: torch.Tensor,
    num_valid_tokens: float | int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Σ values · mask / num_valid_tokens.

    values, mask: (B, T). num_valid_tokens: the number of valid tokens the optimiser step averages
    over — pass the global count across gradient-accumulation micro-batches and devices so each
    token weighs the same; default: this batch's mask.sum(). A count of 0 (fully masked batch)
    gives 0 with a zero gradient, never NaN.
    """
    check_mask(mask, values.shape, name="mask")
    check_num_valid_tokens(num_valid_tokens)
    weights = mask.to(values.dtype)
    count = weights.sum() if num_valid_tokens is None else num_valid_tokens
    # where(), not a product: a NaN at a masked position (e.g. padding) must not leak into the sum.
    total = torch.where(weights > 0, values * weights, torch.zeros_like(values)).sum()
    if isinstance(count, torch.Tensor):
        count = count.to(total.dtype)
        return total / torch.where(count > 0, count, torch.ones_like(count))
    return total / (float(count) if count > 0 else 1.0)


def token_weights(
    mask: torch.Tensor, num_valid_tokens: float | int | torch.Tensor | None = None
) -> torch.Tensor:
    """Per-token weights mask / num_valid_tokens as float32, the same shape as mask.

    Σ weights · values is masked_mean(values, mask, num_valid_tokens): the chunked and fused paths
    carry these weights row by row. A count of 0 gives all-zero weights.
    """
    check_num_valid_tokens(num_valid_tokens)
    mask = mask.to(torch.float32)
    count = mask.sum() if num_valid_tokens is None else torch.as_tensor(
        num_valid_tokens, dtype=torch.float32, device=mask.device
    )
    return mask / torch.where(count > 0, count, torch.ones_like(count))
