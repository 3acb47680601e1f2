"""Argument checks shared by the loss functions: every failure names the argument and values."""

from __future__ import annotations

import math

import torch


def check_logit_pair(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    """Student and teacher logits must have identical shapes (..., V); never broadcast."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits has shape {tuple(student_logits.shape)} but teacher_logits has "
            f"shape {tuple(teacher_logits.shape)}; they must match exactly (same batch, length "
            "and vocabulary). If the vocabularies differ, slice both to the shared tokenizer size."
        )
    if student_logits.dim() < 2:
        raise ValueError(
            f"student_logits has shape {tuple(student_logits.shape)}; expected (..., V) with a "
            "vocabulary dimension last, e.g. (B, T, V)"
        )


def check_mask(mask: torch.Tensor, token_shape: torch.Size, name: str = "response_mask") -> None:
    """A mask covers exactly the token positions of the logits (all but the last dim)."""
    if mask.shape != token_shape:
        raise ValueError(
            f"{name} has shape {tuple(mask.shape)} but the logits' token positions have shape "
            f"{tuple(token_shape)}; pass one mask value per token"
        )


def check_temperature(temperature: float) -> None:
    valid = isinstance(temperature, (int, float)) and math.isfinite(temperature)
    if not (valid and temperature > 0):
        raise ValueError(f"temperature={temperature!r} must be a finite number > 0")


def check_reverse_weight(reverse_weight: float) -> None:
    if isinstance(reverse_weight, bool) or not isinstance(reverse_weight, (int, float)):
        raise ValueError(f"reverse_weight={reverse_weight!r} must be a number in [0, 1]")
    if not (math.isfinite(reverse_weight) and 0.0 <= reverse_weight <= 1.0):
        raise ValueError(f"reverse_weight={reverse_weight!r} must lie in [0, 1]")


def check_num_valid_tokens(num_valid_tokens: float | int | torch.Tensor | None) -> None:
    if num_valid_tokens is None:
        return
    value = float(num_valid_tokens)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(
            f"num_valid_tokens={value!r} must be a finite count >= 0 (the number of valid tokens "
            "across all micro-batches and devices of this optimiser step)"
        )


def check_teacher_log_probs(
    teacher_log_probs: torch.Tensor,
    token_shape: torch.Size | None = None,
    flat_rows: slice | torch.Tensor | None = None,
) -> None:
    """Teacher log-probabilities must not hold NaN (from NaN or +inf logits, or an all -inf row).

    teacher_log_probs: (..., V). For the error message, token_shape is the caller's (B, T) and
    flat_rows maps the rows given here to flat positions in it (default: they are all of them).
    """
    bad_rows = torch.isnan(teacher_log_probs).any(dim=-1).reshape(-1)
    if not bool(bad_rows.any()):
        return
    local = int(bad_rows.nonzero()[0])
    if isinstance(flat_rows, slice):
        flat_index = flat_rows.start + local
    else:
        flat_index = local if flat_rows is None else int(flat_rows[local])
    where = f"flattened token {flat_index}"
    if token_shape is not None:
        where = f"token position {tuple(unravel(flat_index, token_shape))}"
    raise ValueError(
        f"teacher_logits give NaN probabilities at {where} (NaN or +inf logits, or every "
        "logit -inf); check the teacher's forward pass and its dtype"
    )


def unravel(flat_index: int, shape: torch.Size) -> list[int]:
    """Row-major multi-index of flat_index in shape."""
    index = []
    for size in reversed(shape):
        index.append(flat_index % size)
        flat_index //= size
    return index[::-1]
