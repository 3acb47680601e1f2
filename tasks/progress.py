"""Progress of long work: a bar in a terminal, "i of N, ETA" lines in logs.

    with Progress(len(batches), "teacher rollouts", log, unit="batches") as progress:
        for batch in batches:
            ...
            progress.update(note=f"loss {loss:.3f}")

Where the output goes decides the form. With a terminal on stderr, the plain ``print`` as log
and no Prefect run around it, a tqdm bar redraws in place and one summary line is logged at the
end. Otherwise (a Prefect task's logger, a served deployment, CI, a pipe) the log gets a line at
the start, then one every ``every_s`` seconds (30 by default), and one at the end — "teacher
rollouts: 3 of 8 batches (38%), 0:12 elapsed, ETA 0:20" — so a log shows where a run is
without a line per step. A line comes every ``every_s`` even while one step takes longer than
that (a background thread says where the work is), so a log never goes quiet for more than
twice ``every_s``: a newcomer watching it decides nothing hung. Setting
``DISTILL_LAB_PROGRESS=lines`` forces lines, ``bar`` forces the bar.

The ETA divides the work left by the rate of the latest half of the elapsed time, not of all of
it: a slow start (loading a model, a first batch of long answers) stops counting once the work
runs at its own pace, and work that slows down (longer answers later) raises the ETA. Where the
chunks differ in cost (a generation batch takes as long as its longest answer) ``uneven`` says
why, and the ETA is shown as "ETA ~m:ss".

Libraries' own bars (transformers' "Loading weights", "Writing model shards", datasets'
"Generating split") say nothing a user needs and fill logs, so ``quiet_library_progress()``
switches them off; tasks.models calls it on import.
"""

from __future__ import annotations

import contextvars
import os
import sys
import threading
import time
from collections.abc import Callable

PROGRESS_ENV = "DISTILL_LAB_PROGRESS"


def _use_bar(log: Callable[[str], None], bar: bool | None) -> bool:
    choice = os.environ.get(PROGRESS_ENV, "")
    if bar is not None:
        return bar
    if choice in ("bar", "lines"):
        return choice == "bar"
    return log is print and sys.stderr.isatty() and not _in_prefect_run()


def _in_prefect_run() -> bool:
    """Inside a Prefect flow or task run: its log is what the user reads, never a terminal bar
    (a served run's stderr is the serve terminal)."""
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def duration(seconds: float) -> str:
    seconds = int(round(max(seconds, 0)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """Count work done out of total; see the module docstring for where it shows (bar: force
    the bar on or off, e.g. off for a flow's own lines among its tasks' logs; every_s: seconds
    between lines, 0 for a line per update; uneven: why the chunks differ in cost, said once and
    marking the ETA as rough)."""

    def __init__(self, total: int, what: str, log: Callable[[str], None] = print,
                 unit: str = "steps", every_s: float = 30.0, start: int = 0,
                 bar: bool | None = None, uneven: str = ""):
        self.total, self.what, self.log, self.unit = max(int(total), 0), what, log, unit
        self.every_s, self.done, self.note, self.uneven = every_s, int(start), "", uneven
        self.started = time.monotonic()
        # (time, done) at the start and at each update: the ETA's rate is read from them. A
        # resumed run's first mark is where it resumed, so only the work done now counts.
        self._marks = [(self.started, self.done)]
        self._last_line = self.started
        self._lines = 0
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._bar = self._heartbeat = None
        if _use_bar(log, bar):
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, initial=self.done, desc=what, unit=f" {unit}",
                             dynamic_ncols=True, leave=False)
            return
        self._say(self.line() + (f" (the ETA is rough: {uneven})" if uneven else ""))
        if every_s > 0:
            # In a copy of this context: a log that needs it (a Prefect run's logger) works.
            self._heartbeat = threading.Thread(target=contextvars.copy_context().run,
                                               args=(self._beat,), name=f"progress: {what}",
                                               daemon=True)
            self._heartbeat.start()

    def line(self) -> str:
        """"what: i of N units (p%), elapsed, ETA" plus the latest note."""
        now = time.monotonic()
        share = f" ({self.done / self.total:.0%})" if self.total else ""
        text = f"{self.what}: {self.done} of {self.total} {self.unit}{share}, "
        text += f"{duration(now - self.started)} elapsed"
        with self._lock:  # the heartbeat thread reads the marks that update() writes
            eta = self.eta(now)
        if eta is not None:
            text += f", ETA {'~' if self.uneven else ''}{duration(eta)}"
        return text + (f"  {self.note}" if self.note else "")

    def eta(self, now: float) -> float | None:
        """Seconds left at now: the work left over the rate since the newest mark at least half
        the elapsed time old that has less work done than now. Time spent on the chunk in
        progress counts, so a chunk that runs long raises the ETA. None before any work."""
        if not 0 < self.done < self.total:
            return None
        halfway = now - (now - self.started) / 2
        older = [mark for mark in self._marks if mark[0] <= halfway and mark[1] < self.done]
        since, done_then = older[-1] if older else self._marks[0]
        if self.done <= done_then or now <= since:
            return None
        return (self.total - self.done) * (now - since) / (self.done - done_then)

    def update(self, count: int = 1, note: str = "") -> None:
        self.done += count
        self.note = note or self.note
        if self._bar is not None:
            self._bar.update(count)
            if note:
                self._bar.set_postfix_str(note, refresh=False)
            return
        now = time.monotonic()
        with self._lock:
            self._marks.append((now, self.done))
            self._forget_old_marks(now)
        if now - self._last_line >= self.every_s and self.done < self.total:
            self._say(self.line())

    def _forget_old_marks(self, now: float) -> None:
        """Drop the marks no later ETA starts from (the halfway point only moves on); the one
        before the newest past it stays, for an ETA while a chunk runs long."""
        halfway = now - (now - self.started) / 2
        while len(self._marks) > 2 and self._marks[2][0] <= halfway:
            self._marks.pop(0)

    def _say(self, text: str) -> None:
        with self._lock:
            self._last_line = time.monotonic()
            self._lines += 1
        self.log(text)

    def _beat(self) -> None:
        """Every every_s: a line, unless one was logged since the last beat (then a log is
        never quiet for longer than twice every_s, however long one step takes)."""
        seen = self._lines
        while not self._closed.wait(self.every_s):
            if self._lines == seen:
                self._say(self.line())
            seen = self._lines

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        if self._heartbeat is not None and self._heartbeat is not threading.current_thread():
            self._heartbeat.join()
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._say(self.line())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def quiet_library_progress() -> None:
    """No transformers / huggingface_hub / datasets progress bars (they flood logs, say nothing)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # datasets reads this when it is imported, which tasks.data does only when it loads a split
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
