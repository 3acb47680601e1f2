"""The live policy's samples inside on-policy training: Hugging Face generate or vLLM.

The student-prefix cells of distillation (``tasks.train``) and GRPO (``tasks.rl``) sample the
model they train at every step. ``rollout_backend`` says how:

- ``hf``: ``generate`` on the live model, in the training process. With several processes each
  samples its own shard of the step's prompts with its own seed (``tasks.loop.sampling_seed``).
- ``vllm``: a vLLM engine (``tasks.vllm_backend``: a worker process in vLLM's own environment,
  named by ``DISTILL_LAB_VLLM_PYTHON``) holds a copy of the weights and samples the whole
  step. The engine starts once per run, from the weights the run starts with (a resumed run:
  its checkpoint's). Every ``handoff_every`` steps the trainer saves the weights and the engine
  loads them in place. ``handoff_every`` 1 is exactly on-policy; N > 1 samples from weights up
  to N - 1 optimiser steps old, and every step logs how old (``rollout/staleness``).

The hand-off is checked twice. The engine reports the number of the weights it holds (the
optimiser steps behind them); a step refuses to sample when that number is older than
``handoff_every`` promises. After each hand-off the engine and the trainer score one fixed
sequence (the first training prompt); their largest log-prob difference is logged
(``rollout/handoff_logprob_gap``) and, for a float32 engine, a gap over ``ARRIVAL_TOLERANCE``
stops the run: the weights did not arrive.

Several processes: only the main process drives the engine. It samples the whole step, then
every process takes its shard (the same shard ``tasks.loop.shard`` gives the prompts), so the
samples do not depend on the number of processes.

On a GPU the engine is colocated by default: it runs on the training GPU and takes
``vllm_gpu_memory`` of its memory (vLLM's ``gpu_memory_utilization``) beside the models and
optimiser. ``vllm_device`` puts it on a GPU of its own instead (the worker sees only that
device), where it takes 90 % of the memory. Either way it is a child process of the main
training process, not a shared server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from tasks.compute import ComputeMeter
from tasks.loop import sampling_seed, shard
from tasks.rollout import Sample, SamplingConfig, context_length, encode_prompts, generate_hf
from tasks.settings import setting

log = logging.getLogger(__name__)

ROLLOUT_BACKENDS = ("hf", "vllm")
ONE_THREAD_DECODER = 10_000_000  # parameters below which a CPU samples on one thread
# Largest |log p| difference, on the check sequence, between a float32 engine and the trainer
# after a hand-off. Same weights measured 1e-6..1e-5 on the embedded default; the weights one
# optimiser step earlier differ by 1e-3..1e-1 (tests/tasks/test_policy_sampling.py).
ARRIVAL_TOLERANCE = 1e-3
SEPARATE_GPU_MEMORY = 0.9  # vLLM's share of a GPU of its own
ENGINE_DTYPES = {"no": "float32", "fp16": "float16", "bf16": "bfloat16"}


# --------------------------------------------------------------------------- the settings
# Declared once here, used by TrainConfig (on-policy cells) and GRPOConfig.

def rollout_backend_setting(what: str) -> Any:
    return setting("hf", f"Where {what} come from. hf: generate on the live model; vllm: a "
                   "vLLM engine handed the weights every handoff_every steps (needs "
                   "DISTILL_LAB_VLLM_PYTHON: infra/vllm-cpu-env.sh).", choices=ROLLOUT_BACKENDS)


def handoff_every_setting() -> Any:
    return setting(1, "With rollout_backend vllm: optimiser steps between weight hand-offs "
                   "(1: exactly on-policy; N: samples up to N - 1 steps stale).", ge=1)


def vllm_gpu_memory_setting() -> Any:
    return setting(0.3, "With rollout_backend vllm on a GPU: the share of the training GPU's "
                   "memory vLLM takes beside training (colocated).", gt=0, le=0.95)


def vllm_device_setting() -> Any:
    return setting("", "With rollout_backend vllm on a GPU: empty: colocated on the training "
                   "GPU; a CUDA index (e.g. 1): vLLM on that GPU alone.")


def vllm_eager_setting() -> Any:
    return setting(False, "With rollout_backend vllm: skip vLLM's torch.compile warm-up "
                   "(start-up in seconds instead of minutes on a CPU; slower sampling).")


ROLLOUT_KNOBS = ("rollout_backend", "handoff_every", "vllm_gpu_memory", "vllm_device",
                 "vllm_eager")


def rollout_fingerprint(settings: dict, on_policy: bool) -> dict:
    """settings (a stage config's asdict) without the rollout knobs that cannot change its
    weights: all of them for hf or teacher prefixes (so runs trained before these knobs existed
    keep their fingerprint), the engine's placement and compilation for vllm."""
    kept = ("rollout_backend", "handoff_every") if (
        on_policy and settings["rollout_backend"] == "vllm") else ()
    return {k: v for k, v in settings.items() if k not in ROLLOUT_KNOBS or k in kept}


def check_rollout_backend(config: Any, on_policy: bool) -> None:
    """Refuse rollout_backend vllm before any work when no vLLM environment is named (an
    hf run, or one that samples nothing, needs none)."""
    if config.rollout_backend != "vllm" or not on_policy:
        return
    from tasks.vllm_backend import resolve_python

    try:
        resolve_python()
    except FileNotFoundError as error:
        raise ValueError(f"rollout_backend='vllm': {error}") from None


# --------------------------------------------------------------------------- the samplers


@dataclasses.dataclass(frozen=True)
class EngineSettings:
    """How a run's vLLM engine is set up (the vllm_* knobs and the training precision)."""

    handoff_every: int = 1
    gpu_memory: float = 0.3
    device: str = ""
    eager: bool = False
    dtype: str = "float32"

    @classmethod
    def of(cls, config: Any, mixed_precision: str = "no") -> EngineSettings:
        return cls(config.handoff_every, config.vllm_gpu_memory, config.vllm_device,
                   config.vllm_eager, ENGINE_DTYPES[mixed_precision])


class RolloutEngineError(RuntimeError):
    """The vLLM engine could not start, or its weights are not the ones promised."""


def policy_sampler(config: Any, accelerator: Accelerator,
                   model: Callable[[], torch.nn.Module], tokenizer, first_prompt: str, *,
                   weights_version: int, mixed_precision: str = "no",
                   meter: ComputeMeter | None = None,
                   log_line: Callable[[str], None] = print):
    """The sampler config.rollout_backend names (config: a stage config with the rollout
    knobs): HFSampler, or VLLMSampler, which starts the engine from the weights of step
    weights_version and checks its hand-offs on first_prompt. model() returns the live,
    unwrapped model."""
    if config.rollout_backend == "hf":
        return HFSampler(accelerator, model, tokenizer, meter)
    probe = encode_prompts(tokenizer, [first_prompt], context_length(model()), False)[0]
    return VLLMSampler(accelerator, model, tokenizer,
                       EngineSettings.of(config, mixed_precision), weights_version,
                       Path(config.output_dir), probe, meter, log_line)


class HFSampler:
    """generate on the live model; each process samples its shard with its own seed."""

    def __init__(self, accelerator: Accelerator, model: Callable[[], torch.nn.Module],
                 tokenizer, meter: ComputeMeter | None = None) -> None:
        self.accelerator, self.model, self.tokenizer, self.meter = (accelerator, model,
                                                                    tokenizer, meter)

    def sample(self, step: int, prompts: list[str], sampling: SamplingConfig) -> list[Sample]:
        """This process's shard of the step's prompts, sampled; sampling.seed is the step's
        one-process seed."""
        model = self.model()
        seed = sampling_seed(sampling.seed, self.accelerator)
        with decoding_threads(self.accelerator.device, model.num_parameters()):
            return generate_hf(model, self.tokenizer, shard(prompts, self.accelerator),
                               dataclasses.replace(sampling, seed=seed), self.meter)

    def metrics(self) -> dict[str, float]:
        return {}

    def close(self) -> None:
        pass


class VLLMSampler:
    """A vLLM engine samples every step (see the module docstring); main process only."""

    def __init__(self, accelerator: Accelerator, model: Callable[[], torch.nn.Module],
                 tokenizer, engine: EngineSettings, weights_version: int, workdir: Path,
                 probe_ids: list[int], meter: ComputeMeter | None = None,
                 log_line: Callable[[str], None] = print) -> None:
        self.accelerator, self.model, self.tokenizer = accelerator, model, tokenizer
        self.engine, self.meter, self.log_line = engine, meter, log_line
        self.probe_ids = list(probe_ids)
        self.backend = None
        self.directory: Path | None = None
        self._step_metrics: dict[str, float] = {}
        failure = None
        if accelerator.is_main_process:
            try:
                self._start(weights_version, Path(workdir))
            except Exception as error:  # every process must hear of it, or the others hang
                failure = error
        failure = _shared(accelerator, failure)
        if failure is not None:
            self.close()
            raise failure

    def _start(self, weights_version: int, workdir: Path) -> None:
        from tasks.vllm_backend import VLLMBackend, VLLMWorkerError

        model = self.model()
        self.directory = _handoff_directory(workdir, _weights_bytes(model, self.engine.dtype))
        self.tokenizer.save_pretrained(self.directory)
        self._save(model)
        engine_args, env = _placement(self.engine, self.accelerator.device)
        worker_log = workdir / "vllm-worker.log"
        started = time.perf_counter()
        try:
            self.backend = VLLMBackend(self.directory, dtype=self.engine.dtype,
                                       enforce_eager=self.engine.eager, engine_args=engine_args,
                                       weights_version=weights_version, env=env)
        except (VLLMWorkerError, FileNotFoundError) as error:
            worker_log.parent.mkdir(parents=True, exist_ok=True)
            worker_log.write_text(f"{error}\n")
            first = str(error).splitlines()[0]
            raise RolloutEngineError(f"rollout_backend='vllm': the engine did not start: "
                                     f"{first} (its log: {worker_log})") from None
        self.log_line(f"  vLLM {self.backend.vllm_version} engine ready in "
                      f"{time.perf_counter() - started:.1f} s ({self.engine.dtype}, weights of "
                      f"step {weights_version}, hand-off every {self.engine.handoff_every} "
                      f"step(s) through {self.directory})")

    def sample(self, step: int, prompts: list[str], sampling: SamplingConfig) -> list[Sample]:
        """This process's shard of the step's samples. The main process hands the weights over
        when they are handoff_every steps old, refuses older ones, and samples every prompt
        (seeds from sampling.seed); the others receive their shard."""
        payload: Any = None
        if self.accelerator.is_main_process:
            try:
                payload = self._sample_all(step, prompts, sampling)
            except Exception as error:
                payload = error
        payload = _shared(self.accelerator, payload)
        if isinstance(payload, Exception):
            raise payload
        every, self._step_metrics = payload
        positions = shard(list(range(len(prompts))), self.accelerator)
        local = {position: number for number, position in enumerate(positions)}
        return [dataclasses.replace(sample, prompt_index=local[sample.prompt_index])
                for sample in every if sample.prompt_index in local]

    def _sample_all(self, step: int, prompts: list[str], sampling: SamplingConfig
                    ) -> tuple[list[Sample], dict[str, float]]:
        metrics: dict[str, float] = {"time/handoff": 0.0}
        if step - self.backend.weights_version >= self.engine.handoff_every:
            metrics.update(self._hand_off(step))
        staleness = step - self.backend.weights_version
        if not 0 <= staleness < self.engine.handoff_every:
            raise RolloutEngineError(
                f"step {step + 1}: the vLLM engine holds the weights of step "
                f"{self.backend.weights_version}, {staleness} steps old; handoff_every="
                f"{self.engine.handoff_every} promises at most {self.engine.handoff_every - 1}. "
                "Refusing to sample from them")
        samples = self.backend.generate(prompts, sampling)
        if self.meter is not None:
            self.meter.generate(sum(len(s.prompt_ids) + len(s.response_ids) for s in samples))
        metrics.update({"rollout/weights_version": float(self.backend.weights_version),
                        "rollout/staleness": float(staleness)})
        return samples, metrics

    def _hand_off(self, step: int) -> dict[str, float]:
        """Save the live weights, load them into the engine as version step, check they
        arrived; returns the hand-off's metrics."""
        started = time.perf_counter()
        model = self.model()
        self._save(model)
        self.backend.reload(self.directory, version=step)
        seconds = time.perf_counter() - started
        gap = self._arrival_gap(model)
        if gap > ARRIVAL_TOLERANCE:
            message = (f"step {step + 1}: after the weight hand-off the vLLM engine scores the "
                       f"check sequence up to {gap:.2e} nats away from the trainer "
                       f"(tolerance {ARRIVAL_TOLERANCE:.0e} for a float32 engine)")
            if self.engine.dtype == "float32":
                raise RolloutEngineError(message + ": the new weights did not arrive")
            log.warning("%s; a %s engine rounds its weights, so this is logged, not refused",
                        message, self.engine.dtype)
        return {"time/handoff": seconds, "rollout/handoff_logprob_gap": gap}

    @torch.no_grad()
    def _arrival_gap(self, model: torch.nn.Module) -> float:
        """Largest |log p| difference between the engine and the live model on probe_ids."""
        engine = torch.tensor(self.backend.logprobs(self.probe_ids), dtype=torch.float64)
        return float((engine - trainer_logprobs(model, self.probe_ids)).abs().max())

    def _save(self, model: torch.nn.Module) -> None:
        """The live weights as safetensors in the engine's dtype, each shared tensor once (a
        tied head is the embedding: cast copies would no longer look shared to transformers,
        and the table, 0.3 GB at Qwen3-0.6B in bf16, would cross twice)."""
        dtype = getattr(torch, self.engine.dtype)
        state, seen = {}, set()
        for name, tensor in model.state_dict().items():
            if tensor.data_ptr() not in seen:
                seen.add(tensor.data_ptr())
                state[name] = tensor.detach().to(dtype)
        model.save_pretrained(self.directory, state_dict=state, safe_serialization=True)

    def metrics(self) -> dict[str, float]:
        """The last step's: engine weights version, staleness, hand-off seconds (and the check
        gap on a hand-off step). Every process returns the main process's."""
        return dict(self._step_metrics)

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


@torch.no_grad()
def trainer_logprobs(model: torch.nn.Module, token_ids: list[int]) -> torch.Tensor:
    """log p(token i | tokens before it), i >= 1, from the model in float32 (eval mode)."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        ids = torch.tensor([token_ids], device=device)
        logits = model(input_ids=ids).logits[0, :-1].double()
    finally:
        model.train(was_training)
    logprobs = torch.log_softmax(logits, dim=-1)
    return logprobs.gather(-1, ids[0, 1:, None]).squeeze(-1).cpu()


@contextlib.contextmanager
def decoding_threads(device: torch.device, parameters: int):
    """Sample a small model on a CPU with one intra-op thread, then give torch its count back.

    A decoding step multiplies a few rows (one token per sequence) by each weight. For a model
    under ONE_THREAD_DECODER parameters that is too little work to split: every operator's fork
    and join across threads costs more than it saves, and on a shared machine, where another
    process holds a core, each join waits for a descheduled thread. On the 2-core CI box beside
    other jobs the default's opd step sampled 5-26× faster on one thread; SmolLM2-135M (81M
    parameters) sampled 1.75× slower on one thread at a low load, so larger models keep torch's
    setting (docs/performance.md). Training forwards keep it too; a GPU is untouched. torch's
    thread count is per process: nothing else should compute in it while a step samples.
    """
    if device.type != "cpu" or parameters >= ONE_THREAD_DECODER or torch.get_num_threads() == 1:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _shared(accelerator: Accelerator, value: Any) -> Any:
    """The main process's value, on every process (itself with one process)."""
    if accelerator.num_processes == 1:
        return value
    return broadcast_object_list([value], from_process=0)[0]


def _placement(engine: EngineSettings, device: torch.device) -> tuple[dict, dict | None]:
    """(vLLM engine arguments, worker environment) for the training device: nothing on a CPU,
    a memory share of the training GPU when colocated, a GPU of its own otherwise."""
    if device.type != "cuda":
        return {}, None
    if engine.device:
        return ({"gpu_memory_utilization": SEPARATE_GPU_MEMORY},
                {"CUDA_VISIBLE_DEVICES": engine.device})
    index = device.index if device.index is not None else torch.cuda.current_device()
    # The training process's index counts the GPUs it sees; the worker must name the same one.
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    same_gpu = visible[index] if index < len(visible) else str(index)
    return {"gpu_memory_utilization": engine.gpu_memory}, {"CUDA_VISIBLE_DEVICES": same_gpu}


def _weights_bytes(model: torch.nn.Module, dtype: str) -> int:
    element = torch.empty((), dtype=getattr(torch, dtype)).element_size()
    return sum(p.numel() for p in model.parameters()) * element


def _handoff_directory(workdir: Path, size: int) -> Path:
    """Where the hand-off's safetensors go: shared memory (/dev/shm) when it has room for
    three copies, else the run's folder. Removed when the run ends."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and shutil.disk_usage(shm).free > 3 * size else workdir
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="vllm-weights-", dir=base))


__all__ = ["ARRIVAL_TOLERANCE", "EngineSettings", "HFSampler", "ROLLOUT_BACKENDS",
           "RolloutEngineError", "VLLMSampler", "check_rollout_backend", "decoding_threads",
           "policy_sampler", "rollout_fingerprint", "trainer_logprobs"]
