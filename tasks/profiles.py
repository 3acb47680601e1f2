"""The model profiles: one table of where a study's teacher, student and problems come from.

A profile names its bootstrap (a function of ``tasks.bootstrap`` that builds, or finds in the
artifact directory, the models and the problem splits), the prompt template its models were
trained or tuned for, and its response caps. The forms (``profile: ...`` and the fields whose
empty value means "the profile's"), the CLI's ``--profile``, ``tasks.inputs`` and the benches
read this table; adding a profile is a row here and its bootstrap function.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Literal

DEFAULT_BENCHMARK = "default"  # a benchmark spec meaning "the profile's test split"


@dataclass(frozen=True)
class Profile:
    """name: what configs and the CLI call it; bootstrap: the tasks.bootstrap function
    returning its artifacts (teacher_dir, student_dir, split(name)); prompt_template: how its
    models are prompted; train_cap / eval_cap: its response caps while training and evaluating."""

    name: str
    description: str
    bootstrap: str
    prompt_template: str
    train_cap: int
    eval_cap: int

    def build(self, root=None, log=print):
        """The profile's models and problems (built once, then found by content hash)."""
        return getattr(importlib.import_module("tasks.bootstrap"), self.bootstrap)(root=root,
                                                                                  log=log)


PROFILES: dict[str, Profile] = {profile.name: profile for profile in (
    # Caps measured against the embedded default's worked solutions (5,000 train and the 500
    # test problems): 128 truncates 9 % of them (the length curriculum's room); 256 holds 1.5×
    # the longest (170 tokens, a 4-step problem with every optional line).
    Profile("default", "the embedded arithmetic task: tiny models trained here",
            "bootstrap_default", prompt_template="bare", train_cap=128, eval_cap=256),
    # SmolLM2-Instruct is shown one worked example, whose answer ends in a box: the grader's
    # strict rule (the one accuracy counts) reads the box, and the instruction alone leaves a
    # 135M model writing unboxed prose. Its one-digit sums take about 20 tokens; at temperature
    # 1 the teacher rambles past 40 on about 7 % of them (docs/real-weights.md), so training
    # responses are cut at 48 and evaluated ones at 64.
    Profile("real-weights", "SmolLM2-135M-Instruct teaching a healed half-depth copy of itself",
            "bootstrap_real_weights", prompt_template="worked-example", train_cap=48,
            eval_cap=64),
)}
DEFAULT = "default"
ProfileName = Literal.__getitem__(tuple(PROFILES))  # the forms' drop-down
PROFILE_HELP = "Where models and problems come from: " + "; ".join(
    f"{p.name} ({p.description})" for p in PROFILES.values()) + "."


def profile(name: str) -> Profile:
    """The profile called name, or one line saying which exist."""
    if name not in PROFILES:
        raise ValueError(f"profile={name!r} is not one of {', '.join(PROFILES)}")
    return PROFILES[name]
