"""Progress of long work: a bar in a terminal, "i of N, ETA" lines in logs.

    with Progress(len(batches), "teacher rollouts", log, unit="batches") as progress:
        for batch in batches:
            ...
            progress.update(note=f"loss {loss:.3f}")

Where the output goes decides the form. With a terminal on stderr and the plain ``print`` as
log, a tqdm bar redraws in place and one summary line is logged at the end. Otherwise (a
Prefect task's logger, a served deployment, CI, a pipe) the log gets a line at the start, one
every ``every_s`` seconds at most and one at the end — "teacher rollouts: 3 of 8 batches (38%),
0:12 elapsed, ETA 0:20" — so a log shows where a run is without a line per step. Setting
``DISTILL_LAB_PROGRESS=lines`` forces lines, ``bar`` forces the bar.

Libraries' own bars (transformers' "Loading weights", "Writing model shards") say nothing a
user needs and fill logs, so ``quiet_library_progress()`` switches them off; tasks.models calls
it on import.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

PROGRESS_ENV = "DISTILL_LAB_PROGRESS"


def _use_bar(log: Callable[[str], None], bar: bool | None) -> bool:
    choice = os.environ.get(PROGRESS_ENV, "")
    if bar is not None:
        return bar
    if choice in ("bar", "lines"):
        return choice == "bar"
    return log is print and sys.stderr.isatty()


def duration(seconds: float) -> str:
    seconds = int(round(max(seconds, 0)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """Count work done out of total; see the module docstring for where it shows (bar: force
    the bar on or off, e.g. off for a flow's own lines among its tasks' logs)."""

    def __init__(self, total: int, what: str, log: Callable[[str], None] = print,
                 unit: str = "steps", every_s: float = 30.0, start: int = 0,
                 bar: bool | None = None):
        self.total, self.what, self.log, self.unit = max(int(total), 0), what, log, unit
        self.every_s, self.done, self.note = every_s, int(start), ""
        self.started = time.monotonic()
        self._first = self.done  # a resumed run's ETA counts only the work done now
        self._last_line = self.started
        self._bar = None
        if _use_bar(log, bar):
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, initial=self.done, desc=what, unit=f" {unit}",
                             dynamic_ncols=True, leave=False)
        else:
            log(self.line())

    def line(self) -> str:
        """"what: i of N units (p%), elapsed, ETA" plus the latest note."""
        elapsed = time.monotonic() - self.started
        share = f" ({self.done / self.total:.0%})" if self.total else ""
        text = f"{self.what}: {self.done} of {self.total} {self.unit}{share}, "
        text += f"{duration(elapsed)} elapsed"
        rate = (self.done - self._first) / elapsed if elapsed > 0 else 0.0
        if 0 < self.done < self.total and rate > 0:
            text += f", ETA {duration((self.total - self.done) / rate)}"
        return text + (f"  {self.note}" if self.note else "")

    def update(self, count: int = 1, note: str = "") -> None:
        self.done += count
        self.note = note or self.note
        if self._bar is not None:
            self._bar.update(count)
            if note:
                self._bar.set_postfix_str(note, refresh=False)
            return
        now = time.monotonic()
        if now - self._last_line >= self.every_s and self.done < self.total:
            self._last_line = now
            self.log(self.line())

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self.log(self.line())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def quiet_library_progress() -> None:
    """No transformers / huggingface_hub progress bars (they flood logs and say nothing)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
