"""Compute accounting: tokens and FLOPs per stage, so cells compare at matched FLOPs.

What is counted (the usual dense-transformer approximation, N = non-embedding parameters):

- a forward token costs 2·N FLOPs: every token the student generates (prompt prefill included,
  one forward per token position), every token the teacher scores (prompt + response);
- a trained token costs 6·N FLOPs (forward 2·N + backward 4·N): every token of a student
  training forward/backward pass (prompt + response).

Attention's context-length term and the embedding/unembedding matmuls are left out: at the
lengths used here they are small next to 2·N per token for real models and the same for every
cell, so comparisons stay fair. (For the tiny default models the unembedding is comparable to N;
treat their absolute FLOPs as a relative scale.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

STAGES = ("generate", "teacher_score", "student_forward", "student_train")


@dataclass
class ComputeMeter:
    """Running token counts per stage; ``metrics()`` converts them to FLOPs.

    student_parameters / teacher_parameters: non-embedding parameter counts (see
    tasks.models.non_embedding_parameters).
    """

    student_parameters: int
    teacher_parameters: int
    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))

    def generate(self, tokens: int) -> None:
        """Tokens the student processed while generating (prompt prefill + new tokens)."""
        self.tokens["generate"] += int(tokens)

    def teacher_forward(self, tokens: int) -> None:
        self.tokens["teacher_score"] += int(tokens)

    def student_forward(self, tokens: int) -> None:
        """Student forward passes without a backward (e.g. scoring, evaluation)."""
        self.tokens["student_forward"] += int(tokens)

    def student_train(self, tokens: int) -> None:
        self.tokens["student_train"] += int(tokens)

    def flops(self) -> dict[str, float]:
        per_token = {
            "generate": 2.0 * self.student_parameters,
            "teacher_score": 2.0 * self.teacher_parameters,
            "student_forward": 2.0 * self.student_parameters,
            "student_train": 6.0 * self.student_parameters,
        }
        return {stage: per_token[stage] * count for stage, count in self.tokens.items()}

    def metrics(self, prefix: str = "compute") -> dict[str, float]:
        """``compute/<stage>_tokens``, ``compute/<stage>_flops`` and ``compute/total_flops``."""
        flops = self.flops()
        out = {f"{prefix}/{stage}_tokens": float(count) for stage, count in self.tokens.items()}
        out.update({f"{prefix}/{stage}_flops": value for stage, value in flops.items()})
        out[f"{prefix}/total_flops"] = sum(flops.values())
        return out
