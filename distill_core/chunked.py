"""Memory-lean mixed KL: full-vocabulary and exact, but one chunk of token rows at a time.

The straightforward loss (distill_core.divergences) materialises log_softmax of both models,
their exponentials and several products over the whole (B, T, V) tensor, and autograd keeps most of
them for the backward pass — at V = 151,936 that is several gigabytes per thousand tokens. Here a
custom autograd function walks the valid (unmasked) token rows in chunks, computes the loss and
the analytic gradient of each chunk in float32, and writes the gradient straight into one
buffer shaped like the student logits. Peak extra memory is that buffer (which autograd needs in
any case) plus a few chunk-sized temporaries; masked rows cost nothing.

Gradients (s = z / τ, q = softmax(s), p = softmax(teacher / τ), see shared/DESIGN.md):
    ∂ KL(p ‖ q) / ∂z = (q − p) / τ
    ∂ KL(q ‖ p) / ∂z = q ⊙ (log q − log p − KL(q ‖ p)) / τ
"""

from __future__ import annotations

import torch

from distill_core._checks import check_teacher_log_probs
from distill_core.divergences import mix_kl

# Rows per chunk are chosen so one float32 chunk holds about this many elements (16 MiB);
# see bench/kl_memory.py for the measurements behind the choice.
DEFAULT_CHUNK_ELEMENTS = 1 << 22


def default_chunk_rows(vocab_size: int) -> int:
    return max(1, DEFAULT_CHUNK_ELEMENTS // vocab_size)


class _ChunkedMixedKL(torch.autograd.Function):
    """loss = Σ_n w_n · [λ · KL(q_n ‖ p_n) + (1 − λ) · KL(p_n ‖ q_n)] over rows n with w_n ≠ 0."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        student_logits: torch.Tensor,  # (B, T, V)
        teacher_logits: torch.Tensor,  # (B, T, V)
        weights: torch.Tensor,  # (B, T) float32: mask / num_valid_tokens
        reverse_weight: float,
        temperature: float,
        chunk_rows: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        vocab_size = student_logits.shape[-1]
        student_rows = RowReader(student_logits)
        teacher_rows = RowReader(teacher_logits)
        weights_N = weights.reshape(-1)
        stats_3N = torch.zeros(3, weights_N.numel(), dtype=torch.float32, device=weights.device)
        grad_NV = None
        if ctx.needs_input_grad[0]:
            grad_NV = torch.empty(weights_N.numel(), vocab_size, dtype=student_logits.dtype,
                                  device=student_logits.device)
        loss = torch.zeros((), dtype=torch.float64, device=weights.device)
        buffers = ChunkBuffers(weights_N, chunk_rows, vocab_size)
        for rows in valid_row_chunks(weights_N, chunk_rows):
            chunk_loss, chunk_stats, chunk_grad = exact_chunk(
                student_rows[rows], teacher_rows[rows], weights_N[rows], reverse_weight,
                temperature, grad_NV is not None, buffers.take(rows),
            )
            if bool(torch.isnan(chunk_stats[:2]).any()):  # a NaN in a row reaches its sums
                raise_if_teacher_nan(teacher_rows[rows], weights.shape, rows)
            loss += chunk_loss
            stats_3N[:, rows] = chunk_stats
            if grad_NV is not None:
                grad_NV[rows] = chunk_grad.to(grad_NV.dtype)
        masked_N = (weights_N == 0).nonzero().squeeze(1)
        if grad_NV is not None and masked_N.numel():
            grad_NV.index_fill_(0, masked_N, 0.0)  # masked rows were never computed
        ctx.save_for_backward(grad_NV)
        ctx.token_shape = weights.shape
        ctx.backward_done = False
        stats = stats_3N.view(3, *weights.shape)
        ctx.mark_non_differentiable(stats)
        return loss.to(torch.float32), stats

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor, _grad_stats: torch.Tensor):  # type: ignore[override]
        (grad_NV,) = scale_stored_gradients_once(ctx, grad_loss, "chunked")
        return grad_NV.view(*ctx.token_shape, -1), None, None, None, None, None


def scale_stored_gradients_once(ctx, grad_loss: torch.Tensor, name: str) -> tuple:
    """The gradients a forward pass computed and saved (None where not needed), scaled in place
    by the upstream gradient of the loss; a second backward over the same graph is refused
    because the first one has already scaled them."""
    if ctx.backward_done:
        raise RuntimeError(
            f"the {name} KL loss scales its stored gradients in place and supports one "
            "backward pass; recompute the loss instead of using retain_graph=True"
        )
    ctx.backward_done = True
    grads = ctx.saved_tensors
    if not bool(grad_loss == 1):
        for grad in grads:
            if grad is not None:
                grad.mul_(grad_loss.to(grad.dtype))
    return grads


class RowReader:
    """Rows of a (B, T, V) or (N, V) tensor by flat token index: a view when possible, a gather
    otherwise."""

    def __init__(self, logits_BTV: torch.Tensor) -> None:
        self.logits_BTV = logits_BTV
        self.length = logits_BTV.shape[1] if logits_BTV.dim() == 3 else 1
        try:  # a view of (B*T, V) exists unless the tensor was sliced along T
            self.logits_NV: torch.Tensor | None = logits_BTV.view(-1, logits_BTV.shape[-1])
        except RuntimeError:
            self.logits_NV = logits_BTV if logits_BTV.dim() == 2 else None

    def __getitem__(self, rows: slice | torch.Tensor) -> torch.Tensor:
        if self.logits_NV is not None:
            return self.logits_NV[rows]
        if isinstance(rows, slice):
            rows = torch.arange(rows.start, rows.stop, device=self.logits_BTV.device)
        return self.logits_BTV[rows // self.length, rows % self.length]


def valid_row_chunks(weights_N: torch.Tensor, chunk_rows: int):
    """Flat indices of rows with nonzero weight, chunk_rows at a time; a slice where contiguous."""
    valid_N = weights_N.nonzero().squeeze(1)
    valid_cpu = valid_N.cpu()
    for start in range(0, valid_N.numel(), chunk_rows):
        first = int(valid_cpu[start])
        last = int(valid_cpu[min(start + chunk_rows, valid_N.numel()) - 1])
        count = min(chunk_rows, valid_N.numel() - start)
        yield slice(first, last + 1) if last - first + 1 == count else valid_N[start:start + count]


def raise_if_teacher_nan(
    teacher_rows: torch.Tensor, token_shape: torch.Size, rows: slice | torch.Tensor
) -> None:
    """NaN reached a chunk's sums: name the teacher's position if it came from the teacher.

    A NaN from the student is left to propagate, as in the straightforward path (the trainer
    sees a NaN loss and decides what to do).
    """
    log_p = torch.log_softmax(teacher_rows.float(), dim=-1)
    check_teacher_log_probs(log_p, token_shape=token_shape, flat_rows=rows)


class ChunkBuffers:
    """Four float32 (rows, V) buffers a chunk kernel works in, allocated once per loss call.

    Fresh buffers for every chunk would each come from the operating system on CPU (blocks this
    large bypass the allocator's free lists) and pay page faults again: ~10% of the fused path's
    time at V = 151,936. take(rows) gives (log q, log p, q, p) views for one chunk; the kernels
    overwrite log q with log q − log p and then ∂loss/∂z, and a caller may put the chunk's
    student and teacher logits in the q and p buffers (they are read before being overwritten).
    """

    def __init__(self, weights_N: torch.Tensor, chunk_rows: int, vocab_size: int) -> None:
        rows = max(1, min(chunk_rows, int(torch.count_nonzero(weights_N))))
        self.buffers = torch.empty(4, rows, vocab_size, dtype=torch.float32,
                                   device=weights_N.device)

    def take(self, rows: slice | torch.Tensor) -> tuple[torch.Tensor, ...]:
        count = rows.stop - rows.start if isinstance(rows, slice) else rows.numel()
        return tuple(buffer[:count] for buffer in self.buffers)


def exact_chunk(
    student_rows: torch.Tensor,  # (C, V)
    teacher_rows: torch.Tensor,  # (C, V)
    row_weights: torch.Tensor,  # (C,)
    reverse_weight: float,
    temperature: float,
    needs_grad: bool,
    buffers: tuple[torch.Tensor, ...],  # ChunkBuffers.take: four (C, V) float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Loss, per-row [forward KL, reverse KL, student entropy] and logit gradient of one chunk.

    The gradient is returned in buffers[0]: use it before the next chunk.
    """
    log_q = chunk_log_softmax(student_rows, temperature, out=buffers[0])
    log_p = chunk_log_softmax(teacher_rows, temperature, out=buffers[1])
    q = torch.exp(log_q, out=buffers[2])
    p = torch.exp(log_p, out=buffers[3])
    entropy = -torch.einsum("cv,cv->c", q, log_q)
    log_ratio = log_q.sub_(log_p)  # (C, V): log q − log p, in log q's buffer
    reverse = torch.einsum("cv,cv->c", q, log_ratio)
    forward = -torch.einsum("cv,cv->c", p, log_ratio)
    stats = torch.stack([forward, reverse, entropy])
    per_row = mix_kl(forward, reverse, reverse_weight)
    chunk_loss = (per_row.double() * row_weights.double()).sum()
    if not needs_grad:
        return chunk_loss, stats, None
    # The gradient of mix_kl's value: w/τ · [λ q ⊙ (log q − log p − KL(q‖p)) + (1 − λ)(q − p)],
    # built in log_ratio's buffer (no second (C, V) temporary) as q ⊙ (a · log_ratio + b) − c · p.
    scale = (row_weights / temperature).unsqueeze(-1)
    a = reverse_weight * scale
    b = ((1.0 - reverse_weight) - reverse_weight * reverse.unsqueeze(-1)) * scale
    grad = log_ratio.mul_(a).add_(b).mul_(q)
    grad.addcmul_(p, (1.0 - reverse_weight) * scale, value=-1.0)
    return chunk_loss, stats, grad


def chunk_log_softmax(logits: torch.Tensor, temperature: float, out: torch.Tensor) -> torch.Tensor:
    """float32 log_softmax(logits / τ) of a chunk written into out, -inf clamped to the lowest
    float (as divergences.finite_log_softmax does, without autograd): 0 · (log 0 − log 0) stays 0
    for tokens both models rule out.
    """
    scaled = logits if temperature == 1.0 else logits.float() / temperature
    log_probs = torch.log_softmax(scaled, dim=-1, dtype=torch.float32, out=out)
    return log_probs.clamp_(min=torch.finfo(torch.float32).min)


def chunked_mixed_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    weights: torch.Tensor,
    reverse_weight: float,
    temperature: float,
    chunk_rows: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted-sum mixed KL and per-token [forward KL, reverse KL, entropy] stats (3, B, T).

    Arguments are assumed checked by the caller (distill_core.losses.kl_loss).
    """
    rows = chunk_rows or default_chunk_rows(student_logits.shape[-1])
    return _ChunkedMixedKL.apply(
        student_logits, teacher_logits.detach(), weights, reverse_weight, temperature, rows
    )
