"""The distillation objective as a point on the method's two axes.

An objective is a prefix source (who writes the responses the loss is computed on) and a
reverse-KL weight λ (which token-level KL direction the loss uses):

    loss = λ · KL(q_student ‖ p_teacher) + (1 − λ) · KL(p_teacher ‖ q_student)

The four corners of the grid are named presets; anything in between is written
``<prefix_source>:<λ>``, e.g. ``student:0.25``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

PrefixSource = Literal["teacher", "student"]
PREFIX_SOURCES: tuple[str, ...] = ("teacher", "student")


@dataclass(frozen=True)
class Objective:
    """One cell (or λ mix) of the distillation grid.

    prefix_source: "teacher" trains on teacher-written responses (off-policy),
        "student" on responses the current student writes (on-policy).
    reverse_weight: λ ∈ [0, 1], the weight on reverse KL(q_student ‖ p_teacher);
        1 − λ goes to forward KL(p_teacher ‖ q_student).
    """

    prefix_source: PrefixSource
    reverse_weight: float

    def __post_init__(self) -> None:
        if self.prefix_source not in PREFIX_SOURCES:
            raise ValueError(
                f"prefix_source={self.prefix_source!r} is not one of {PREFIX_SOURCES}"
            )
        weight = self.reverse_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ValueError(f"reverse_weight={weight!r} must be a number in [0, 1]")
        if not (math.isfinite(weight) and 0.0 <= weight <= 1.0):
            raise ValueError(f"reverse_weight={weight!r} must lie in [0, 1]")
        object.__setattr__(self, "reverse_weight", float(weight))

    @property
    def forward_weight(self) -> float:
        """1 − λ, the weight on forward KL(p_teacher ‖ q_student)."""
        return 1.0 - self.reverse_weight

    @property
    def on_policy(self) -> bool:
        """True when the student writes the prefixes (they must be sampled every step)."""
        return self.prefix_source == "student"

    @property
    def name(self) -> str:
        """The preset name for a grid corner, else ``<prefix_source>:<λ>``."""
        for preset_name, preset in PRESETS.items():
            if preset == self:
                return preset_name
        return f"{self.prefix_source}:{self.reverse_weight:g}"

    @classmethod
    def parse(cls, text: str) -> Objective:
        """Read ``sft``, ``dagger``, ``offline_rl``, ``opd`` or ``<prefix_source>:<λ>``."""
        if not isinstance(text, str):
            raise ValueError(f"objective={text!r} must be a string such as 'opd' or 'student:0.25'")
        key = text.strip().lower()
        if key in PRESETS:
            return PRESETS[key]
        source, sep, weight_text = key.partition(":")
        if not sep:
            raise ValueError(
                f"objective={text!r} is not a preset ({', '.join(PRESETS)}) "
                "nor of the form '<teacher|student>:<reverse_weight>', e.g. 'student:0.25'"
            )
        try:
            weight = float(weight_text)
        except ValueError:
            raise ValueError(
                f"objective={text!r}: reverse weight {weight_text!r} is not a number in [0, 1]"
            ) from None
        return cls(prefix_source=source, reverse_weight=weight)  # type: ignore[arg-type]


PRESETS: dict[str, Objective] = {
    "sft": Objective("teacher", 0.0),
    "dagger": Objective("student", 0.0),
    "offline_rl": Objective("teacher", 1.0),
    "opd": Objective("student", 1.0),
}
