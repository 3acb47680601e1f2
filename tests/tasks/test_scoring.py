"""Teacher scoring: live logits aligned with the student's, and the top-k score cache (reuse
without a teacher forward pass, corruption recovery, alignment checks, fidelity to live KL)."""

import json

import pytest
import torch

import distill_core as dc
from tasks.compute import ComputeMeter
from tasks.models import load_model, load_tokenizer, non_embedding_parameters
from tasks.rollout import SamplingConfig, generate_hf, render_prompts
from tasks.scoring import (
    ScoreCacheConfig,
    build_score_cache,
    response_batch,
    response_logits,
    score_live,
)


@pytest.fixture(scope="module")
def rollouts(tiny_pair, tiny_problems):
    tokenizer = load_tokenizer(tiny_pair[0])
    teacher = load_model(tiny_pair[0])
    samples = generate_hf(teacher, tokenizer,
                          render_prompts(tokenizer, tiny_problems["held_out"][:10]),
                          SamplingConfig(n=1, temperature=1.0, max_new_tokens=12, seed=1))
    return tokenizer, samples


class CountingLoader:
    """Loads the teacher and counts its forward passes (what a cache hit must not do)."""

    def __init__(self, path):
        self.path, self.forwards, self.loads = path, 0, 0

    def __call__(self):
        self.loads += 1
        model = load_model(self.path)
        model.register_forward_hook(lambda *_: setattr(self, "forwards", self.forwards + 1))
        return model


def test_live_logits_predict_each_response_token(tiny_pair, rollouts):
    tokenizer, samples = rollouts
    teacher = load_model(tiny_pair[0])
    batch = response_batch(samples[:3], tokenizer.pad_token_id)
    meter = ComputeMeter(1, non_embedding_parameters(teacher))
    logits = score_live(teacher, batch, len(tokenizer), meter)
    assert logits.shape == (*batch.response_ids_BT.shape, len(tokenizer))
    assert not logits.requires_grad
    assert meter.tokens["teacher_score"] == sum(len(s.prompt_ids) + s.length for s in samples[:3])
    for row, sample in enumerate(samples[:3]):  # against an unpadded forward of that one sample
        ids = torch.tensor([sample.prompt_ids + sample.response_ids])
        with torch.no_grad():
            full = teacher(input_ids=ids).logits[0]
        expected = full[len(sample.prompt_ids) - 1 : -1]
        torch.testing.assert_close(logits[row, : sample.length], expected, atol=1e-4, rtol=1e-4)


def test_student_logits_carry_gradient_and_feed_the_loss(tiny_pair, rollouts):
    tokenizer, samples = rollouts
    batch = response_batch(samples, tokenizer.pad_token_id)
    student = load_model(tiny_pair[1])
    student_logits = response_logits(student, batch, len(tokenizer))
    teacher_logits = score_live(load_model(tiny_pair[0]), batch, len(tokenizer))
    out = dc.kl_loss(student_logits, teacher_logits, batch.response_mask_BT, 0.5)
    out.loss.backward()
    assert student.model.embed_tokens.weight.grad.abs().sum() > 0


def test_second_run_reuses_the_cache_without_a_teacher_forward(tmp_path, tiny_pair, rollouts):
    tokenizer, samples = rollouts
    config = ScoreCacheConfig(k=8, shard_samples=4, batch_size=3)
    first = CountingLoader(tiny_pair[0])
    scores = build_score_cache(first, "tiny-teacher", samples, tokenizer.pad_token_id,
                               len(tokenizer), config, root=tmp_path)
    assert first.forwards == 5  # shards of 4, 4, 2 samples in batches of 3: 2 + 2 + 1
    second = CountingLoader(tiny_pair[0])
    again = build_score_cache(second, "tiny-teacher", samples, tokenizer.pad_token_id,
                              len(tokenizer), config, root=tmp_path)
    assert (second.loads, second.forwards) == (0, 0)
    assert again.directory == scores.directory and len(again) == len(samples)
    assert again.rescored_shards == 0
    assert again.bytes_per_token() == 8 * (4 + 4) + 4 + 4


def test_cached_scores_match_live_scoring(tmp_path, tiny_pair, rollouts):
    tokenizer, samples = rollouts
    vocab = len(tokenizer)
    batch = response_batch(samples, tokenizer.pad_token_id)
    teacher_logits = score_live(load_model(tiny_pair[0]), batch, vocab)
    student_logits = response_logits(load_model(tiny_pair[1]), batch, vocab).detach()
    mask = batch.response_mask_BT

    def kl_error(k):
        scores = build_score_cache(lambda: load_model(tiny_pair[0]), "tiny-teacher", samples,
                                   tokenizer.pad_token_id, vocab, ScoreCacheConfig(k=k),
                                   root=tmp_path)
        logprobs, ids = scores.batch(range(len(samples)), batch)
        live_forward, live_reverse, _ = dc.kl_terms(student_logits, teacher_logits)
        cached_forward, cached_reverse = dc.sparse_kl_terms(student_logits, logprobs, ids)
        return [float(((live - cached).abs()[mask]).mean() / live[mask].mean())
                for live, cached in ((live_forward, cached_forward),
                                     (live_reverse, cached_reverse))]

    full_vocab = kl_error(vocab)
    assert max(full_vocab) < 1e-4  # k = V keeps every token: exact
    coarse, fine = kl_error(5), kl_error(100)
    assert fine[0] < coarse[0] and fine[1] < coarse[1]


def test_corrupt_shard_is_detected_and_rescored(tmp_path, tiny_pair, rollouts, caplog):
    tokenizer, samples = rollouts
    config = ScoreCacheConfig(k=8, shard_samples=4)
    original = build_score_cache(lambda: load_model(tiny_pair[0]), "tiny-teacher", samples,
                                 tokenizer.pad_token_id, len(tokenizer), config, root=tmp_path)
    expected = original.sample(5)
    shard = original.directory / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-16:] = bytes(16)  # flip the tail of the tensor data
    shard.write_bytes(bytes(data))
    loader = CountingLoader(tiny_pair[0])
    recovered = build_score_cache(loader, "tiny-teacher", samples, tokenizer.pad_token_id,
                                  len(tokenizer), config, root=tmp_path)
    assert recovered.rescored_shards == 1
    assert loader.forwards == 1  # only the corrupt shard's 4 samples were rescored
    assert "corrupt" in caplog.text
    for name, tensor in expected.items():
        torch.testing.assert_close(recovered.sample(5)[name], tensor)
    manifest = json.loads((original.directory / "manifest.json").read_text())
    assert len(manifest["shards"]) == 3
    clean = CountingLoader(tiny_pair[0])
    build_score_cache(clean, "tiny-teacher", samples, tokenizer.pad_token_id, len(tokenizer),
                      config, root=tmp_path)
    assert clean.forwards == 0  # the rewritten shard verifies


def test_corrupt_manifest_is_named_and_the_cache_rebuilt(tmp_path, tiny_pair, rollouts,
                                                         capsys):
    tokenizer, samples = rollouts
    config = ScoreCacheConfig(k=8, shard_samples=4)
    original = build_score_cache(lambda: load_model(tiny_pair[0]), "tiny-teacher", samples,
                                 tokenizer.pad_token_id, len(tokenizer), config, root=tmp_path)
    expected = original.sample(5)
    (original.directory / "manifest.json").write_text('{"shards": [')
    loader = CountingLoader(tiny_pair[0])
    rebuilt = build_score_cache(loader, "tiny-teacher", samples, tokenizer.pad_token_id,
                                len(tokenizer), config, root=tmp_path)
    assert "manifest.json does not match its checksum" in capsys.readouterr().out
    assert loader.forwards == 3  # every shard rescored: the manifest said where they were
    for name, tensor in expected.items():
        torch.testing.assert_close(rebuilt.sample(5)[name], tensor)


def test_cache_from_other_rollouts_is_refused(tmp_path, tiny_pair, rollouts):
    tokenizer, samples = rollouts
    scores = build_score_cache(lambda: load_model(tiny_pair[0]), "tiny-teacher", samples,
                               tokenizer.pad_token_id, len(tokenizer), ScoreCacheConfig(k=4),
                               root=tmp_path)
    batch = response_batch(samples[1:3], tokenizer.pad_token_id)
    with pytest.raises(ValueError, match="belongs to other rollouts"):
        scores.batch([0, 1], batch)


def test_bad_cache_config_names_the_field():
    with pytest.raises(ValueError, match="k=0"):
        ScoreCacheConfig(k=0)
