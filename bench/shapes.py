"""Models at the published shapes of Qwen3, with random weights: real-size timing, no download.

A step's time depends on the models' shapes (widths, depth, heads, vocabulary), not on their
weights, so a student and teacher built with ``AutoModelForCausalLM.from_config`` from Qwen3's
published architecture numbers time a distillation step as the real checkpoints would. They are
saved with ``save_pretrained`` beside one shared tokenizer, so every trainer and sampler loads
them like any model directory (``tasks.models.load_model``, vLLM, TRL).

The tokenizer: the embedded default's byte-level BPE (``tasks.models.build_tokenizer``) trained
on the problems, its vocabulary padded with unused tokens to the model's 151,936 rows (Qwen3's
own tokenizer has 151,669 tokens for those rows; here every row is a token, so whatever a
random model samples decodes). ChatML chat template, pad token ``<|pad|>``.

Fixed-length responses: the tokenizer and the models declare **no EOS token**. A random model
would draw a real EOS now and then (about 1 in 151,936 tokens) and end a row early; with none,
HF ``generate`` (``eos_token_id=None``) and the vLLM worker (no ``stop_token_ids``) both run
every response to ``max_new_tokens``, the case a timing should measure. ``<|im_end|>`` still
closes each chat turn in the template. TRL's trainers need an EOS: bench.vs_trl's child
declares ``<|im_end|>`` there and tells TRL to ignore it (vLLM ``ignore_eos``, HF
``min_new_tokens``), so TRL's responses run to the same length.

``layers`` cuts both models to that many decoder layers and keeps every width and the
vocabulary: the CPU smoke (a full 0.6B student + 1.7B teacher + AdamW does not fit a 24 GiB
machine beside a vLLM copy) runs the same code at a fraction of the depth.

    python -m bench.shapes --root DIR [--student 0.6b] [--teacher 1.7b] [--layers N]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

QWEN3_VOCAB = 151_936
PROBLEMS = 64  # enough for 4 steps of batch 16
TRAINED_TOKENS = 1_000  # BPE tokens learnt from the problems before the padding


@dataclass(frozen=True)
class Architecture:
    """A decoder's published shape (config.json of the checkpoint)."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int = 128
    vocab_size: int = QWEN3_VOCAB
    tie_word_embeddings: bool = True
    rope_theta: float = 1_000_000.0
    max_positions: int = 40_960


# Qwen3's published numbers, from the checkpoints' config.json (huggingface.co/Qwen/Qwen3-0.6B,
# -1.7B, -4B), checked against two independent copies: torchtune's builders
# (torchtune/models/qwen3/_model_builders.py: qwen3_0_6b_instruct, qwen3_1_7b_instruct,
# qwen3_4b_instruct — layers, heads, KV heads, widths, vocabulary, rope base 1e6, tied) and
# config.json files of fine-tunes that keep the architecture (Qwen3-0.6B's as quoted in several
# repositories; Qwen3-4B's in MultiRL/qwen3_4b_instruct_sft). All three: head_dim 128, 40,960
# positions, rms_norm_eps 1e-6, no attention bias, q/k norms (Qwen3's own modelling code).
ARCHITECTURES = {
    "0.6b": Architecture(hidden_size=1_024, intermediate_size=3_072, num_layers=28,
                         num_heads=16, num_kv_heads=8),
    "1.7b": Architecture(hidden_size=2_048, intermediate_size=6_144, num_layers=28,
                         num_heads=16, num_kv_heads=8),
    "4b": Architecture(hidden_size=2_560, intermediate_size=9_728, num_layers=36,
                       num_heads=32, num_kv_heads=8),
}


@dataclass(frozen=True)
class ShapedPair:
    """A student and a teacher directory (sharing one tokenizer) and their training problems."""

    student: str
    teacher: str
    layers: int | None  # None: the published depth
    student_dir: Path
    teacher_dir: Path
    problems: Path

    def describe(self) -> str:
        depth = "" if self.layers is None else f", cut to {self.layers} layers"
        return f"Qwen3-{self.student.upper()} ← Qwen3-{self.teacher.upper()} shapes{depth}"


def qwen3_config(architecture: Architecture, tokenizer, layers: int | None = None):
    """A transformers Qwen3Config of architecture (layers: fewer decoder layers) for tokenizer:
    its pad token, and no BOS or EOS (see the module docstring)."""
    from transformers import AutoConfig

    if layers is not None and not 1 <= layers <= architecture.num_layers:
        raise ValueError(f"layers={layers}: give 1 to {architecture.num_layers}")
    if len(tokenizer) != architecture.vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer):,} tokens; the model "
                         f"{architecture.vocab_size:,} rows")
    return AutoConfig.for_model(
        "qwen3", vocab_size=architecture.vocab_size, hidden_size=architecture.hidden_size,
        intermediate_size=architecture.intermediate_size,
        num_hidden_layers=layers or architecture.num_layers,
        num_attention_heads=architecture.num_heads, num_key_value_heads=architecture.num_kv_heads,
        head_dim=architecture.head_dim, tie_word_embeddings=architecture.tie_word_embeddings,
        rope_theta=architecture.rope_theta, max_position_embeddings=architecture.max_positions,
        rms_norm_eps=1e-6, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
        eos_token_id=None)


def padded_tokenizer(texts: list[str], vocab_size: int = QWEN3_VOCAB):
    """The default's byte-level BPE trained on texts, padded with ``<|unused_N|>`` tokens (never
    produced by encoding: no merge leads to them) to vocab_size ids; no EOS, no BOS."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from tasks.models import CHAT_TEMPLATE, build_tokenizer

    trained = build_tokenizer(texts, TRAINED_TOKENS)
    spec = json.loads(trained.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    if sorted(vocab.values()) != list(range(len(vocab))) or len(vocab) > vocab_size:
        raise ValueError(f"the trained BPE has {len(vocab)} ids, not 0..n-1 below {vocab_size}")
    vocab.update({f"<|unused_{index}|>": index for index in range(len(vocab), vocab_size)})
    if len(vocab) != vocab_size:
        raise ValueError("an unused token's name collides with a trained token")
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)), pad_token="<|pad|>",
        chat_template=CHAT_TEMPLATE, padding_side="left")


def build_pair(root: Path, student: str = "0.6b", teacher: str = "1.7b",
               layers: int | None = None, device: str = "cpu", seed: int = 0,
               log=print) -> ShapedPair:
    """The pair at those shapes under root/shapes (cached by settings and this code: a second
    call reuses it). Built on device (a GPU initialises a 4B model in seconds), saved in bf16,
    the checkpoints' own dtype."""
    from tasks.artifacts import cached_build, code_version, content_hash

    for name in (student, teacher):
        if name not in ARCHITECTURES:
            raise ValueError(f"{name!r} is not one of {', '.join(ARCHITECTURES)}")
    settings = {"student": student, "teacher": teacher, "layers": layers, "seed": seed,
                "architectures": {name: asdict(ARCHITECTURES[name]) for name in (student, teacher)},
                "code": code_version(["bench.shapes", "tasks.models", "tasks.arithmetic"])}

    def build(out: Path) -> None:
        _build(out, student, teacher, layers, device, seed, log)

    directory, _ = cached_build("shapes", content_hash(settings), build, root=root,
                                describe=settings, log=log)
    return ShapedPair(student, teacher, layers, directory / "student", directory / "teacher",
                      directory / "problems.jsonl")


def _build(out: Path, student: str, teacher: str, layers: int | None, device: str, seed: int,
           log) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from tasks.arithmetic import ArithmeticConfig, generate_splits
    from tasks.data import write_problems
    from tasks.rollout import PROMPT_TEMPLATES

    problems = generate_splits(ArithmeticConfig(train_size=PROBLEMS, held_out_size=0,
                                                test_size=0, seed=seed))["train"]
    write_problems(problems, out / "problems.jsonl")
    tokenizer = padded_tokenizer([PROMPT_TEMPLATES["boxed"].format(problem=p.problem)
                                  for p in problems])
    for role, name in (("student", student), ("teacher", teacher)):
        config = qwen3_config(ARCHITECTURES[name], tokenizer, layers)
        log(f"  building a Qwen3-{name.upper()}-shaped {role} ({config.num_hidden_layers} "
            f"layers) on {device}")
        torch.manual_seed(seed)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(out / role)
        tokenizer.save_pretrained(out / role)
        del model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.shapes",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="artifact root to build into")
    parser.add_argument("--student", default="0.6b", choices=list(ARCHITECTURES))
    parser.add_argument("--teacher", default="1.7b", choices=list(ARCHITECTURES))
    parser.add_argument("--layers", type=int, default=None,
                        help="decoder layers of both models (default: the published depth)")
    parser.add_argument("--device", default="cpu", help="where to initialise the weights")
    args = parser.parse_args(argv)
    pair = build_pair(args.root, args.student, args.teacher, args.layers, args.device)
    print(json.dumps({"student": str(pair.student_dir), "teacher": str(pair.teacher_dir),
                      "problems": str(pair.problems)}, indent=2))


if __name__ == "__main__":
    main()
