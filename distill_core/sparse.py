"""KL against a sparse teacher: its top-k log-probabilities plus one tail bucket.

A teacher-score cache cannot store 150k probabilities per token, so it keeps the teacher's k most
likely tokens (ids and log-probs) and lets the rest of the mass, p_tail = 1 − Σ_k p_k, stand as
one bucket. Both directions are then computed exactly between the (k + 1)-bucket distributions

    P = (p_1, …, p_k, p_tail)        Q = (q_1, …, q_k, q_tail),   q_tail = 1 − Σ_k q_k,

where q_i is the full-vocabulary student probability of the teacher's i-th token:

    forward:  KL(P ‖ Q) = Σ_k p_k log(p_k / q_k) + p_tail log(p_tail / q_tail)
    reverse:  KL(Q ‖ P) = Σ_k q_k log(q_k / p_k) + q_tail log(q_tail / p_tail)

How the tail is treated, exactly: the full-vocabulary KL splits as (chain rule of KL)

    KL(p ‖ q) = KL(P ‖ Q) + p_tail · KL(p(·|tail) ‖ q(·|tail))
    KL(q ‖ p) = KL(Q ‖ P) + q_tail · KL(q(·|tail) ‖ p(·|tail))

so the sparse value drops only the second term: how the two models spread mass *inside* the tail.
It is never above the full value, equals it when the student's tail has the teacher's shape, and
its gradient still moves the student's total tail mass towards the teacher's. Tail masses are
floored at TAIL_FLOOR so a top-k that covers (numerically) all the mass stays finite.
"""

from __future__ import annotations

import torch

from distill_core._checks import check_temperature, unravel
from distill_core.chunked import chunk_log_softmax
from distill_core.divergences import mix_kl

TAIL_FLOOR = 1e-12
_SUM_TOLERANCE = 1e-3  # top-k probabilities may exceed 1 by this much (rounding in the cache)


def sparse_kl_terms(
    student_logits_BTV: torch.Tensor,
    teacher_topk_logprobs_BTK: torch.Tensor,
    teacher_topk_ids_BTK: torch.Tensor,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token bucketed (KL(P_teacher ‖ Q_student), KL(Q_student ‖ P_teacher)), each (B, T).

    student_logits_BTV: (B, T, V) student logits; the student is softmax(logits / τ).
    teacher_topk_logprobs_BTK: (B, T, K) teacher log-probs of its top-k tokens, as cached (the
        teacher's temperature is whatever the cache was scored at; τ applies to the student only).
    teacher_topk_ids_BTK: (B, T, K) int token ids of those log-probs, distinct per position.
    Differentiable w.r.t. the student logits; float64 bucket arithmetic.
    """
    if student_logits_BTV.dim() != 3:
        raise ValueError(
            f"student_logits_BTV has shape {tuple(student_logits_BTV.shape)}; expected (B, T, V)"
        )
    check_sparse_teacher(teacher_topk_logprobs_BTK, teacher_topk_ids_BTK,
                         student_logits_BTV.shape[:-1], student_logits_BTV.shape[-1])
    check_temperature(temperature)
    scaled = student_logits_BTV.float() / temperature
    log_normaliser = torch.logsumexp(scaled, dim=-1, keepdim=True)
    student_topk = scaled.gather(-1, teacher_topk_ids_BTK.long()) - log_normaliser
    return bucket_kl_terms(student_topk, teacher_topk_logprobs_BTK)


def bucket_kl_terms(
    student_topk_logprobs: torch.Tensor, teacher_topk_logprobs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(KL(P_teacher ‖ Q_student), KL(Q_student ‖ P_teacher)) between (k + 1)-bucket distributions.

    student_topk_logprobs: (..., K) log q_student of the teacher's top-k tokens (differentiable).
    teacher_topk_logprobs: (..., K) the teacher's cached log-probs of the same tokens (detached).
    The tail buckets are 1 − Σ_k of each. Returns two (...) float32 tensors; float64 inside.
    """
    student_topk = student_topk_logprobs.double()
    teacher_topk = teacher_topk_logprobs.detach().double()
    # The floor keeps 0 · log 0 at 0 (a -inf padded top-k entry, a student logit of -inf).
    floor = torch.finfo(torch.float32).min
    log_Q = torch.cat([student_topk, _log_tail(student_topk)], dim=-1).clamp(min=floor)
    log_P = torch.cat([teacher_topk, _log_tail(teacher_topk)], dim=-1).clamp(min=floor)
    log_ratio = log_Q - log_P
    forward = -(log_P.exp() * log_ratio).sum(dim=-1)
    reverse = (log_Q.exp() * log_ratio).sum(dim=-1)
    return forward.float(), reverse.float()


def sparse_chunk(
    student_rows: torch.Tensor,  # (C, V) logits
    topk_logprobs: torch.Tensor,  # (C, K)
    topk_ids: torch.Tensor,  # (C, K)
    row_weights: torch.Tensor,  # (C,) float32
    reverse_weight: float,
    temperature: float,
    needs_grad: bool,
    buffers: tuple[torch.Tensor, ...],  # chunked.ChunkBuffers.take: four (C, V) float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Weighted loss, per-row [forward KL, reverse KL, H(q_student)] and ∂loss/∂logits of a chunk
    (the gradient in buffers[2]: use it before the next chunk).

    The bucket arithmetic is K + 1 numbers a row, so autograd differentiates it w.r.t. the
    student's top-k log-probs (a_i = ∂loss/∂ log q_i); the vocabulary-wide part is analytic:
    log q_i = s_{id_i} − logsumexp(s), s = z / τ, hence
        ∂loss/∂z_v = (Σ_i a_i [v = id_i] − q_v Σ_i a_i) / τ.
    """
    log_q = chunk_log_softmax(student_rows, temperature, out=buffers[0])  # (C, V) float32
    q = torch.exp(log_q, out=buffers[2])
    entropy = -torch.einsum("cv,cv->c", q, log_q)
    ids = topk_ids.long()
    with torch.enable_grad():
        student_topk = log_q.gather(-1, ids).requires_grad_(needs_grad)
        forward, reverse = bucket_kl_terms(student_topk, topk_logprobs)
        chunk_loss = (mix_kl(forward, reverse, reverse_weight).double()
                      * row_weights.double()).sum()
        grad = None
        if needs_grad:
            (a,) = torch.autograd.grad(chunk_loss, student_topk)
            grad = q.mul_(-a.sum(dim=-1, keepdim=True)).scatter_add_(-1, ids, a)
            grad.div_(temperature)
    stats = torch.stack([forward.detach(), reverse.detach(), entropy])
    return chunk_loss.detach(), stats, grad


def _log_tail(topk_logprobs: torch.Tensor) -> torch.Tensor:
    """log(1 − Σ_k exp(topk_logprobs)), floored at log(TAIL_FLOOR); shape (..., 1)."""
    log_covered = torch.logsumexp(topk_logprobs, dim=-1, keepdim=True)
    log_covered = log_covered.clamp(max=torch.log1p(torch.tensor(-TAIL_FLOOR, dtype=torch.float64)))
    # log1mexp(x) = log(1 − e^x), computed stably on both sides of x = −log 2.
    return torch.where(
        log_covered > -0.6931471805599453,
        torch.log(-torch.expm1(log_covered)),
        torch.log1p(-torch.exp(log_covered)),
    )


def check_sparse_teacher(
    topk_logprobs_BTK: torch.Tensor,
    topk_ids_BTK: torch.Tensor,
    token_shape: torch.Size,
    vocab_size: int,
) -> None:
    """A top-k teacher fits the student's token positions (B, T) and vocabulary [0, V)."""
    if topk_logprobs_BTK.shape != topk_ids_BTK.shape or topk_logprobs_BTK.shape[:-1] != token_shape:
        raise ValueError(
            f"teacher_topk_logprobs_BTK {tuple(topk_logprobs_BTK.shape)} and teacher_topk_ids_BTK "
            f"{tuple(topk_ids_BTK.shape)} must both be (B, T, K) with (B, T) = {tuple(token_shape)}"
        )
    if topk_ids_BTK.is_floating_point() or topk_ids_BTK.numel() and (
        int(topk_ids_BTK.min()) < 0 or int(topk_ids_BTK.max()) >= vocab_size
    ):
        raise ValueError(
            f"teacher_topk_ids_BTK must be integer token ids in [0, {vocab_size}) (the student's "
            "vocabulary); were the cache and the student built with different tokenizers?"
        )
    sorted_ids = topk_ids_BTK.sort(dim=-1).values
    if bool((sorted_ids[..., 1:] == sorted_ids[..., :-1]).any()):
        raise ValueError("teacher_topk_ids_BTK repeats a token id within one position")
    _check_topk_logprobs(topk_logprobs_BTK, token_shape)


def _check_topk_logprobs(topk_logprobs_BTK: torch.Tensor, token_shape: torch.Size) -> None:
    if bool(torch.isnan(topk_logprobs_BTK).any()) or bool((topk_logprobs_BTK > 1e-6).any()):
        raise ValueError(
            "teacher_topk_logprobs_BTK holds NaN or positive log-probabilities; the cache must "
            "store log-softmax values (<= 0)"
        )
    covered = torch.logsumexp(topk_logprobs_BTK.double(), dim=-1).exp()  # (B, T)
    if bool((covered > 1.0 + _SUM_TOLERANCE).any()):
        flat = int((covered > 1.0 + _SUM_TOLERANCE).reshape(-1).nonzero()[0])
        raise ValueError(
            f"teacher top-k probabilities sum to {float(covered.reshape(-1)[flat]):.6f} > 1 at "
            f"token position {tuple(unravel(flat, token_shape))}; they must be normalised "
            "log-probs over the full vocabulary, not raw logits"
        )
