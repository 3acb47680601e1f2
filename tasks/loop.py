"""The skeleton every training loop here shares: resume, data cursor, checkpoints, finite guard.

Distillation (``tasks.train``) and GRPO (``tasks.rl``) differ in what one step computes; what
happens around the step is the same and lives here once:

- ``TrainingLoop(output_dir, fingerprint, ...)`` finds the newest trustworthy checkpoint of the
  same config (``tasks.checkpoints``); ``weights`` says where the model's starting weights come
  from, ``restore`` brings back optimizer, scheduler, RNG and the data cursor after
  ``accelerator.prepare``, ``end_step`` writes a checkpoint every ``checkpoint_every`` steps
  and at the last (keeping the newest three and those at ``keep_steps``, which are evaluated
  later), ``finish`` writes the final metrics.
- ``DataCursor``: a seeded pass over the problems, reshuffled per epoch from (seed, step), so a
  resumed run draws exactly the batches an uninterrupted one would.
- ``check_data``: before the first step, the problems, processes and model context can carry
  the prompts per step and the response cap the config asks for.
- ``check_finite``: a NaN/inf loss or gradient stops the run before the step is applied.

Several processes (``torchrun`` or ``accelerate launch``): every process walks the same cursor,
so each step's global batch is the same everywhere, and ``shard`` hands each process its own
part of it; ``global_sums`` turns per-process counts and sums into the run's. Only the main
process sets corrupt checkpoints aside, logs and writes ``final_metrics.json``. A checkpoint
resumes on any number of processes: the cursor, curriculum and compute counters are global, and
a process the checkpoint holds no RNG file for gets one derived from the run (see
``tasks.checkpoints.load_checkpoint``).
"""

from __future__ import annotations

import json
import math
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState

from tasks.checkpoints import (
    checkpoint_step,
    checkpoints,
    latest_checkpoint,
    load_checkpoint,
    read_loop_state,
    save_checkpoint,
)
from tasks.files import atomic_write_text


class NonFiniteError(FloatingPointError):
    """A step produced a NaN/inf loss or gradient; the last good checkpoint is kept."""


@dataclass
class DataCursor:
    """Which problems the next batch takes: a seeded order, walked and reshuffled per epoch."""

    size: int
    seed: int
    order: list[int] = field(default_factory=list)
    position: int = 0

    def __post_init__(self) -> None:
        if not self.order:
            self.order = list(range(self.size))
            random.Random(self.seed).shuffle(self.order)

    def take(self, count: int, step: int) -> list[int]:
        """The next count indices; a new epoch starts (reshuffled from seed and step) when too
        few remain."""
        if self.position + count > len(self.order):
            self.position = 0
            random.Random(f"{self.seed}/{step}").shuffle(self.order)
        indices = self.order[self.position : self.position + count]
        self.position += count
        return indices

    def state_dict(self) -> dict:
        return {"order": list(self.order), "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.order, self.position = list(state["order"]), int(state["position"])


class TrainingLoop:
    """Resume and checkpoint one run in output_dir (see the module docstring)."""

    def __init__(self, output_dir: str | Path, fingerprint: str, steps: int,
                 checkpoint_every: int, log: Callable[[str], None] = print, keep: int = 3,
                 keep_steps: tuple[int, ...] = ()):
        # The process group (Accelerator() later joins it): the main process alone moves corrupt
        # checkpoints aside and logs; the others look once it is done, and so agree with it.
        processes = PartialState(cpu=not torch.cuda.is_available())
        self.is_main = processes.is_main_process
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.fingerprint, self.steps, self.checkpoint_every = fingerprint, steps, checkpoint_every
        self.log, self.keep, self.keep_steps = (log if self.is_main else _quiet), keep, set(
            keep_steps)
        if self.is_main:
            self.checkpoint = latest_checkpoint(self.output_dir, warn=log, set_aside=True)
        processes.wait_for_everyone()
        if not self.is_main:
            self.checkpoint = latest_checkpoint(self.output_dir, warn=_quiet)
        self.state = (read_loop_state(self.checkpoint, fingerprint)
                      if self.checkpoint is not None else {})
        self.start_step = int(self.state.get("step", 0))

    @property
    def weights(self) -> Path | None:
        """The checkpoint to load the model's weights from (None: start from the base model)."""
        return self.checkpoint

    def saved(self, key: str, default=None):
        """A value end_step saved in the checkpoint being resumed (default when fresh)."""
        return self.state.get("extra", {}).get(key, default)

    def restore(self, accelerator: Accelerator, cursor: DataCursor) -> None:
        """After accelerator.prepare: optimizer, scheduler, RNG and the cursor of the checkpoint."""
        if self.checkpoint is None:
            return
        load_checkpoint(accelerator, self.checkpoint)
        cursor.load_state_dict(self.state["cursor"])
        self.log(f"resuming from {self.checkpoint} at step {self.start_step}")
        written_by = len(list(self.checkpoint.glob("random_states_*.pkl")))
        if written_by != accelerator.num_processes:
            self.log(f"  the checkpoint was written by {written_by} process(es), this run has "
                     f"{accelerator.num_processes}: same global batches; processes without an "
                     "RNG file of their own get one seeded from the config hash and step")

    def end_step(self, step: int, accelerator: Accelerator, model, tokenizer,
                 cursor: DataCursor, extra: dict) -> None:
        """Checkpoint after step (1-based) when it is due: every checkpoint_every and the last."""
        if step % self.checkpoint_every and step != self.steps and step not in self.keep_steps:
            return
        state = {"config_hash": self.fingerprint, "cursor": cursor.state_dict(), "extra": extra}
        self.checkpoint = save_checkpoint(accelerator, model, tokenizer, self.output_dir, step,
                                          state)
        if accelerator.is_main_process:  # the newest few stay: a corrupt one has a fall-back
            for old in checkpoints(self.output_dir)[self.keep:]:
                if checkpoint_step(old) not in self.keep_steps:
                    shutil.rmtree(old, ignore_errors=True)

    def finish(self, metrics: dict[str, float]) -> None:
        if self.is_main:
            atomic_write_text(self.output_dir / "final_metrics.json",
                              json.dumps(metrics, indent=2))


def _quiet(line: str) -> None:
    """The log of processes other than the main one: their lines would repeat its own."""


def shard(indices: list, accelerator: Accelerator) -> list:
    """This process's part of a step's global batch: every num_processes-th item from its
    process index. Deterministic, the parts differ in size by at most one, and their union is
    the batch one process would take."""
    if len(indices) < accelerator.num_processes:
        raise ValueError(f"a step's batch of {len(indices)} cannot give each of the "
                         f"{accelerator.num_processes} processes a share; raise the batch size "
                         "to at least the number of processes")
    return indices[accelerator.process_index :: accelerator.num_processes]


def check_data(problems: int, problems_file: str | Path, processes: int, *,
               prompts: tuple[str, int], response_cap: tuple[str, int],
               context: tuple[str, int]) -> None:
    """Refuse, before the first step, a run whose data cannot fill its steps: more prompts per
    step than problems, fewer than processes, or a response cap not below the model's context.
    prompts and response_cap are (config field, value), so that each error names the field of
    the caller's config to change; context is (the model's role, its context in tokens)."""
    prompts_field, per_step = prompts
    if per_step > problems:
        raise ValueError(f"{prompts_field}={per_step} is larger than the {problems} problems in "
                         f"{problems_file}")
    if per_step < processes:
        raise ValueError(f"{prompts_field}={per_step} is the global batch and this run has "
                         f"{processes} processes: each needs at least one prompt per step; "
                         f"raise {prompts_field} or launch fewer processes")
    cap_field, cap = response_cap
    role, limit = context
    if cap >= limit:
        raise ValueError(f"{cap_field}={cap} is not below the {role}'s context of {limit} "
                         f"tokens; lower {cap_field}")


def sampling_seed(seed: int, accelerator: Accelerator) -> int:
    """The sampling seed of this process's shard of a step whose one-process seed is seed
    (unchanged with one process, distinct per process)."""
    return seed * accelerator.num_processes + accelerator.process_index


def global_sums(accelerator: Accelerator, values: dict[str, float]) -> dict[str, float]:
    """values summed over all processes (one all-reduce, in float64 so counts stay exact)."""
    local = torch.tensor(list(values.values()), dtype=torch.float64, device=accelerator.device)
    return dict(zip(values, accelerator.reduce(local, "sum").tolist(), strict=True))


def check_finite(step: int, loss: float, grad_norm: float, checkpoint: Path | None,
                 optimizer: torch.optim.Optimizer, hint: str) -> None:
    """Raise NonFiniteError (after dropping the step's gradients) if loss or grad norm is NaN/inf.
    hint says what to try, in the caller's terms."""
    if math.isfinite(loss) and math.isfinite(grad_norm):
        return
    optimizer.zero_grad(set_to_none=True)
    raise NonFiniteError(f"step {step}: loss {loss}, grad norm {grad_norm} — not finite; the "
                         f"step was not applied and the last good checkpoint ({checkpoint}) is "
                         f"kept. {hint}")


def check_finite_weights(model: torch.nn.Module, source: str | Path) -> None:
    """Refuse weights that already hold NaN/inf (a corrupt file), naming the parameter, before
    a step blames the learning rate for them."""
    for name, parameter in model.named_parameters():
        if not torch.isfinite(parameter).all():
            raise ValueError(f"the weights loaded from {source} hold NaN/inf in {name}: the "
                             "model file is corrupt; rebuild or re-download it")
