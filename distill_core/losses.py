"""The distillation loss over a batch: λ-mixed token-level KL, masked and globally normalised.

    loss = Σ_tokens mask · [λ · KL(q_student ‖ p_teacher) + (1 − λ) · KL(p_teacher ‖ q_student)]
           / num_valid_tokens

Two implementations with the same values and gradients, picked by ``chunk_size``:
- ``None``: straightforward autograd over the whole (B, T, V) tensor (distill_core.divergences);
- an int or ``"auto"``: the chunked custom-autograd path (distill_core.chunked), which never
  holds more than one chunk of full-vocabulary probabilities and skips masked rows.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

from distill_core._checks import (
    check_logit_pair,
    check_mask,
    check_num_valid_tokens,
    check_reverse_weight,
    check_temperature,
)
from distill_core.chunked import chunked_mixed_kl
from distill_core.divergences import kl_terms, masked_mean, mix_kl, token_weights


class KLLoss(NamedTuple):
    """The scalar loss (differentiable w.r.t. the student logits) and detached per-token stats.

    forward_kl_BT = KL(p_teacher ‖ q_student), reverse_kl_BT = KL(q_student ‖ p_teacher),
    student_entropy_BT = H(q_student); all (B, T) float32 and 0 at masked positions.
    """

    loss: torch.Tensor
    forward_kl_BT: torch.Tensor
    reverse_kl_BT: torch.Tensor
    student_entropy_BT: torch.Tensor


def kl_loss(
    student_logits_BTV: torch.Tensor,
    teacher_logits_BTV: torch.Tensor,
    response_mask_BT: torch.Tensor,
    reverse_weight: float,
    *,
    temperature: float = 1.0,
    num_valid_tokens: float | int | torch.Tensor | None = None,
    chunk_size: int | Literal["auto"] | None = "auto",
) -> KLLoss:
    """Masked mean of λ · KL(q_student ‖ p_teacher) + (1 − λ) · KL(p_teacher ‖ q_student).

    student_logits_BTV, teacher_logits_BTV: (B, T, V) logits at the response positions, same
        shape; any float dtype (computation is float32). The teacher never gets a gradient.
    response_mask_BT: (B, T), nonzero where a token counts.
    reverse_weight: λ ∈ [0, 1].
    temperature: τ > 0; both distributions are softmax(logits / τ) (no τ² rescaling).
    num_valid_tokens: the divisor — the global count of valid tokens across gradient-accumulation
        micro-batches and devices; default: response_mask_BT.sum(). 0 gives a zero loss.
    chunk_size: token rows per chunk for the chunked path, "auto" to size chunks from the
        vocabulary, or None for the straightforward full-tensor path.
    """
    check_logit_pair(student_logits_BTV, teacher_logits_BTV)
    if student_logits_BTV.dim() != 3:
        raise ValueError(
            f"student_logits_BTV has shape {tuple(student_logits_BTV.shape)}; expected (B, T, V)"
        )
    check_mask(response_mask_BT, student_logits_BTV.shape[:-1], name="response_mask_BT")
    check_reverse_weight(reverse_weight)
    check_temperature(temperature)
    check_num_valid_tokens(num_valid_tokens)
    if chunk_size is None:
        return _straightforward(
            student_logits_BTV, teacher_logits_BTV, response_mask_BT,
            float(reverse_weight), temperature, num_valid_tokens,
        )
    if chunk_size != "auto" and not (isinstance(chunk_size, int) and chunk_size >= 1):
        raise ValueError(f"chunk_size={chunk_size!r} must be a positive int, 'auto' or None")
    weights_BT = token_weights(response_mask_BT, num_valid_tokens)
    loss, stats = chunked_mixed_kl(
        student_logits_BTV, teacher_logits_BTV, weights_BT, float(reverse_weight), temperature,
        chunk_rows=None if chunk_size == "auto" else chunk_size,
    )
    return KLLoss(loss, stats[0], stats[1], stats[2])


def _straightforward(
    student_logits_BTV: torch.Tensor,
    teacher_logits_BTV: torch.Tensor,
    mask_BT: torch.Tensor,
    reverse_weight: float,
    temperature: float,
    num_valid_tokens: float | int | torch.Tensor | None,
) -> KLLoss:
    forward_BT, reverse_BT, entropy_BT = kl_terms(
        student_logits_BTV, teacher_logits_BTV, temperature
    )
    mixed_BT = mix_kl(forward_BT, reverse_BT, reverse_weight)
    loss = masked_mean(mixed_BT, mask_BT, num_valid_tokens)
    keep = mask_BT != 0
    stats = [torch.where(keep, x.detach(), 0.0) for x in (forward_BT, reverse_BT, entropy_BT)]
    return KLLoss(loss, *stats)
