"""Teacher scoring: teacher log-probs for every response token, live or from a reusable cache.

Two modes, one alignment. ``response_batch`` lays samples out as right-padded (prompt +
response) sequences and records, for each response token, the position whose logits predict
it; ``response_logits`` runs any model (teacher or student) over that batch and returns logits
``(B, T, V)`` aligned token for token, so the two can go straight into ``distill_core.kl_loss``.

- **Live** (on-policy cells): ``response_logits(teacher, batch)`` under ``torch.no_grad``: the
  full-vocabulary logits, exact.
- **Cache** (teacher-prefix cells): ``build_score_cache`` scores teacher rollouts once and keeps,
  per response token, the teacher's top-k log-probs and token ids plus the log of the remaining
  (tail) mass, in safetensors shards. The directory is content-addressed by (teacher, samples,
  k, code version), so a second run or another cell reuses it with no teacher forward pass.
  Every shard's SHA-256 is in ``manifest.json``; ``open_score_cache`` verifies them and rescores
  a corrupt or missing shard instead of using it. ``SparseTeacherScores.batch`` hands the
  cached scores to the trainer's ``sparse`` loss (``distill_core/sparse.py``) in the batch's
  (B, T, K) layout.

Bytes per response token in the cache: k × (4 + 4) + 4 + 4 (float32 log-probs, int32 ids, the
float32 tail log-mass and the int32 token id kept to check alignment), e.g. 168 bytes at k = 20
against 2·V for one fp16 row of full logits (303,872 bytes at Qwen's V = 151,936).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from transformers import PreTrainedModel

from tasks.artifacts import (
    cached_build,
    code_version,
    content_hash,
    sha256_file,
    write_checksums,
)
from tasks.compute import ComputeMeter
from tasks.files import atomic_write_bytes, atomic_write_text
from tasks.progress import Progress
from tasks.rollout import Sample

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SCORING_CODE = ("tasks.scoring",)


@dataclass(frozen=True)
class ResponseBatch:
    """Samples laid out for one forward pass.

    input_ids_BL, attention_mask_BL: right-padded prompt + response.
    positions_BT: for response token t of row b, the index in L of the logits that predict it.
    response_ids_BT, response_mask_BT: the response tokens (0-padded) and which are real.
    """

    input_ids_BL: torch.Tensor
    attention_mask_BL: torch.Tensor
    positions_BT: torch.Tensor
    response_ids_BT: torch.Tensor
    response_mask_BT: torch.Tensor

    @property
    def num_tokens(self) -> int:
        """Tokens a forward pass over this batch processes (prompt + response, no padding)."""
        return int(self.attention_mask_BL.sum())

    @property
    def num_response_tokens(self) -> int:
        return int(self.response_mask_BT.sum())


def response_batch(samples: Sequence[Sample], pad_token_id: int) -> ResponseBatch:
    """Right-padded (prompt + response) rows and the positions predicting each response token."""
    if not samples:
        raise ValueError("samples is empty: score at least one response")
    width = max(len(s.prompt_ids) + len(s.response_ids) for s in samples)
    steps = max(1, max(len(s.response_ids) for s in samples))
    input_ids = torch.full((len(samples), width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(samples), width), dtype=torch.long)
    positions = torch.zeros((len(samples), steps), dtype=torch.long)
    response_ids = torch.zeros((len(samples), steps), dtype=torch.long)
    response_mask = torch.zeros((len(samples), steps), dtype=torch.bool)
    for row, sample in enumerate(samples):
        if not sample.prompt_ids:
            raise ValueError(f"sample {row} (prompt {sample.prompt_index}) has an empty prompt; "
                             "the first response token needs a position that predicts it")
        prompt, response = len(sample.prompt_ids), len(sample.response_ids)
        input_ids[row, : prompt + response] = torch.tensor(sample.prompt_ids + sample.response_ids)
        attention[row, : prompt + response] = 1
        positions[row, :response] = torch.arange(prompt - 1, prompt + response - 1)
        response_ids[row, :response] = torch.tensor(sample.response_ids)
        response_mask[row, :response] = True
    return ResponseBatch(input_ids, attention, positions, response_ids, response_mask)


def response_logits(
    model: PreTrainedModel, batch: ResponseBatch, vocab_size: int | None = None
) -> torch.Tensor:
    """(B, T, V) logits predicting each response token; V cut to vocab_size (padded rows off).

    Gradient flows if the caller has it enabled (the student); wrap in torch.no_grad for the
    teacher. Rows past a response's end hold the logits of padding positions: mask them.
    """
    device = model.device
    logits_BLV = model(input_ids=batch.input_ids_BL.to(device),
                       attention_mask=batch.attention_mask_BL.to(device)).logits
    if vocab_size is not None:
        logits_BLV = logits_BLV[..., :vocab_size]
    index = batch.positions_BT.to(device).unsqueeze(-1).expand(-1, -1, logits_BLV.shape[-1])
    return logits_BLV.gather(1, index)


def response_hidden_states(model: PreTrainedModel, batch: ResponseBatch) -> torch.Tensor:
    """(B, T, D) final hidden states (after the final norm: what the LM head reads) at the
    positions predicting each response token — the fused loss's input instead of logits.

    The model's own forward runs (so a DDP wrapper's hooks see it) with logits_to_keep=1: its
    head then computes one position per sequence, never (B, L, V). Transformers returns the
    final-norm output as the last of hidden_states. Mask rows past a response's end.
    """
    device = model.device
    outputs = model(input_ids=batch.input_ids_BL.to(device),
                    attention_mask=batch.attention_mask_BL.to(device),
                    logits_to_keep=1, output_hidden_states=True)
    hidden_BLD = outputs.hidden_states[-1]
    index = batch.positions_BT.to(device).unsqueeze(-1).expand(-1, -1, hidden_BLD.shape[-1])
    return hidden_BLD.gather(1, index)


@torch.no_grad()
def score_live(teacher: PreTrainedModel, batch: ResponseBatch, vocab_size: int | None = None,
               meter: ComputeMeter | None = None) -> torch.Tensor:
    """Full-vocabulary teacher logits (B, T, V) for the batch's response tokens (no gradient)."""
    logits = response_logits(teacher, batch, vocab_size)
    if meter is not None:
        meter.teacher_forward(batch.num_tokens)
    return logits


# ----------------------------------------------------------------------------- the cache


@dataclass(frozen=True)
class ScoreCacheConfig:
    """k: teacher tokens kept per position. shard_samples: samples per shard file.
    batch_size: samples per teacher forward pass. temperature: the teacher's softmax temperature
    (training applies its own temperature to the student only)."""

    k: int = 20
    shard_samples: int = 512
    batch_size: int = 16
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k={self.k} must be >= 1 teacher tokens per position")
        if self.shard_samples < 1 or self.batch_size < 1:
            raise ValueError(f"shard_samples={self.shard_samples} and batch_size="
                             f"{self.batch_size} must be >= 1")
        if not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature} must be > 0")


def samples_key(samples: Sequence[Sample]) -> str:
    """Content hash of the token ids of every sample (what the cache's scores depend on)."""
    digest = hashlib.sha256()
    for sample in samples:
        digest.update(json.dumps([sample.prompt_ids, sample.response_ids]).encode())
    return digest.hexdigest()[:16]


@torch.no_grad()
def _score_shard(teacher: PreTrainedModel, samples: Sequence[Sample], pad_token_id: int,
                 vocab_size: int, config: ScoreCacheConfig,
                 meter: ComputeMeter | None) -> dict[str, torch.Tensor]:
    """Top-k log-probs, ids and tail log-mass for every response token of samples, flattened."""
    topk_logprobs, topk_ids, tails, token_ids, lengths = [], [], [], [], []
    k = min(config.k, vocab_size)
    for start in range(0, len(samples), config.batch_size):
        chunk = samples[start : start + config.batch_size]
        batch = response_batch(chunk, pad_token_id)
        logits = score_live(teacher, batch, vocab_size, meter).float() / config.temperature
        logprobs = torch.log_softmax(logits, dim=-1)
        values, ids = logprobs.topk(k, dim=-1)
        tail = torch.log(-torch.expm1(torch.logsumexp(values.double(), dim=-1))
                         .clamp(max=-1e-12)).float()
        mask = batch.response_mask_BT.to(values.device)
        topk_logprobs.append(values[mask].cpu())
        topk_ids.append(ids[mask].to(torch.int32).cpu())
        tails.append(tail[mask].cpu())
        token_ids.append(batch.response_ids_BT[batch.response_mask_BT].to(torch.int32))
        lengths.extend(len(s.response_ids) for s in chunk)
    offsets = torch.zeros(len(samples) + 1, dtype=torch.int64)
    offsets[1:] = torch.tensor(lengths, dtype=torch.int64).cumsum(0)
    return {"topk_logprobs": torch.cat(topk_logprobs), "topk_ids": torch.cat(topk_ids),
            "tail_logprob": torch.cat(tails), "token_ids": torch.cat(token_ids),
            "offsets": offsets}


def _write_shard(tensors: dict[str, torch.Tensor], path: Path) -> str:
    atomic_write_bytes(path, save({name: t.contiguous() for name, t in tensors.items()}))
    return sha256_file(path)


def _shard_ranges(count: int, shard_samples: int) -> list[tuple[int, int]]:
    return [(start, min(start + shard_samples, count)) for start in range(0, count, shard_samples)]


@dataclass
class SparseTeacherScores:
    """A verified score cache, loaded: per sample, (T_i, K) teacher top-k log-probs and ids."""

    directory: Path
    k: int
    vocab_size: int
    rescored_shards: int
    _shards: list[dict[str, torch.Tensor]]
    _where: list[tuple[int, int]]  # sample index -> (shard, index within shard)

    def __len__(self) -> int:
        return len(self._where)

    def sample(self, index: int) -> dict[str, torch.Tensor]:
        shard, local = self._where[index]
        tensors = self._shards[shard]
        start, end = int(tensors["offsets"][local]), int(tensors["offsets"][local + 1])
        return {name: tensors[name][start:end]
                for name in ("topk_logprobs", "topk_ids", "tail_logprob", "token_ids")}

    def batch(self, indices: Sequence[int], batch: ResponseBatch) -> tuple[torch.Tensor,
                                                                            torch.Tensor]:
        """(topk_logprobs_BTK, topk_ids_BTK) for samples ``indices`` laid out like ``batch``.

        Checks that the cached token ids are the batch's response tokens (a cache from other
        rollouts is an error, not silent garbage). Padding positions get -inf log-probs.
        """
        rows, steps = batch.response_ids_BT.shape
        if len(indices) != rows:
            raise ValueError(f"{len(indices)} sample indices for a batch of {rows} rows")
        logprobs = torch.full((rows, steps, self.k), float("-inf"))
        ids = torch.arange(self.k).expand(rows, steps, self.k).clone()
        for row, index in enumerate(indices):
            cached = self.sample(index)
            length = int(batch.response_mask_BT[row].sum())
            if not torch.equal(cached["token_ids"].long(), batch.response_ids_BT[row, :length]):
                raise ValueError(
                    f"score cache {self.directory}: sample {index} holds scores for other "
                    f"response tokens than batch row {row}; the cache belongs to other rollouts"
                )
            logprobs[row, :length] = cached["topk_logprobs"]
            ids[row, :length] = cached["topk_ids"].long()
        return logprobs, ids

    def bytes_per_token(self) -> float:
        total = sum(t.numel() * t.element_size() for shard in self._shards
                    for name, t in shard.items() if name != "offsets")
        tokens = sum(int(shard["token_ids"].numel()) for shard in self._shards)
        return total / max(1, tokens)


def build_score_cache(
    teacher_loader: Callable[[], PreTrainedModel],
    teacher_id: str,
    samples: Sequence[Sample],
    pad_token_id: int,
    vocab_size: int,
    config: ScoreCacheConfig = ScoreCacheConfig(),
    root: str | Path | None = None,
    meter: ComputeMeter | None = None,
    log: Callable[[str], None] = print,
) -> SparseTeacherScores:
    """Score samples with the teacher once (top-k + tail per response token) and reuse after;
    log hears the progress while they are scored.

    teacher_loader: builds the teacher on demand, so a cache hit never loads it.
    teacher_id: what identifies the teacher's weights (e.g. tasks.artifacts.file_hash of its
    directory, or a hub id plus revision); part of the cache key with the samples' token ids,
    the config and this module's code.
    """
    key = content_hash(teacher_id, samples_key(samples), vocab_size, config,
                       code_version(SCORING_CODE))
    teacher: list[PreTrainedModel] = []

    def get_teacher() -> PreTrainedModel:
        if not teacher:
            teacher.append(teacher_loader())
        return teacher[0]

    def build(out: Path) -> None:
        shards = []
        with Progress(len(samples), "teacher scores", log, unit="samples") as progress:
            for number, (start, end) in enumerate(_shard_ranges(len(samples),
                                                                config.shard_samples)):
                tensors = _score_shard(get_teacher(), samples[start:end], pad_token_id,
                                       vocab_size, config, meter)
                name = f"shard-{number:05d}.safetensors"
                shards.append({"file": name, "start": start, "end": end,
                               "tokens": int(tensors["token_ids"].numel()),
                               "sha256": _write_shard(tensors, out / name)})
                progress.update(end - start)
        atomic_write_text(out / MANIFEST, json.dumps(
            {"k": min(config.k, vocab_size), "vocab_size": vocab_size, "samples": len(samples),
             "teacher": teacher_id, "config": asdict(config),
             "shards": shards}, indent=2))

    directory, _ = cached_build("scores", key, build, root=root,
                                describe={"teacher": teacher_id, "config": config,
                                          "samples": len(samples)},
                                self_verified=("shard-*.safetensors",), log=log)
    return _open_verified(directory, samples, pad_token_id, vocab_size, config, get_teacher,
                          meter)


def _open_verified(directory: Path, samples: Sequence[Sample], pad_token_id: int,
                   vocab_size: int, config: ScoreCacheConfig,
                   get_teacher: Callable[[], PreTrainedModel],
                   meter: ComputeMeter | None) -> SparseTeacherScores:
    """Load every shard, rescoring (and rewriting) any whose checksum does not match."""
    manifest_path = directory / MANIFEST
    try:  # its checksum was verified by cached_build; this names the file if it still fails
        manifest = json.loads(manifest_path.read_text())
        manifest["shards"], manifest["k"], manifest["vocab_size"]  # noqa: B018
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{manifest_path}: not a score-cache manifest ({error}); delete "
                         f"{directory} to rebuild the cache") from error
    shards, where, rescored = [], [], 0
    for number, entry in enumerate(manifest["shards"]):
        path = directory / entry["file"]
        if not path.exists() or sha256_file(path) != entry["sha256"]:
            log.warning("score cache shard %s is missing or corrupt (checksum mismatch); "
                        "rescoring its %d samples", path, entry["end"] - entry["start"])
            tensors = _score_shard(get_teacher(), samples[entry["start"]:entry["end"]],
                                   pad_token_id, vocab_size, config, meter)
            entry["sha256"] = _write_shard(tensors, path)
            rescored += 1
        shards.append(load_file(str(path)))
        where.extend((number, local) for local in range(entry["end"] - entry["start"]))
    if rescored:
        atomic_write_text(manifest_path, json.dumps(manifest, indent=2))
        write_checksums(directory, ("shard-*.safetensors",))
    return SparseTeacherScores(directory, manifest["k"], manifest["vocab_size"], rescored,
                               shards, where)
