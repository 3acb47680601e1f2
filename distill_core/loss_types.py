"""The typed values the losses take and return.

What the teacher gives the loss is one of three small values, so every loss in ``LOSSES`` has one
signature whatever the teacher's form:

- ``TeacherLogits(logits_BTV)``: full-vocabulary logits of a live teacher;
- ``TeacherTopK(logprobs_BTK, ids_BTK)``: a teacher-score cache, top-k log-probs and their ids;
- ``HiddenStates(hidden_BTD, head_weight_VD, vocab_size)``: final hidden states and LM-head weight,
  for the fused path, which forms logits = hidden · head_weightᵀ a chunk of rows at a time.

The student is its logits (B, T, V) or ``HiddenStates`` (fused). Every loss returns ``KLLoss``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch


class KLLoss(NamedTuple):
    """The scalar loss (differentiable w.r.t. the student) and detached per-token stats.

    forward_kl_BT = KL(p_teacher ‖ q_student), reverse_kl_BT = KL(q_student ‖ p_teacher),
    student_entropy_BT = H(q_student); all (B, T) float32 and 0 at masked positions. Against a
    top-k teacher the two KLs are the (k + 1)-bucket ones (distill_core.sparse).
    """

    loss: torch.Tensor
    forward_kl_BT: torch.Tensor
    reverse_kl_BT: torch.Tensor
    student_entropy_BT: torch.Tensor


@dataclass(frozen=True, eq=False)
class TeacherLogits:
    """Full-vocabulary teacher logits (B, T, V); p_teacher = softmax(logits / τ). Never gets a
    gradient."""

    logits_BTV: torch.Tensor


@dataclass(frozen=True, eq=False)
class TeacherTopK:
    """A teacher-score cache: the teacher's top-k log-probs (B, T, K) and their token ids (B, T, K).

    The log-probs are normalised over the full vocabulary at the temperature the cache was scored
    at; the remaining mass 1 − Σ_k p_k is one tail bucket.
    """

    logprobs_BTK: torch.Tensor
    ids_BTK: torch.Tensor

    def __post_init__(self) -> None:
        if self.logprobs_BTK.shape != self.ids_BTK.shape:
            raise ValueError(
                f"TeacherTopK: logprobs_BTK {tuple(self.logprobs_BTK.shape)} and ids_BTK "
                f"{tuple(self.ids_BTK.shape)} must have the same (B, T, K) shape"
            )


@dataclass(frozen=True, eq=False)
class HiddenStates:
    """A model's final hidden states and LM-head weight: logits = hidden · head_weight[:vocab]ᵀ.

    hidden_BTD: (B, T, D) or (N, D), at the response positions (after the final norm).
    head_weight_VD: (V_head, D), the LM head (for tied embeddings: the embedding matrix itself).
    vocab_size: the tokenizer's vocabulary; head rows at and beyond it (padding) are sliced off,
        as tasks.scoring.response_logits does. None: all V_head rows.
    Only plain linear heads qualify: no bias, soft-capping or logit scale (check_fused_head).
    """

    hidden_BTD: torch.Tensor
    head_weight_VD: torch.Tensor
    vocab_size: int | None = None

    def __post_init__(self) -> None:
        hidden, weight = self.hidden_BTD, self.head_weight_VD
        if hidden.dim() < 2 or weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
            raise ValueError(
                f"HiddenStates: hidden_BTD {tuple(hidden.shape)} must be (..., D) and "
                f"head_weight_VD {tuple(weight.shape)} must be (V, D) with the same D"
            )
        if self.vocab_size is not None and not 1 <= self.vocab_size <= weight.shape[0]:
            raise ValueError(
                f"HiddenStates: vocab_size={self.vocab_size} must lie in [1, {weight.shape[0]}] "
                "(the head's rows)"
            )

    @property
    def vocab(self) -> int:
        """The number of logits per token after slicing off padded head rows."""
        return self.head_weight_VD.shape[0] if self.vocab_size is None else self.vocab_size

    def logits(self) -> torch.Tensor:
        """The full (..., V) logits — what the fused path avoids holding; for references."""
        return self.hidden_BTD @ self.head_weight_VD[: self.vocab].T


TeacherTargets = TeacherLogits | TeacherTopK | HiddenStates
