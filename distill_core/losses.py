"""The distillation losses by name: λ-mixed token-level KL, masked and globally normalised.

    loss = Σ_tokens mask · [λ · KL(q_student ‖ p_teacher) + (1 − λ) · KL(p_teacher ‖ q_student)]
           / num_valid_tokens

``LOSSES`` maps a name to a ``LossEntry``: the loss function, all with one signature,

    LOSSES[name](student, teacher, response_mask_BT, objective, *, temperature=1.0,
                 num_valid_tokens=None, response_ids_BT=None, chunk_size="auto") -> KLLoss

plus what the loss needs and allows, as data a config checks before training
(``check_loss_choice``):
- ``exact``: full-vocabulary KL against ``TeacherLogits`` (or the fused path when the student and
  teacher come as ``HiddenStates``);
- ``sparse``: KL between (k + 1)-bucket distributions against a ``TeacherTopK`` cache (fused too);
- ``sampled``: REINFORCE surrogate for the reverse-KL part on the sampled response tokens, exact
  forward KL for the rest — valid only on tokens the student sampled at the loss temperature.

``kl_loss`` is the exact loss on logits with λ as a float; ``chunk_size`` picks its path:
``None`` is straightforward autograd over the whole (B, T, V) tensor (distill_core.divergences),
an int or ``"auto"`` the chunked custom-autograd path (distill_core.chunked).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from distill_core._checks import (
    check_logit_pair,
    check_mask,
    check_num_valid_tokens,
    check_reverse_weight,
    check_temperature,
)
from distill_core.chunked import chunked_mixed_kl
from distill_core.divergences import kl_terms, masked_mean, mix_kl, token_entropy, token_weights
from distill_core.fused import fused_kl_loss
from distill_core.loss_types import HiddenStates, KLLoss, TeacherLogits, TeacherTopK
from distill_core.objective import Objective
from distill_core.policy_gradient import reverse_kl_surrogate, sampled_token_logprobs
from distill_core.sparse import sparse_kl_terms

ChunkSize = int | Literal["auto"] | None


def kl_loss(
    student_logits_BTV: torch.Tensor,
    teacher_logits_BTV: torch.Tensor,
    response_mask_BT: torch.Tensor,
    reverse_weight: float,
    *,
    temperature: float = 1.0,
    num_valid_tokens: float | int | torch.Tensor | None = None,
    chunk_size: ChunkSize = "auto",
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
        forward_BT, reverse_BT, entropy_BT = kl_terms(
            student_logits_BTV, teacher_logits_BTV, temperature
        )
        loss = masked_mean(mix_kl(forward_BT, reverse_BT, reverse_weight), response_mask_BT,
                           num_valid_tokens)
        return _with_detached_stats(loss, response_mask_BT, forward_BT, reverse_BT, entropy_BT)
    if chunk_size != "auto" and not (isinstance(chunk_size, int) and chunk_size >= 1):
        raise ValueError(f"chunk_size={chunk_size!r} must be a positive int, 'auto' or None")
    loss, stats = chunked_mixed_kl(
        student_logits_BTV, teacher_logits_BTV, token_weights(response_mask_BT, num_valid_tokens),
        float(reverse_weight), temperature, chunk_rows=None if chunk_size == "auto" else chunk_size,
    )
    return KLLoss(loss, stats[0], stats[1], stats[2])


def _with_detached_stats(
    loss: torch.Tensor, mask_BT: torch.Tensor, *stats_BT: torch.Tensor
) -> KLLoss:
    """KLLoss with the per-token stats detached and 0 at masked positions."""
    keep = mask_BT != 0
    return KLLoss(loss, *(torch.where(keep, x.detach().float(), 0.0) for x in stats_BT))


# ----------------------------------------------------------------------------- losses by name

Student = torch.Tensor | HiddenStates
Teacher = TeacherLogits | TeacherTopK | HiddenStates


def exact_loss(
    student: Student,
    teacher: Teacher,
    response_mask_BT: torch.Tensor,
    objective: Objective,
    *,
    temperature: float = 1.0,
    num_valid_tokens: float | int | torch.Tensor | None = None,
    response_ids_BT: torch.Tensor | None = None,
    chunk_size: ChunkSize = "auto",
) -> KLLoss:
    """Masked mean of λ · KL(q_student ‖ p_teacher) + (1 − λ) · KL(p_teacher ‖ q_student), full
    vocabulary, p = softmax(teacher / τ), q = softmax(student / τ); λ = objective.reverse_weight.

    student: logits (B, T, V) → kl_loss (chunked unless chunk_size=None); or HiddenStates (B, T, D)
        with its head → the fused path (distill_core.fused), teacher as TeacherLogits or
        HiddenStates. response_ids_BT is not used.
    """
    _check_teacher("exact", teacher, _FULL_VOCABULARY)
    if isinstance(student, HiddenStates):
        return fused_kl_loss(student, teacher, response_mask_BT, _reverse_weight(objective),
                             temperature=temperature, num_valid_tokens=num_valid_tokens,
                             chunk_size=chunk_size)
    _check_logits_student("exact", student, teacher)
    return kl_loss(student, teacher.logits_BTV, response_mask_BT, _reverse_weight(objective),
                   temperature=temperature, num_valid_tokens=num_valid_tokens,
                   chunk_size=chunk_size)


def sparse_loss(
    student: Student,
    teacher: Teacher,
    response_mask_BT: torch.Tensor,
    objective: Objective,
    *,
    temperature: float = 1.0,
    num_valid_tokens: float | int | torch.Tensor | None = None,
    response_ids_BT: torch.Tensor | None = None,
    chunk_size: ChunkSize = "auto",
) -> KLLoss:
    """Masked mean of λ · KL(Q_student ‖ P_teacher) + (1 − λ) · KL(P_teacher ‖ Q_student) between
    the (k + 1)-bucket distributions of a TeacherTopK cache (distill_core.sparse).

    τ applies to the student only (the cache holds log-probs at its own temperature). Stats:
    the bucketed KLs and the student's full-vocabulary entropy. student: logits (B, T, V), or
    HiddenStates for the fused path (chunk_size applies only there). response_ids_BT is not used.
    """
    _check_teacher("sparse", teacher, (TeacherTopK,))
    if isinstance(student, HiddenStates):
        return fused_kl_loss(student, teacher, response_mask_BT, _reverse_weight(objective),
                             temperature=temperature, num_valid_tokens=num_valid_tokens,
                             chunk_size=chunk_size)
    check_mask(response_mask_BT, student.shape[:-1], name="response_mask_BT")
    forward_BT, reverse_BT = sparse_kl_terms(student, teacher.logprobs_BTK, teacher.ids_BTK,
                                             temperature)
    entropy_BT = token_entropy(student.detach(), temperature)
    mixed_BT = mix_kl(forward_BT, reverse_BT, _reverse_weight(objective))
    loss = masked_mean(mixed_BT, response_mask_BT, num_valid_tokens)
    return _with_detached_stats(loss, response_mask_BT, forward_BT, reverse_BT, entropy_BT)


def sampled_loss(
    student: Student,
    teacher: Teacher,
    response_mask_BT: torch.Tensor,
    objective: Objective,
    *,
    temperature: float = 1.0,
    num_valid_tokens: float | int | torch.Tensor | None = None,
    response_ids_BT: torch.Tensor | None = None,
    chunk_size: ChunkSize = "auto",
) -> KLLoss:
    """λ · (masked mean of the REINFORCE surrogate −r_t · log q(y_t), r_t = log p(y_t) − log q(y_t)
    detached) + (1 − λ) · masked mean of the exact KL(p_teacher ‖ q_student).

    The surrogate's gradient is an unbiased estimate of ∇ KL(q_student ‖ p_teacher) only when
    response_ids_BT (B, T) were sampled from the student at this temperature
    (requires_student_samples: check_loss_choice refuses the rest). Stats are exact (chunked path,
    chunk_size as in kl_loss). student: logits (B, T, V); no fused form.
    """
    _check_teacher("sampled", teacher, (TeacherLogits,))
    _check_logits_student("sampled", student, teacher)
    if response_ids_BT is None:
        raise ValueError("the sampled loss needs response_ids_BT: the (B, T) tokens the student "
                         "sampled, whose log-probs its REINFORCE surrogate uses")
    teacher_logits_BTV = teacher.logits_BTV.detach()
    forward = kl_loss(student, teacher_logits_BTV, response_mask_BT, 0.0,
                      temperature=temperature, num_valid_tokens=num_valid_tokens,
                      chunk_size=chunk_size)
    surrogate_BT, _ = reverse_kl_surrogate(
        sampled_token_logprobs(student, response_ids_BT, temperature),
        sampled_token_logprobs(teacher_logits_BTV, response_ids_BT, temperature),
    )
    reverse_estimate = masked_mean(surrogate_BT, response_mask_BT, num_valid_tokens)
    return forward._replace(loss=mix_kl(forward.loss, reverse_estimate, _reverse_weight(objective)))


_FULL_VOCABULARY = (TeacherLogits, HiddenStates)


def _check_teacher(name: str, teacher: object, allowed: tuple[type, ...]) -> None:
    if not isinstance(teacher, allowed):
        raise ValueError(
            f"the {name!r} loss takes the teacher as {' or '.join(t.__name__ for t in allowed)}, "
            f"got {type(teacher).__name__}; a top-k score cache (TeacherTopK) goes with 'sparse', "
            "full teacher logits (TeacherLogits) with 'exact' or 'sampled'"
        )


def _check_logits_student(name: str, student: object, teacher: object) -> None:
    if isinstance(student, HiddenStates) or isinstance(teacher, HiddenStates):
        raise ValueError(
            f"the {name!r} loss needs the student's logits (B, T, V) and TeacherLogits here; "
            "HiddenStates (the fused path) go with 'exact' or 'sparse', the student and a "
            "full teacher both as HiddenStates"
        )


def _reverse_weight(objective: Objective) -> float:
    if not isinstance(objective, Objective):
        raise ValueError(f"objective={objective!r} must be a distill_core.Objective, e.g. "
                         "Objective.parse('opd'), parsed once from the config")
    return objective.reverse_weight


LossFunction = Callable[..., KLLoss]


@dataclass(frozen=True)
class LossEntry:
    """One loss by name and what it needs and allows, as data a config checks up front.

    teachers: the teacher values it takes. hidden_states: it has a fused form (student as
    HiddenStates). needs_response_ids: it reads response_ids_BT.
    requires_student_samples: its gradient of KL(q_student ‖ p_teacher) is a REINFORCE estimate,
    unbiased only when the response tokens were sampled from the student at the loss
    temperature (when λ > 0).
    """

    function: LossFunction
    teachers: tuple[type, ...]
    hidden_states: bool
    needs_response_ids: bool
    requires_student_samples: bool

    def __call__(self, student, teacher, response_mask_BT, objective, **options) -> KLLoss:
        return self.function(student, teacher, response_mask_BT, objective, **options)


LOSSES: dict[str, LossEntry] = {
    "exact": LossEntry(exact_loss, _FULL_VOCABULARY, hidden_states=True,
                       needs_response_ids=False, requires_student_samples=False),
    "sparse": LossEntry(sparse_loss, (TeacherTopK,), hidden_states=True,
                        needs_response_ids=False, requires_student_samples=False),
    "sampled": LossEntry(sampled_loss, (TeacherLogits,), hidden_states=False,
                         needs_response_ids=True, requires_student_samples=True),
}


def check_loss_choice(
    name: str,
    objective: Objective,
    *,
    temperature: float,
    sampling_temperature: float,
    hidden_states: bool = False,
) -> LossEntry:
    """The entry LOSSES[name], after refusing a combination its estimator does not support.

    temperature: the loss's τ; sampling_temperature: the rollouts' (the student's on-policy
    samples). hidden_states: the trainer will pass HiddenStates (the fused path).
    """
    if name not in LOSSES:
        raise ValueError(f"loss={name!r} is not one of {tuple(LOSSES)}")
    entry = LOSSES[name]
    if hidden_states and not entry.hidden_states:
        raise ValueError(f"loss={name!r} has no fused form: give it the student's logits, or "
                         f"use one of {tuple(n for n, e in LOSSES.items() if e.hidden_states)}")
    if entry.requires_student_samples and _reverse_weight(objective) > 0:
        _check_student_samples(name, objective, temperature, sampling_temperature)
    return entry


def _check_student_samples(name: str, objective: Objective, temperature: float,
                           sampling_temperature: float) -> None:
    if not objective.on_policy:
        raise ValueError(
            f"loss={name!r} with objective {objective.name!r}: its REINFORCE estimate of "
            "∇KL(q_student ‖ p_teacher) needs response tokens sampled from the student, and "
            "teacher-written prefixes are not (the estimate is biased); use loss='exact' or "
            "'sparse' for teacher-prefix objectives"
        )
    if sampling_temperature != temperature:
        raise ValueError(
            f"loss={name!r} with sampling temperature {sampling_temperature} but loss "
            f"temperature {temperature}: the REINFORCE estimate of ∇KL(q_student ‖ p_teacher) "
            "is unbiased only for tokens drawn from softmax(logits / τ) at the loss's τ; set the "
            "two equal or use loss='exact'"
        )
