"""Training checkpoints: written whole or not at all, checksummed, loaded without pickle code.

One layout serves distillation and GRPO (``tasks.loop`` drives both)::

    <output_dir>/
      checkpoint-000012/
        config.json, model.safetensors, tokenizer files   the student (``from_pretrained``)
        optimizer.bin, scheduler.bin, random_states_<p>.pkl   accelerate's ``save_state``
        loop_state.json       step, data cursor, curriculum, compute counters, config hash
        checksums.json        SHA-256 of every file above (written last)
      latest                  {"checkpoint": "checkpoint-000012", "sha256": <of checksums.json>}

A checkpoint is built in a hidden temporary sibling and renamed into place only when every file
and its checksum are written, so a kill at any moment leaves either the previous checkpoint or
the new one. A save the disk cannot hold removes its half-written folder and says so in one line
from the OS error, naming the checkpoint and the step the same command resumes from. Loading
verifies every checksum first; a checkpoint that fails (a flipped bit, a truncated file, a
planted file) is set aside as ``<name>.corrupt`` with a warning naming the file, and the newest
checkpoint that passes is used instead. The ``latest`` pointer is a
verified hint: a pointer that is unreadable or names a checkpoint that fails is reported and the
folder scanned, never trusted into a restart from step 0 over older checkpoints.

accelerate's own ``save_state``/``load_state`` write and read the optimizer, scheduler and
per-process RNG states, so multi-process runs checkpoint correctly; a checkpoint resumes on
another number of processes too (each process reads its own RNG file; one the checkpoint has
none for gets RNG seeded from the config hash, step and process index); its loads use
``torch.load(weights_only=True)`` with an allow-list of array types, so no pickled code runs.
The loop's own state (data cursor, curriculum) is JSON rather than accelerate's registered
custom state, whose loader unpickles arbitrary objects. The model is saved once, as the
``from_pretrained`` folder the rest of the platform reads; accelerate's copy is skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import secrets
import shutil
import traceback
from collections.abc import Callable
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import load as accelerate_load
from accelerate.utils import set_seed

from tasks.artifacts import CHECKSUMS, sha256_file, verify_checksums, write_checksums
from tasks.files import atomic_write_text, write_error

LOOP_STATE = "loop_state.json"
PROBE_BYTES = 1 << 20  # a disk that cannot take 1 MiB more cannot take a checkpoint either
LATEST = "latest"
PREFIX = "checkpoint-"


class CheckpointError(ValueError):
    """No checkpoint in a run folder can be trusted, or one belongs to another config."""


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:06d}"


# ----------------------------------------------------------------------------- writing


def save_checkpoint(accelerator: Accelerator, model, tokenizer, output_dir: Path, step: int,
                    loop_state: dict) -> Path:
    """Write checkpoint-<step> (every process takes part), then move the latest pointer.

    A write the OS refuses (a full disk) removes the half-written checkpoint, which gives its
    space back for closing the run, and raises a WriteError naming the checkpoint and the step
    the same command resumes from."""
    output_dir = Path(output_dir)
    final = output_dir / checkpoint_name(step)
    tmp = output_dir / f".{final.name}.tmp"
    try:
        _write_checkpoint(accelerator, model, tokenizer, tmp, final, step, loop_state)
    except Exception as error:
        refusal = error if isinstance(error, OSError) else _refused_write(output_dir)
        if refusal is not None:
            _close_files_of(error)
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        if refusal is None:
            raise
        newest = checkpoints(output_dir)
        resumes = checkpoint_step(newest[0]) if newest else 0
        raise write_error(refusal, f"checkpoint {final}", then="rerun the same command; it "
                          f"resumes from step {resumes}") from error
    return final


def _write_checkpoint(accelerator: Accelerator, model, tokenizer, tmp: Path, final: Path,
                      step: int, loop_state: dict) -> None:
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    with _skip_accelerate_model_copy(accelerator):
        accelerator.save_state(str(tmp), safe_serialization=True)
    # save_state has no barrier after its writes: without this one a slower process could
    # still be writing its random_states_<p>.pkl while the main process lists the checksums
    # and renames the folder (a checkpoint that then fails its checksums; seen under load).
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        atomic_write_text(tmp / LOOP_STATE, json.dumps({"step": step, **loop_state}))
        listing_sha = write_checksums(tmp)
        _fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write_pointer(final.parent, final.name, listing_sha)
    accelerator.wait_for_everyone()


def _close_files_of(error: BaseException) -> None:
    """Clear the frames of error and the errors it chains: they hold the failed save's open
    file (torch's zip writer), which, once closed, gives back the space of the half-written
    checkpoint when it is removed, rather than when the error is gone: after the run has
    tried to record its end on the same full disk."""
    while error is not None:
        traceback.clear_frames(error.__traceback__)
        error = error.__cause__ or error.__context__


def _refused_write(directory: Path) -> OSError | None:
    """The OS's own error for a write into directory now, or None if it takes one.

    torch.save, writing to a path, reports a full disk as a RuntimeError ("[enforce fail at
    inline_container.cc] unexpected pos") without the errno, and safetensors as its own error
    type; so after a failed save the same folder is asked, before the half-written checkpoint
    is removed, while the disk is as full as the save found it."""
    probe = directory / f".probe-{secrets.token_hex(4)}.tmp"
    try:
        with open(probe, "wb") as handle:
            handle.write(bytes(PROBE_BYTES))
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        return error
    finally:
        probe.unlink(missing_ok=True)
    return None


class _skip_accelerate_model_copy:
    """save_state would also write the model's weights; they are saved once by save_pretrained.
    A save-state pre-hook that empties the weights list is accelerate's documented way."""

    def __init__(self, accelerator: Accelerator):
        self.accelerator = accelerator

    def __enter__(self):
        self.handle = self.accelerator.register_save_state_pre_hook(
            lambda models, weights, output_dir: weights.clear())

    def __exit__(self, *exc_info):
        self.handle.remove()


def _fsync_tree(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def _write_pointer(output_dir: Path, name: str, listing_sha: str) -> None:
    atomic_write_text(output_dir / LATEST, json.dumps({"checkpoint": name, "sha256": listing_sha}))


# ----------------------------------------------------------------------------- reading


def checkpoint_step(checkpoint: Path) -> int:
    return int(checkpoint.name[len(PREFIX):])


def checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete-looking checkpoint folders (renamed into place), newest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir()
             if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=checkpoint_step, reverse=True)


def latest_checkpoint(output_dir: str | Path, warn: Callable[[str], None] = print,
                      set_aside: bool = False) -> Path | None:
    """The newest checkpoint whose every file matches its checksum, or None if the folder
    holds no checkpoint at all. Corrupt ones are named through warn (and, with set_aside, moved
    to ``<name>.corrupt`` so a resumed run does not write over the evidence). Raises
    CheckpointError if checkpoints exist but none can be trusted."""
    output_dir = Path(output_dir)
    _check_pointer(output_dir, warn)
    candidates = checkpoints(output_dir)
    for candidate in candidates:
        problem = verify_checksums(candidate)
        if problem is None:
            return candidate
        note = ""
        if set_aside:
            aside = candidate.with_name(candidate.name + ".corrupt")
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(candidate, aside)
            note = f"moved to {aside.name}; "
        warn(f"warning: checkpoint {candidate} is not usable: {problem}; {note}falling back to "
             "the previous checkpoint")
    if candidates:
        raise CheckpointError(
            f"{output_dir}: none of its {len(candidates)} checkpoints passes its checksums; "
            "move the folder away to start this run from step 0")
    return None


def _check_pointer(output_dir: Path, warn: Callable[[str], None]) -> None:
    """Say so when the latest pointer is unreadable or disagrees with the folder."""
    pointer = output_dir / LATEST
    if not pointer.exists():
        return
    try:
        record = json.loads(pointer.read_text())
        name, listing_sha = record["checkpoint"], record["sha256"]
        listing = output_dir / name / CHECKSUMS
        if not listing.is_file() or sha256_file(listing) != listing_sha:
            raise ValueError(f"it names {name}, whose {CHECKSUMS} is missing or differs")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        warn(f"warning: {pointer} is not a valid pointer ({error}); using the newest "
             "checkpoint that passes its checksums instead")


def read_loop_state(checkpoint: Path, fingerprint: str) -> dict:
    """The loop state of a verified checkpoint; CheckpointError if it is of another config."""
    state = json.loads((checkpoint / LOOP_STATE).read_text())
    if state.get("config_hash") != fingerprint:
        raise CheckpointError(
            f"{checkpoint.parent} holds a checkpoint of a different config (hash "
            f"{state.get('config_hash')} vs {fingerprint}); use a new output_dir or the "
            "original config to resume")
    return state


def load_checkpoint(accelerator: Accelerator, checkpoint: Path) -> None:
    """Optimizer, scheduler and RNG states from a verified checkpoint into prepared objects
    (the model's weights were loaded by from_pretrained before prepare).

    Every pickled state file is first read the way accelerate reads it (weights_only, tensors and
    arrays only), so a file that would run code is refused naming it — accelerate itself skips an
    unreadable RNG file with only an INFO line, which would make a resume silently inexact.

    The checkpoint may come from another number of processes. Optimizer and scheduler states are
    whole (not sharded) under DDP, and process p reads random_states_<p>.pkl. A process with no
    file of its own (the run now has more processes than wrote the checkpoint) is seeded from
    (config hash, step, process index): deterministic, so two such resumes agree, though not the
    RNG an uninterrupted run on that many processes would have had. Training seeds all sampling
    itself (tasks.rollout), so nothing it computes draws from this RNG today."""
    for path in sorted([*checkpoint.glob("*.bin"), *checkpoint.glob("*.pkl")]):
        try:
            accelerate_load(path, map_location="cpu")
        except pickle.UnpicklingError as error:
            raise CheckpointError(f"{path} is not plain tensor data; refused to unpickle it "
                                  f"({str(error).splitlines()[0]})") from error
    handle = accelerator.register_load_state_pre_hook(lambda models, input_dir: models.clear())
    try:
        accelerator.load_state(str(checkpoint))
    finally:
        handle.remove()
    if not (checkpoint / f"random_states_{accelerator.process_index}.pkl").is_file():
        set_seed(derived_seed(checkpoint, accelerator.process_index))


def derived_seed(checkpoint: Path, process_index: int) -> int:
    """The RNG seed of a process that checkpoint holds no RNG file for: a hash of the run's
    config hash, the checkpoint's step and the process index."""
    state = json.loads((checkpoint / LOOP_STATE).read_text())
    key = f"{state['config_hash']}/{state['step']}/{process_index}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big")
