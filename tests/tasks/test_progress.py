"""Progress: lines with "i of N" and an ETA in logs (at least one every every_s, however long
a step takes), a bar only where a terminal is, and the libraries' own bars switched off."""

import threading

import transformers

from tasks.progress import Progress, duration


def test_lines_say_how_far_and_how_long(monkeypatch):
    now = [0.0]
    monkeypatch.setattr("tasks.progress.time.monotonic", lambda: now[0])
    lines: list[str] = []
    with Progress(4, "teacher rollouts", lines.append, unit="batches", every_s=5) as progress:
        now[0] = 10.0
        progress.update(note="first")   # 1 of 4 after 10 s → ETA 30 s
        now[0] = 20.0
        progress.update(2)              # 3 of 4 after 20 s: 2 in the last 10 s → ETA 0:05
        now[0] = 40.0                   # the 4th runs long: 2 in the last 30 s → ETA 0:15
    assert lines[0] == "teacher rollouts: 0 of 4 batches (0%), 0:00 elapsed"
    assert lines[1] == "teacher rollouts: 1 of 4 batches (25%), 0:10 elapsed, ETA 0:30  first"
    assert lines[2] == "teacher rollouts: 3 of 4 batches (75%), 0:20 elapsed, ETA 0:05  first"
    assert lines[3] == "teacher rollouts: 3 of 4 batches (75%), 0:40 elapsed, ETA 0:15  first"


def test_the_eta_counts_the_work_left_at_the_recent_pace_of_uneven_chunks(monkeypatch):
    """Ten batches: four of 10 s, then the answers get longer and a batch takes 30 s. After six
    (100 s), the four left take 4 × 30 s; the rate of all 100 s (0.06 a second) would say 67 s."""
    now = [0.0]
    monkeypatch.setattr("tasks.progress.time.monotonic", lambda: now[0])
    lines: list[str] = []
    progress = Progress(10, "teacher rollouts", lines.append, unit="problems", every_s=3600,
                        uneven="a batch takes as long as its longest answer")
    for seconds in (10, 10, 10, 10, 30, 30):
        now[0] += seconds
        progress.update()
    assert progress.eta(now[0]) == 120.0
    assert "ETA ~2:00" in progress.line()  # rough, and marked so
    assert lines[0] == ("teacher rollouts: 0 of 10 problems (0%), 0:00 elapsed (the ETA is "
                        "rough: a batch takes as long as its longest answer)")
    now[0] += 45.0  # the seventh runs long: the ETA grows instead of standing still
    assert progress.eta(now[0]) > 120.0
    progress.close()


def test_a_line_comes_every_every_s_while_a_step_runs_long():
    """No update for a while (one batch of long answers): the log still hears every every_s."""
    lines: list[str] = []
    three = threading.Event()

    def log(line: str) -> None:
        lines.append(line)
        if len(lines) >= 3:
            three.set()

    with Progress(8, "teacher rollouts", log, unit="problems", every_s=0.05):
        assert three.wait(timeout=10), lines  # the start line, then two heartbeats
    assert all(line.startswith("teacher rollouts: 0 of 8 problems") for line in lines)
    # closed: its heartbeat has ended with it
    assert "progress: teacher rollouts" not in [t.name for t in threading.enumerate()]


def test_lines_are_rate_limited_and_a_resumed_run_counts_from_where_it_was():
    lines: list[str] = []
    progress = Progress(100, "training opd", lines.append, start=40, every_s=3600)
    for _ in range(60):
        progress.update()
    progress.close()
    assert len(lines) == 2  # start and end only: no line per step in a log
    assert lines[0].startswith("training opd: 40 of 100 steps (40%)")
    assert lines[1].startswith("training opd: 100 of 100 steps (100%)")


def test_a_bar_logs_only_its_summary(capsys):
    lines: list[str] = []
    with Progress(3, "sft", lines.append, bar=True) as progress:
        for _ in range(3):
            progress.update()
    assert len(lines) == 1 and lines[0].startswith("sft: 3 of 3 steps (100%)")


def test_durations_read_as_clock_times():
    assert duration(5) == "0:05" and duration(125) == "2:05" and duration(3725) == "1:02:05"


def test_transformers_bars_are_off_once_models_is_imported():
    import tasks.models  # noqa: F401

    assert not transformers.utils.logging.is_progress_bar_enabled()
