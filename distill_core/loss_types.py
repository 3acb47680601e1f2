"""The typed values the losses take and return.

What the teacher gives the loss is one of two small values, so every loss in ``LOSSES`` has one
signature whatever the teacher's form:

- ``TeacherLogits(logits_BTV)``: full-vocabulary logits of a live teacher;
- ``TeacherTopK(logprobs_BTK, ids_BTK)``: a teacher-score cache, top-k log-probs and their ids.

The student is its logits (B, T, V). Every loss returns ``KLLoss``.
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


TeacherTargets = TeacherLogits | TeacherTopK
