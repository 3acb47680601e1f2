"""The KL loss fused with the student's LM head: no (T, V) logits tensor, ever.

With final hidden states h (N, D), head W (V, D) and logits z = h Wᵀ, the loss needs only ∂L/∂z
row by row (shared/DESIGN.md §5). For one chunk of valid (unmasked) rows this module forms the
student's z = h_c Wᵀ and the teacher's logits (from its own hidden states and head, from full
logits, or its top-k cache), computes the chunk's λ-mixed KL, per-token stats and the analytic
∂L/∂z (the chunked path's kernels, chunked.exact_chunk and sparse.sparse_chunk, which carry the
1/τ of s = z/τ), then

    ∂L/∂h_c = (∂L/∂z_c) · W          ∂L/∂W += (∂L/∂z_c)ᵀ · h_c

and moves on, reusing the chunk's buffers. Peak extra memory: four (C, V) float32 chunk buffers
plus ∂L/∂W (V, D, float32) and ∂L/∂h (N, D) — below one logits tensor once N is a few times D
(the chunk buffers count as 4C rows). As in the chunked
path, the gradients are computed during the forward pass (no recomputation of the head matmuls)
and scaled in place by backward, so one backward pass is supported.

Only plain linear heads qualify: check_fused_head refuses a bias, logit soft-capping or a logit
scale. Padded head rows (beyond the tokenizer's vocabulary) are sliced off and get zero gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from distill_core._checks import (
    check_mask,
    check_num_valid_tokens,
    check_reverse_weight,
    check_temperature,
)
from distill_core.chunked import (
    ChunkBuffers,
    RowReader,
    exact_chunk,
    raise_if_teacher_nan,
    scale_stored_gradients_once,
    valid_row_chunks,
)
from distill_core.divergences import token_weights
from distill_core.loss_types import HiddenStates, KLLoss, TeacherLogits, TeacherTopK
from distill_core.sparse import check_sparse_teacher, sparse_chunk

# Rows per chunk are chosen so one float32 (C, V) buffer holds about this many elements (128 MiB,
# ~220 rows at V = 151,936); a chunk works in four such buffers (chunked.ChunkBuffers). Each chunk
# also reads and writes all of ∂L/∂W (V × D), so much smaller chunks turn that update
# memory-bound. Measured at V = 151,936, D = 1,024, 2,048 rows, fp32 (python -m bench.kl_head
# --cases fused --tokens 2048 --fused-chunk-rows R): peak extra 1.01× one logits tensor at 220
# rows (∂L/∂W alone is 0.5× there) and 1.41× at 440, with no faster steps at 440.
DEFAULT_FUSED_CHUNK_ELEMENTS = 1 << 25

# One chunk's loss, per-row stats (3, C) and ∂loss/∂z (C, V) float32, from its student logits
# (C, V), its flat row indices, its row weights (C,), whether a gradient is needed and its
# ChunkBuffers views.
ChunkKernel = Callable[
    [torch.Tensor, slice | torch.Tensor, torch.Tensor, bool, tuple[torch.Tensor, ...]],
    tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
]


def default_fused_chunk_rows(vocab_size: int) -> int:
    return max(1, DEFAULT_FUSED_CHUNK_ELEMENTS // vocab_size)


@dataclass(frozen=True)
class HeadFacts:
    """What the fused path must know about an LM head (tasks.models.fused_head reads a model's).

    bias: the head adds a bias. logit_softcap: logits = c · tanh(z / c) when set (not None/0).
    logit_scale: logits are multiplied by this factor (1.0: none).
    """

    bias: bool = False
    logit_softcap: float | None = None
    logit_scale: float = 1.0


def check_fused_head(facts: HeadFacts, model: str = "student") -> None:
    """Refuse a head whose logits are not plain hidden · weightᵀ (all the fused path computes).

    Raises ValueError naming the attribute; the logits path (the model's own forward) handles it.
    """
    advice = "use the logits path for this model (its own forward computes these logits)"
    if facts.bias:
        raise ValueError(f"the {model}'s LM head has a bias (bias=True); the fused loss forms "
                         f"logits as hidden · weightᵀ only: {advice}")
    if facts.logit_softcap not in (None, 0, 0.0):
        raise ValueError(f"the {model}'s logits are soft-capped (logit_softcap="
                         f"{facts.logit_softcap}, logits = c·tanh(z/c)); the fused loss does not "
                         f"apply it: {advice}")
    if not (math.isfinite(facts.logit_scale) and facts.logit_scale == 1.0):
        raise ValueError(f"the {model}'s logits are scaled (logit_scale={facts.logit_scale}); "
                         f"the fused loss assumes 1: {advice}")


def fused_kl_loss(
    student: HiddenStates,
    teacher: TeacherLogits | TeacherTopK | HiddenStates,
    response_mask_BT: torch.Tensor,
    reverse_weight: float,
    *,
    temperature: float = 1.0,
    num_valid_tokens: float | int | torch.Tensor | None = None,
    chunk_size: int | str | None = "auto",
) -> KLLoss:
    """Masked mean of λ · KL(q_student ‖ p_teacher) + (1 − λ) · KL(p_teacher ‖ q_student), with
    q = softmax(h_S W_Sᵀ / τ) formed a chunk of rows at a time, never as a whole (B, T, V) tensor.

    student: HiddenStates — hidden (B, T, D) or (N, D), head weight (V_head, D) (differentiable
        both; for tied embeddings pass the embedding matrix), vocab_size slicing padded rows.
    teacher: HiddenStates (its own hidden states and head, detached), TeacherLogits (..., V), or
        TeacherTopK (..., K) for the (k + 1)-bucket KL of distill_core.sparse (τ on the student
        only there).
    response_mask_BT: the hidden states' leading shape, nonzero where a token counts.
    reverse_weight λ, temperature τ, num_valid_tokens: as in kl_loss (same values and gradients
        as kl_loss / sparse on student.logits()). chunk_size: rows per chunk, or "auto"/None.
    Returns KLLoss with (B, T) stats (the same per-token metrics as the logits path).
    """
    token_shape = student.hidden_BTD.shape[:-1]
    check_mask(response_mask_BT, token_shape, name="response_mask_BT")
    check_reverse_weight(reverse_weight)
    check_temperature(temperature)
    check_num_valid_tokens(num_valid_tokens)
    rows = _chunk_rows(chunk_size, student.vocab)
    kernel = _kernel(teacher, token_shape, student.vocab, float(reverse_weight), temperature)
    weights_N = token_weights(response_mask_BT, num_valid_tokens).reshape(-1)
    hidden_ND = student.hidden_BTD.reshape(-1, student.hidden_BTD.shape[-1])
    loss, stats_3N = _FusedHeadKL.apply(
        hidden_ND, student.head_weight_VD, weights_N, student.vocab, kernel, rows
    )
    stats = stats_3N.view(3, *token_shape)
    return KLLoss(loss, stats[0], stats[1], stats[2])


class _FusedHeadKL(torch.autograd.Function):
    """loss = Σ_n w_n · chunk-kernel loss of row n, with z_n = h_n W[:vocab]ᵀ formed per chunk."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        hidden_ND: torch.Tensor,  # (N, D)
        weight_VD: torch.Tensor,  # (V_head, D)
        weights_N: torch.Tensor,  # (N,) float32: mask / num_valid_tokens
        vocab: int,
        kernel: ChunkKernel,
        chunk_rows: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        needs_hidden, needs_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        head_VD = weight_VD.detach()[:vocab]
        hidden_ND = hidden_ND.detach()
        grad_hidden = torch.zeros_like(hidden_ND) if needs_hidden else None
        # float32 accumulation over chunks whatever the head's dtype (bf16 sums drift).
        grad_weight = (torch.zeros(weight_VD.shape, dtype=torch.float32, device=weight_VD.device)
                       if needs_weight else None)
        stats_3N = torch.zeros(3, weights_N.numel(), dtype=torch.float32, device=weights_N.device)
        loss = torch.zeros((), dtype=torch.float64, device=weights_N.device)
        buffers = ChunkBuffers(weights_N, chunk_rows, vocab)
        # The kernels choose every dtype themselves: under a mixed-precision autocast the chunk
        # logits would come out bf16 and their statistics with them.
        with torch.autocast(hidden_ND.device.type, enabled=False):
            for rows in valid_row_chunks(weights_N, chunk_rows):
                hidden_CD, chunk_buffers = hidden_ND[rows], buffers.take(rows)
                chunk_loss, chunk_stats, grad_CV = kernel(
                    _logits(hidden_CD, head_VD, chunk_buffers[2]), rows, weights_N[rows],
                    needs_hidden or needs_weight, chunk_buffers,
                )
                loss += chunk_loss
                stats_3N[:, rows] = chunk_stats.to(stats_3N.dtype)
                if grad_hidden is not None:
                    grad_hidden[rows] = (grad_CV.to(head_VD.dtype) @ head_VD).to(
                        grad_hidden.dtype)
                if grad_weight is not None:
                    grad_weight[:vocab].addmm_(grad_CV.T.float(), hidden_CD.float())
        if grad_weight is not None and grad_weight.dtype != weight_VD.dtype:
            grad_weight = grad_weight.to(weight_VD.dtype)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.backward_done = False
        ctx.mark_non_differentiable(stats_3N)
        return loss.to(torch.float32), stats_3N

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor, _grad_stats: torch.Tensor):  # type: ignore[override]
        grad_hidden, grad_weight = scale_stored_gradients_once(ctx, grad_loss, "fused")
        return grad_hidden, grad_weight, None, None, None, None


def _logits(hidden_CD: torch.Tensor, head_VD: torch.Tensor, scratch_CV: torch.Tensor):
    """hidden · headᵀ, written into a float32 chunk buffer when the inputs are float32 (the
    kernels read their logits from it before reusing it)."""
    if hidden_CD.dtype != head_VD.dtype:  # bf16 activations of an fp32 model: the head's dtype
        hidden_CD = hidden_CD.to(head_VD.dtype)
    if hidden_CD.dtype == head_VD.dtype == scratch_CV.dtype:
        return torch.mm(hidden_CD, head_VD.T, out=scratch_CV)
    return hidden_CD @ head_VD.T


def _chunk_rows(chunk_size: int | str | None, vocab: int) -> int:
    if chunk_size in (None, "auto"):
        return default_fused_chunk_rows(vocab)
    if isinstance(chunk_size, bool) or not (isinstance(chunk_size, int) and chunk_size >= 1):
        raise ValueError(f"chunk_size={chunk_size!r} must be a positive int or 'auto'")
    return chunk_size


def _kernel(
    teacher: TeacherLogits | TeacherTopK | HiddenStates,
    token_shape: torch.Size,
    vocab: int,
    reverse_weight: float,
    temperature: float,
) -> ChunkKernel:
    """The chunk kernel for this teacher: exact KL against its logits, or the bucketed KL."""
    if not isinstance(teacher, (TeacherLogits, TeacherTopK, HiddenStates)):
        raise ValueError(f"teacher must be TeacherLogits, TeacherTopK or HiddenStates, got "
                         f"{type(teacher).__name__}")
    if isinstance(teacher, TeacherTopK):
        check_sparse_teacher(teacher.logprobs_BTK, teacher.ids_BTK, token_shape, vocab)
        logprobs_NK = teacher.logprobs_BTK.detach().reshape(-1, teacher.logprobs_BTK.shape[-1])
        ids_NK = teacher.ids_BTK.reshape(-1, teacher.ids_BTK.shape[-1])
        return lambda z, rows, w, needs_grad, buffers: sparse_chunk(
            z, logprobs_NK[rows], ids_NK[rows], w, reverse_weight, temperature, needs_grad,
            buffers)
    teacher_rows = _teacher_rows(teacher, token_shape, vocab)

    def exact(z: torch.Tensor, rows, w: torch.Tensor, needs_grad: bool, buffers):
        teacher_CV = teacher_rows(rows, buffers[3])
        chunk_loss, stats, grad = exact_chunk(
            z, teacher_CV, w, reverse_weight, temperature, needs_grad, buffers)
        if bool(torch.isnan(stats[:2]).any()):  # a NaN in a row reaches its sums
            raise_if_teacher_nan(teacher_CV, token_shape, rows)
        return chunk_loss, stats, grad

    return exact


def _teacher_rows(
    teacher: TeacherLogits | HiddenStates, token_shape: torch.Size, vocab: int
) -> Callable[[slice | torch.Tensor, torch.Tensor], torch.Tensor]:
    """Teacher logits (C, V) for flat row indices, from its hidden states and head (into the
    given scratch buffer when float32) or its logits."""
    if isinstance(teacher, HiddenStates):
        if teacher.hidden_BTD.shape[:-1] != token_shape or teacher.vocab != vocab:
            teacher_shape = (*teacher.hidden_BTD.shape[:-1], teacher.vocab)
            raise ValueError(
                f"teacher HiddenStates give logits {teacher_shape} but the student's are "
                f"{(*token_shape, vocab)}; they must match (pass "
                "vocab_size = the shared tokenizer's size to both)"
            )
        hidden_ND = teacher.hidden_BTD.detach().reshape(-1, teacher.hidden_BTD.shape[-1])
        head_VD = teacher.head_weight_VD.detach()[:vocab]
        return lambda rows, scratch: _logits(hidden_ND[rows], head_VD, scratch)
    if teacher.logits_BTV.shape != (*token_shape, vocab):
        raise ValueError(
            f"teacher_logits has shape {tuple(teacher.logits_BTV.shape)} but the student's "
            f"logits would be {(*token_shape, vocab)}; they must match exactly (slice both to "
            "the shared tokenizer size)"
        )
    reader = RowReader(teacher.logits_BTV.detach())
    return lambda rows, scratch: reader[rows]
