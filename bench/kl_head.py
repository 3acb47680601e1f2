"""Benchmark: the KL loss with the LM head included — TRL, the chunked logits path, the fused path.

Every case starts from the same inputs — student and teacher final hidden states (T, D) and head
weights (V, D), float32, CPU — and times one forward + backward that ends with gradients for
the student's hidden states and head weight, so the head matmuls are counted for all:

- "TRL generalized_jsd_loss": logits = h Wᵀ for both models, then TRL's GKD loss
  (``trl.experimental.gkd.GKDTrainer.generalized_jsd_loss``, β = 0.5, its default) under autograd;
- "chunked + head matmuls": the same logits, then distill_core's chunked exact loss (λ = 0.5);
- "fused": distill_core.fused_kl_loss on the hidden states and heads (λ = 0.5): no logits tensor.

Each case runs in its own subprocess; peak extra memory is the process's resident high-water
mark during the first forward + backward minus its resident size just before (inputs allocated),
read from /proc (Linux); times are medians of --repeats further runs: wall-clock, and the
process's CPU time (all threads), which other jobs on a shared machine disturb far less than the
wall clock — the ratio column uses it. Token counts run in
increasing order; a case whose projected peak (extrapolated from its smaller runs) would exceed
--max-gib is skipped and listed with the projection.

    python -m bench.kl_head                       # V = 151,936, D = 1,024, T = 1,024/4,096/8,192
    python -m bench.kl_head --tokens 256 --vocab 32768 --repeats 1        # a quick look
    python -m bench.kl_head --cases fused --tokens 2048 --fused-chunk-rows 110   # chunk sweep
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from bench.kl_memory import _peak_rss_bytes, _reset_peak_rss, _rss_bytes, run_case_process

TRL = "TRL generalized_jsd_loss"
CHUNKED = "chunked + head matmuls"
FUSED = "fused"
CASES = (TRL, CHUNKED, FUSED)
REVERSE_WEIGHT = 0.5  # λ for distill_core; TRL's β = 0.5 mixes its two KLs through a JSD instead


def run_case(case: str, tokens: int, vocab: int, width: int, repeats: int,
             chunk_rows: int | None) -> dict:
    """Measure one case in this process; returns a dict of numbers."""
    import torch

    step = _step(case, chunk_rows)
    torch.manual_seed(0)
    student_hidden = torch.randn(tokens, width).requires_grad_(True)
    student_head = (torch.randn(vocab, width) / width**0.5).requires_grad_(True)
    teacher_hidden = torch.randn(tokens, width)
    teacher_head = torch.randn(vocab, width) / width**0.5
    inputs = (student_hidden, student_head, teacher_hidden, teacher_head)

    def timed_step() -> tuple[float, float]:
        start, start_cpu = time.perf_counter(), time.process_time()
        step(*inputs)
        student_hidden.grad = student_head.grad = None
        return time.perf_counter() - start, time.process_time() - start_cpu

    _reset_peak_rss()
    before = _rss_bytes()
    first = timed_step()
    peak_extra = _peak_rss_bytes() - before
    times = [timed_step() for _ in range(repeats)] or [first]
    logits_bytes = tokens * vocab * 4
    return {
        "before_mib": before / 2**20,
        "peak_extra_mib": peak_extra / 2**20,
        "peak_extra_x_logits": peak_extra / logits_bytes,
        "first_seconds": first[0],
        "median_seconds": statistics.median(t[0] for t in times),
        "median_cpu_seconds": statistics.median(t[1] for t in times),
    }


def _step(case: str, chunk_rows: int | None):
    """The case's forward + backward, a function of (h_S, W_S, h_T, W_T); imports done here."""
    import torch

    import distill_core as dc

    if case == FUSED:
        def fused(h_s, w_s, h_t, w_t):
            student, teacher = dc.HiddenStates(h_s, w_s), dc.HiddenStates(h_t, w_t)
            ones = torch.ones(h_s.shape[0])
            dc.fused_kl_loss(student, teacher, ones, REVERSE_WEIGHT,
                             chunk_size=chunk_rows or "auto").loss.backward()
        return fused
    if case == CHUNKED:
        def chunked(h_s, w_s, h_t, w_t):
            student_logits = (h_s @ w_s.T).unsqueeze(0)
            with torch.no_grad():
                teacher_logits = (h_t @ w_t.T).unsqueeze(0)
            ones = torch.ones(1, h_s.shape[0])
            dc.kl_loss(student_logits, teacher_logits, ones, REVERSE_WEIGHT).loss.backward()
        return chunked
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.gkd import GKDTrainer  # bench-only extra: pip install trl

    def trl(h_s, w_s, h_t, w_t):
        student_logits = (h_s @ w_s.T).unsqueeze(0)
        with torch.no_grad():
            teacher_logits = (h_t @ w_t.T).unsqueeze(0)
        GKDTrainer.generalized_jsd_loss(student_logits, teacher_logits, beta=0.5).backward()
    return trl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096, 8192])
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--width", type=int, default=1024, help="hidden width D")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--fused-chunk-rows", type=int, help="rows per fused chunk (default auto)")
    parser.add_argument("--max-gib", type=float, default=12.0,
                        help="skip a case whose projected peak resident memory exceeds this")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:  # child process
        print(json.dumps(run_case(args.case, args.tokens[0], args.vocab, args.width,
                                  args.repeats, args.fused_chunk_rows)))
        return
    import torch

    print(f"V={args.vocab:,}, D={args.width:,}, fp32, CPU, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; median of {args.repeats} runs; "
          f"{time.strftime('%Y-%m-%d %H:%M')}; load {os.getloadavg()[0]:.2f}\n", flush=True)
    rows = []
    measured: dict[str, list[tuple[int, dict]]] = {case: [] for case in args.cases}
    for tokens in sorted(args.tokens):
        for case in args.cases:
            projected = _projected_peak_mib(measured[case], tokens)
            if projected is not None and projected > args.max_gib * 1024:
                rows.append((tokens, case, None, projected))
            else:
                result = _run_child(case, tokens, args)
                measured[case].append((tokens, result))
                rows.append((tokens, case, result, None))
            print(_row(*rows[-1], rows, args.vocab), flush=True)
    print(f"\nload after: {os.getloadavg()[0]:.2f}\n")
    print("| tokens | case | peak extra memory | × one logits tensor | forward+backward, wall | "
          "CPU time | CPU time vs chunked + head |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(_row(*row, rows, args.vocab))


def _projected_peak_mib(points: list[tuple[int, dict]], tokens: int) -> float | None:
    """Peak resident MiB at tokens, extrapolated: a line through the last two measured points,
    or proportional to tokens from one (an overestimate when part of the extra is fixed)."""
    if not points:
        return None
    last_tokens, last = points[-1]
    if len(points) == 1:
        extra = last["peak_extra_mib"] * tokens / last_tokens
    else:
        prev_tokens, prev = points[-2]
        slope = (last["peak_extra_mib"] - prev["peak_extra_mib"]) / (last_tokens - prev_tokens)
        extra = last["peak_extra_mib"] + slope * (tokens - last_tokens)
    return last["before_mib"] + extra


def _row(tokens, case, result, projected, rows, vocab) -> str:
    if result is None:
        return (f"| {tokens:,} | {case} | skipped: projected peak {projected / 1024:,.1f} GiB "
                f"resident | – | – | – | – |")
    reference = next((r for t, c, r, _ in rows if t == tokens and c == CHUNKED and r), None)
    ratio = (f"{result['median_cpu_seconds'] / reference['median_cpu_seconds']:.2f}×"
             if reference else "–")
    return (f"| {tokens:,} | {case} | {result['peak_extra_mib']:,.0f} MiB | "
            f"{result['peak_extra_x_logits']:.2f}× | {result['median_seconds']:.1f} s | "
            f"{result['median_cpu_seconds']:.1f} s | {ratio} |")


def _run_child(case: str, tokens: int, args: argparse.Namespace) -> dict:
    arguments = ["--case", case, "--tokens", str(tokens), "--vocab", str(args.vocab),
                 "--width", str(args.width), "--repeats", str(args.repeats)]
    if args.fused_chunk_rows:
        arguments += ["--fused-chunk-rows", str(args.fused_chunk_rows)]
    return run_case_process("bench.kl_head", f"benchmark case {case!r} at {tokens} tokens",
                            arguments)


if __name__ == "__main__":
    main()
