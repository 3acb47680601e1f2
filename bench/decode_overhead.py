"""How much of sampling is transformers' ``generate`` loop rather than the model's own forwards.

The same student samples the same batch of real prompts (the profile's problems, its template,
left-padded as tasks.rollout does) twice, alternating run by run: once through
``model.generate`` with the arguments tasks.rollout passes, once through a bare loop — one
prefill, then one cached forward per token with the same position ids, attention mask and
sampling operations (softmax, one multinomial draw per row, finished rows padded), and nothing
else. Both seed torch alike; the bench checks they draw the same tokens, so the difference is
the loop's overhead alone: the most a leaner decode loop could save. One torch thread, as
``bench.vs_trl`` runs; the table gives medians over runs.

    python -m bench.decode_overhead [--profiles default smollm2] [--runs 5]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time
from pathlib import Path

import torch

from bench.step_breakdown import load_average, resolve_profile

SHAPES = {"default": (16, 96), "smollm2": (4, 32)}  # batch × response cap, as bench.vs_trl


def _batch(profile, tokenizer, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from tasks.data import read_problems
    from tasks.rollout import _left_padded, render_prompts

    problems = read_problems(profile.problems)[:batch_size]
    prompts = render_prompts(tokenizer, problems, profile.prompt_template)
    rows = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    return _left_padded(rows, tokenizer.pad_token_id)


def _generate(model, tokenizer, input_ids, attention_mask, max_new_tokens) -> torch.Tensor:
    torch.manual_seed(0)
    return model.generate(input_ids=input_ids, attention_mask=attention_mask,
                          max_new_tokens=max_new_tokens, do_sample=True, temperature=1.0,
                          top_p=1.0, top_k=0, pad_token_id=tokenizer.pad_token_id,
                          eos_token_id=tokenizer.eos_token_id)


@torch.inference_mode()
def _bare(model, tokenizer, input_ids, attention_mask, max_new_tokens) -> torch.Tensor:
    from transformers import DynamicCache

    torch.manual_seed(0)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    cache = DynamicCache(config=model.config)
    positions = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                cache=cache, use_cache=True, logits_to_keep=1)
    tokens, running = [input_ids], torch.ones(len(input_ids), dtype=torch.long)
    position = positions[:, -1:]
    for index in range(max_new_tokens):
        drawn = torch.multinomial(torch.softmax(out.logits[:, -1].float(), -1), 1).squeeze(1)
        drawn = drawn * running + pad * (1 - running)
        tokens.append(drawn[:, None])
        running = running & (drawn != eos)
        if not running.any() or index == max_new_tokens - 1:
            break
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(drawn), 1)], 1)
        position = position + 1
        out = model(input_ids=drawn[:, None], attention_mask=attention_mask,
                    position_ids=position, cache=cache, use_cache=True)
    return torch.cat(tokens, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--root", type=Path,
                        default=Path(os.environ.get("DISTILL_LAB_ARTIFACTS", "artifacts")))
    args = parser.parse_args()
    torch.set_num_threads(1)
    from tasks.models import load_model, load_tokenizer

    print(f"{datetime.datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, 1 thread; load {load_average()} at start; medians of "
          f"{args.runs} runs")
    print("| profile | batch × cap | tokens drawn | generate | bare loop | loop overhead | "
          "same tokens |")
    print("|---|---|---|---|---|---|---|")
    for name in args.profiles:
        batch_size, cap = SHAPES[name]
        profile = resolve_profile(name, args.root)
        model, tokenizer = load_model(profile.student).eval(), load_tokenizer(profile.student)
        input_ids, attention_mask = _batch(profile, tokenizer, batch_size)
        seconds: dict[str, list[float]] = {"generate": [], "bare": []}
        outputs = {}
        for _ in range(args.runs + 1):  # the first pair warms up
            for way, sample in (("generate", _generate), ("bare", _bare)):
                began = time.perf_counter()
                outputs[way] = sample(model, tokenizer, input_ids, attention_mask, cap)
                seconds[way].append(time.perf_counter() - began)
        generate, bare = (statistics.median(seconds[way][1:]) for way in ("generate", "bare"))
        same = torch.equal(outputs["generate"], outputs["bare"])
        drawn = outputs["generate"].shape[1] - input_ids.shape[1]
        print(f"| {name} | {batch_size} × {cap} | {drawn} per row | {generate:.3f} s | "
              f"{bare:.3f} s | {1 - bare / generate:.0%} | {'yes' if same else 'NO'} |",
              flush=True)
    print(f"load {load_average()} at the end")


if __name__ == "__main__":
    main()
