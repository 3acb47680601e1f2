"""Benchmark: peak extra memory and wall time of KL forward+backward, straightforward vs chunked.

Three implementations per direction: "textbook" (log_softmax of both, F.kl_div, autograd),
"straightforward" (distill_core's full-tensor reference: the same plus -inf/NaN guards) and
"chunked" (distill_core's default path).

Each case runs in its own subprocess so its peak resident memory is its own. Peak extra memory is
the process's high-water mark during one forward+backward minus its resident size just before
(the inputs already allocated), read from /proc (Linux). Wall time is the median of --repeats runs
after that first one.

    python -m bench.kl_memory                      # the issue's setting: V=151,936, 1,024 tokens
    python -m bench.kl_memory --tokens 256 --vocab 32768 --repeats 2 --skip-head  # a quick look

Then, unless --skip-head, bench.kl_head: the same loss with the LM head matmuls included, for TRL,
the chunked path and the fused path at 1,024 / 4,096 / 8,192 tokens (its docstring says how).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CASES = {
    "textbook forward KL": ("textbook", 0.0),
    "straightforward forward KL": ("straightforward", 0.0),
    "chunked forward KL": ("chunked", 0.0),
    "textbook reverse KL": ("textbook", 1.0),
    "straightforward reverse KL": ("straightforward", 1.0),
    "chunked reverse KL": ("chunked", 1.0),
}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not found in /proc/self/status (this benchmark needs Linux)")


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets VmHWM to the current RSS


def run_case(implementation: str, reverse_weight: float, tokens: int, vocab: int, repeats: int):
    """Measure one case in this process; returns a dict of numbers."""
    import torch

    import distill_core as dc

    torch.manual_seed(0)
    student_logits = torch.randn(1, tokens, vocab, requires_grad=True)
    teacher_logits = torch.randn(1, tokens, vocab)
    mask = torch.ones(1, tokens)

    def step() -> None:
        if implementation == "chunked":
            loss = dc.kl_loss(student_logits, teacher_logits, mask, reverse_weight).loss
        elif implementation == "textbook":  # F.kl_div(input, target) = KL(target ‖ input)
            log_q = torch.log_softmax(student_logits, dim=-1)
            log_p = torch.log_softmax(teacher_logits, dim=-1)
            pair = (log_q, log_p) if reverse_weight == 0.0 else (log_p, log_q)
            loss = torch.nn.functional.kl_div(*pair, log_target=True, reduction="sum") / tokens
        else:  # distill_core's reference: also guards -inf vocabulary rows and NaN teachers
            per_token = (dc.reverse_kl if reverse_weight == 1.0 else dc.forward_kl)(
                student_logits, teacher_logits
            )
            loss = dc.masked_mean(per_token, mask)
        loss.backward()
        student_logits.grad = None

    _reset_peak_rss()
    before = _rss_bytes()
    start = time.perf_counter()
    step()
    first_seconds = time.perf_counter() - start
    peak_extra = _peak_rss_bytes() - before
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    logits_bytes = student_logits.numel() * student_logits.element_size()
    return {
        "logits_mib": logits_bytes / 2**20,
        "peak_extra_mib": peak_extra / 2**20,
        "peak_extra_x_logits": peak_extra / logits_bytes,
        "first_seconds": first_seconds,
        "median_seconds": statistics.median(times) if times else first_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-head", action="store_true",
                        help="only this logits table, not bench.kl_head's (head matmuls included)")
    parser.add_argument("--case", choices=sorted(CASES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:  # child process
        implementation, reverse_weight = CASES[args.case]
        print(json.dumps(run_case(implementation, reverse_weight, args.tokens, args.vocab,
                                  args.repeats)))
        return
    import torch

    print(f"V={args.vocab:,}, {args.tokens:,} tokens, fp32, CPU, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; median of {args.repeats} runs\n")
    results = {name: _run_child(name, args) for name in CASES}
    print("| case | peak extra memory | × one logits tensor | forward+backward | "
          "time vs textbook | time vs straightforward |")
    print("|---|---|---|---|---|---|")
    for name, result in results.items():
        seconds = result["median_seconds"]
        direction = name.split(" ", 1)[1]
        print(f"| {name} | {result['peak_extra_mib']:,.0f} MiB | "
              f"{result['peak_extra_x_logits']:.2f}× | {seconds:.2f} s | "
              f"{seconds / results['textbook ' + direction]['median_seconds']:.2f}× | "
              f"{seconds / results['straightforward ' + direction]['median_seconds']:.2f}× |")
    if not args.skip_head:  # the head-included comparison: TRL, chunked + head matmuls, fused
        print(flush=True)
        subprocess.run([sys.executable, "-m", "bench.kl_head", "--repeats", str(args.repeats)],
                       check=True)


def _run_child(name: str, args: argparse.Namespace) -> dict:
    return run_case_process("bench.kl_memory", f"benchmark case {name!r}", [
        "--case", name, "--tokens", str(args.tokens), "--vocab", str(args.vocab),
        "--repeats", str(args.repeats)])


def run_case_process(module: str, what: str, arguments: list[str]) -> dict:
    """Run one case as `python -m module arguments` in its own process (so its peak resident
    memory is its own) and return the JSON object it prints last."""
    completed = subprocess.run([sys.executable, "-m", module, *arguments], capture_output=True,
                               text=True, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"{what} failed:\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
