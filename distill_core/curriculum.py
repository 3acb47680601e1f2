"""Entropy-gated length curriculum: lengthen responses only while the student stays diverse.

Training starts at a short maximum response length L_0. At the end of each stage the trainer
measures the student's mean per-token entropy on held-out prompts and calls ``update``; the
curriculum moves one rung up the ladder only when that entropy is ≥ H_min, otherwise it stays
(long-horizon training on a collapsing student inflates length and loses accuracy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def doubling_ladder(start: int, end: int) -> tuple[int, ...]:
    """start, 2·start, 4·start, … up to end (end appended if not a power-of-two multiple)."""
    if not (isinstance(start, int) and isinstance(end, int) and 0 < start <= end):
        raise ValueError(f"doubling_ladder(start={start!r}, end={end!r}) needs 0 < start <= end")
    lengths = [start]
    while lengths[-1] * 2 <= end:
        lengths.append(lengths[-1] * 2)
    if lengths[-1] != end:
        lengths.append(end)
    return tuple(lengths)


@dataclass
class EntropyGatedLengthCurriculum:
    """A ladder of maximum response lengths gated by held-out token entropy.

    lengths: strictly increasing maximum response lengths in tokens, e.g. (128, 256, …, 4096).
    min_entropy: H_min in nats per token; advance only when the measured entropy is ≥ it.
    stage: index of the current rung (state; restored by ``from_state_dict``).
    history: one record per gate decision (state).
    """

    lengths: tuple[int, ...]
    min_entropy: float
    stage: int = 0
    history: list[dict[str, float | int | bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lengths = tuple(self.lengths)
        if not self.lengths or any(
            not isinstance(n, int) or isinstance(n, bool) or n <= 0 for n in self.lengths
        ):
            raise ValueError(f"lengths={self.lengths!r} must be a non-empty list of positive ints")
        if any(b <= a for a, b in zip(self.lengths, self.lengths[1:], strict=False)):
            raise ValueError(f"lengths={self.lengths!r} must be strictly increasing")
        if not (isinstance(self.min_entropy, (int, float)) and math.isfinite(self.min_entropy)
                and self.min_entropy >= 0):
            raise ValueError(f"min_entropy={self.min_entropy!r} must be a finite number >= 0")
        if not (isinstance(self.stage, int) and 0 <= self.stage < len(self.lengths)):
            raise ValueError(
                f"stage={self.stage!r} must index lengths (0..{len(self.lengths) - 1})"
            )

    @property
    def max_response_length(self) -> int:
        """The maximum response length to train with now."""
        return self.lengths[self.stage]

    @property
    def at_last_rung(self) -> bool:
        return self.stage == len(self.lengths) - 1

    def update(self, held_out_entropy: float) -> dict[str, float | int | bool]:
        """Gate decision at a stage boundary; returns (and records) the numbers behind it."""
        if not (isinstance(held_out_entropy, (int, float)) and math.isfinite(held_out_entropy)):
            raise ValueError(
                f"held_out_entropy={held_out_entropy!r} must be a finite number (nats per token)"
            )
        passed = held_out_entropy >= self.min_entropy
        advanced = passed and not self.at_last_rung
        decision: dict[str, float | int | bool] = {
            "held_out_entropy": float(held_out_entropy),
            "min_entropy": float(self.min_entropy),
            "gate_passed": passed,
            "advanced": advanced,
            "length_before": self.max_response_length,
        }
        if advanced:
            self.stage += 1
        decision["length_after"] = self.max_response_length
        self.history.append(decision)
        return dict(decision)

    def state_dict(self) -> dict:
        """Plain-dict state for checkpoints (JSON-serialisable)."""
        return {
            "lengths": list(self.lengths),
            "min_entropy": self.min_entropy,
            "stage": self.stage,
            "history": [dict(record) for record in self.history],
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> EntropyGatedLengthCurriculum:
        missing = {"lengths", "min_entropy", "stage"} - set(state)
        if missing:
            raise ValueError(f"curriculum state is missing keys {sorted(missing)}")
        return cls(
            lengths=tuple(state["lengths"]),
            min_entropy=state["min_entropy"],
            stage=state["stage"],
            history=[dict(record) for record in state.get("history", [])],
        )
