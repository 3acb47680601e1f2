"""An experiment's inputs resolved to files: teacher, student, problems and benchmarks.

The profile named in a config (the embedded default, or the real-weights profile) is
bootstrapped only when the config leaves something to it; the train problems are cut to
``train_size`` into a content-addressed file so teacher rollouts cover exactly the problems
training draws; the benchmark ``default`` is resolved here, in one place, to the profile's test
split. Every later step takes these paths, never the profile.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.artifacts import cached_build, content_hash, file_hash
from tasks.data import read_problems, write_problems
from tasks.profiles import DEFAULT_BENCHMARK, profile

if TYPE_CHECKING:  # tasks.configs builds its forms' stage configs through tasks.plan -> here
    from tasks.configs import ExperimentConfig, RLFlowConfig


@dataclass(frozen=True)
class Inputs:
    """Resolved paths of one experiment: every later step takes these, never the profile."""

    teacher: str
    student: str
    train_problems: str
    held_out_problems: str
    benchmarks: tuple[str, ...]


@dataclass(frozen=True)
class RLInputs:
    """Resolved paths of an RL flow: its prompts and benchmarks (the sources are the models)."""

    train_problems: str
    benchmarks: tuple[str, ...]


def bootstrap(profile_name: str, root: str | Path | None = None, log=print):
    """The profile's data and models (built once, then reused from the artifact directory)."""
    return profile(profile_name).build(root=root, log=log)


def resolve_inputs(config: ExperimentConfig, root: str | Path | None = None,
                   log=print) -> Inputs:
    """Teacher, student and problem files: the config's, else the profile's (bootstrapped when
    needed). The train problems are cut to train_size into a content-addressed file, so teacher
    rollouts cover exactly the problems training draws."""
    needs_profile = None in (config.teacher, config.student, config.train_problems,
                             config.held_out_problems) or DEFAULT_BENCHMARK in config.benchmarks
    profile = bootstrap(config.profile, root, log) if needs_profile else None
    train_source = config.train_problems or str(profile.split("train"))
    held_out = config.held_out_problems or str(profile.split("held_out"))
    benchmarks = _benchmark_specs(config.benchmarks, profile)
    inputs = Inputs(
        teacher=config.teacher or str(profile.teacher_dir),
        student=config.student or str(profile.student_dir),
        train_problems=str(subset(train_source, config.train_size, root, log)),
        held_out_problems=held_out,
        benchmarks=benchmarks,
    )
    check_lengths_fit(config, inputs)
    return inputs


def check_lengths_fit(config: ExperimentConfig, inputs: Inputs) -> None:
    """Every response cap (training, curriculum rungs, evaluation) below both models' context,
    checked from their configs before any rollout, training or evaluation starts."""
    caps = {"max_new_tokens": config.max_new_tokens,
            "eval_max_new_tokens": config.eval_max_new_tokens}
    if config.curriculum:
        caps["curriculum"] = max(config.curriculum)
    for role in ("teacher", "student"):
        check_caps_fit(caps, role, getattr(inputs, role))


def check_rl_lengths_fit(config: RLFlowConfig, sources: list[dict]) -> None:
    """GRPO's and the evaluation's response caps below every source student's context, checked
    from their configs before any run opens (GRPO's own check comes after the evaluation that
    precedes it, minutes in)."""
    caps = {"max_new_tokens": config.max_new_tokens,
            "eval_max_new_tokens": config.eval_max_new_tokens}
    for source in sources:
        check_caps_fit(caps, "policy", source["checkpoint"])


def check_caps_fit(caps: dict[str, int], role: str, model: str) -> None:
    """Each response cap ({config field: tokens}) below the model's context, read from its
    config without loading its weights."""
    from tasks.models import check_available

    context = getattr(check_available(model, role), "max_position_embeddings", None)
    for field_name, cap in caps.items():
        if context is not None and cap >= context:
            raise ValueError(f"{field_name}={cap} is not below the {role}'s context of "
                             f"{context} tokens ({model}); lower it")


def resolve_rl_inputs(config: RLFlowConfig, root: str | Path | None = None,
                      log=print) -> RLInputs:
    """The RL prompts (cut to train_size) and benchmarks; the profile is bootstrapped (or found
    in the artifact directory) only when its problems are asked for."""
    needs_profile = config.train_problems is None or DEFAULT_BENCHMARK in config.benchmarks
    profile = bootstrap(config.profile, root, log) if needs_profile else None
    train_source = config.train_problems or str(profile.split("train"))
    return RLInputs(str(subset(train_source, config.train_size, root, log)),
                    _benchmark_specs(config.benchmarks, profile))


def benchmark_specs(benchmarks: list[str], profile_name: str, root: str | Path | None = None,
                    log=print) -> tuple[str, ...]:
    """Benchmark specs with "default" resolved to the profile's test split (bootstrapping the
    profile only when "default" is asked for): the one place that knows what "default" is."""
    needs_profile = DEFAULT_BENCHMARK in benchmarks
    return _benchmark_specs(benchmarks, bootstrap(profile_name, root, log)
                            if needs_profile else None)


def _benchmark_specs(benchmarks: list[str], profile) -> tuple[str, ...]:
    """The config's benchmark specs with "default" pointing at the profile's test split."""
    return tuple(f"{DEFAULT_BENCHMARK}={_default_test_split(profile)}"
                 if spec == DEFAULT_BENCHMARK else spec for spec in benchmarks)


def _default_test_split(profile) -> Path:
    test = profile.split("test")
    if not test.exists():  # the real-weights profile has train and held-out only
        return profile.split("held_out")
    return test


def subset(problems_file: str | Path, size: int, root: str | Path | None = None,
           log=print) -> Path:
    """The first size problems of a file, as a cached problems JSONL."""
    problems = read_problems(problems_file)
    if size > len(problems):
        raise ValueError(f"train_size={size} but {problems_file} has {len(problems)} problems")

    def build(out: Path) -> None:
        write_problems(problems[:size], out / "problems.jsonl")

    key = content_hash(file_hash(problems_file), size)
    directory, _ = cached_build("data/subsets", key, build, root=root,
                                describe={"source": str(problems_file), "size": size}, log=log)
    return directory / "problems.jsonl"
