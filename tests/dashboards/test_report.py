"""The tradeoff report over a real SQLite MLflow and a real rollout store: tables, plots, gaps
for missing metrics, escaping, the MLflow artifact, the CLI, and a real headless browser."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from dashboards.report import attach_report, build_report, main
from tasks.store import RolloutStore, SampleRecord
from tasks.tracking import Tracker

EXPERIMENT = "report-test"
STEPS = 10
SCRIPT = "<script>alert(1)</script>"
# (cell tag, objective, prefix source, λ, curriculum, FLOPs per step, status, evaluated)
CELLS = [
    ("sft", "sft", "teacher", "0", False, 1.0e9, "FINISHED", True),
    ("dagger", "dagger", "student", "0", False, 2.0e9, "FAILED", False),
    ("teacher:0.5", "teacher:0.5", "teacher", "0.5", False, 1.2e9, "FINISHED", True),
    ("opd +curriculum", "opd", "student", "1", True, 1.5e9, "FINISHED", True),
]
# Plots: entropy and length scatters show the 2 references + 3 evaluated cells; FLOPs scatter
# the 3 evaluated cells; matched FLOPs every trained cell (dagger's train history is complete).
EXPECTED_CIRCLES = 5 + 5 + 3 + 4
EXPECTED_SVGS = 4 + 3 + 1  # 4 tradeoff scatters, 3 training curves, 1 per-benchmark bar chart
EXPECTED_TABLES = 3  # results, matched FLOPs, per benchmark


def eval_metrics(accuracy: float, length: float, entropy: float) -> dict[str, float]:
    metrics = {}
    for benchmark, shift in (("overall", 0.0), ("gsm8k", 0.05), ("math500", -0.05)):
        metrics |= {f"eval/{benchmark}/avg_at_1": accuracy + shift,
                    f"eval/{benchmark}/avg_at_4": accuracy + shift,
                    f"eval/{benchmark}/pass_at_4": min(1.0, accuracy + shift + 0.2),
                    f"eval/{benchmark}/response_length_mean": length,
                    f"eval/{benchmark}/truncation_rate": 0.02,
                    f"eval/{benchmark}/entropy": entropy}
    return metrics


def log_cell(tracker: Tracker, parent: str, cell: tuple, index: int) -> str:
    label, objective, prefix, lam, curriculum, flops_per_step, status, evaluated = cell
    run_id = tracker.start_run(EXPERIMENT, label, parent_run_id=parent, tags={
        "cell": label, "objective": objective, "prefix_source": prefix, "lambda": lam,
        "curriculum": str(curriculum).lower()})
    for step in range(1, STEPS + 1):
        cap = 32.0 if curriculum and step <= 5 else 64.0
        metrics = {"train/loss": 1.0 / step + 0.1 * index, "train/entropy": 0.5 - 0.02 * step,
                   "train/response_length": 20.0 + step, "train/total_flops": flops_per_step * step,
                   "train/max_response_length": cap}
        if curriculum and step % 5 == 0:
            metrics["curriculum/length_after"] = 64.0
        tracker.log_metrics(run_id, metrics, step=step)
    tracker.log_metrics(run_id, {"time/train_total": 30.0 + index}, step=STEPS)
    if evaluated:
        tracker.log_metrics(run_id, eval_metrics(0.3 + 0.1 * index, 40.0 + index, 0.2), STEPS)
    tracker.end_run(run_id, status=status)
    return run_id


def log_reference(tracker: Tracker, parent: str, name: str, accuracy: float) -> str:
    run_id = tracker.start_run(EXPERIMENT, name, parent_run_id=parent,
                               tags={"cell": name, "reference": "true"})
    tracker.log_metrics(run_id, eval_metrics(accuracy, 35.0, 0.1), step=0)
    tracker.end_run(run_id)
    return run_id


def store_samples(url: str, run_id: str) -> None:
    with RolloutStore(url) as store:
        store.ensure_run(run_id, "sft", "evaluate")
        store.add_prompts(run_id, [("gsm8k/1", "What is 1 + 2? <b>bold</b>", "3")])
        store.add_samples(run_id, "eval/gsm8k", STEPS, [
            SampleRecord("gsm8k/1", 0, "1 + 2 = 3 \\boxed{3}", 9, False, True, 0.2),
            SampleRecord("gsm8k/1", 1, f"{SCRIPT} \\boxed{{4}}", 12, True, False, 0.4),
        ])


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict:
    """A grid study: parent, 2 references, 4 cells (one failed without eval metrics)."""
    root = tmp_path_factory.mktemp("study")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with Tracker(uri, artifacts_dir=root) as tracker:
        parent = tracker.start_run(EXPERIMENT, "test grid", tags={"study": "grid"})
        ids = {"teacher": log_reference(tracker, parent, "teacher", 0.8),
               "student (start)": log_reference(tracker, parent, "student (start)", 0.2)}
        ids |= {cell[0]: log_cell(tracker, parent, cell, i) for i, cell in enumerate(CELLS)}
        tracker.end_run(parent)
    store_samples(f"sqlite:///{root / 'distill_lab.db'}", ids["sft"])
    page = build_report(uri, parent_run_id=parent, output=root / "out" / "report.html")
    return {"root": root, "uri": uri, "parent": parent, "ids": ids, "page": page,
            "html": page.read_text()}


def run_row(page_html: str, label: str) -> str:
    rows = re.findall(r'<tr class="run">.*?</tr>', page_html)
    return next(row for row in rows if f"</span>{label}</td>" in row)


def test_table_has_a_row_per_run_grouped(study):
    page = study["html"]
    assert page.count('<tr class="run">') == 6
    groups = re.findall(r'<tr class="group"><th colspan="\d+">([^<]+)</th>', page)
    assert groups == ["references", "grid cells", "λ mixes", "curriculum runs"]
    sft = run_row(page, "sft")
    assert "0.300" in sft and "1.00e+10" in sft and "FINISHED" in sft  # Avg@4, FLOPs


def test_plots_count_and_points(study):
    page = study["html"]
    assert page.count("<svg") == EXPECTED_SVGS
    assert page.count("<circle") == EXPECTED_CIRCLES
    assert page.count("<table") == EXPECTED_TABLES
    assert page.count('stroke-dasharray="5 3"') == 3  # one length change, on 3 curves
    assert page.count("<polygon") == 3 * 2  # two curriculum gates, on 3 curves


def test_missing_metrics_are_gaps_with_a_note(study):
    page = study["html"]
    dagger = run_row(page, "dagger")
    assert dagger.count('class="missing"') == 6  # the six eval columns; FLOPs and time logged
    assert "FAILED" in dagger
    assert re.search(r"dagger \(FAILED, run \w+\): no evaluation metrics", page)
    assert "Not plotted (no eval/overall/entropy or eval/overall/avg_at_4): dagger." in page


def test_matched_flops_uses_the_smallest_finished_budget(study):
    page = study["html"]
    assert "reaches 1e+10 (the smallest final FLOPs among finished cells)" in page
    matched = page[page.index('<table class="matched">'):]
    matched = matched[:matched.index("</table>")]
    steps = re.findall(r"</span>([^<]+)</td><td>(\d+)</td>", matched)
    assert steps == [("sft", "10"), ("dagger", "5"), ("teacher:0.5", "9"),
                     ("opd +curriculum", "7")]


def test_samples_are_escaped(study):
    page = study["html"]
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "<b>bold" not in page
    assert 'class="sample correct"' in page and 'class="sample incorrect"' in page


def test_page_is_self_contained(study):
    page = study["html"]
    assert not re.search(r"""(src|href)\s*=|@import|url\(""", page)
    assert "http://" not in page and "https://" not in page


def test_selected_runs_and_newest_grid_of_an_experiment(study, tmp_path):
    ids = study["ids"]
    selected = build_report(study["uri"], run_ids=[ids["sft"], ids["dagger"]],
                            output=tmp_path / "two.html").read_text()
    assert selected.count('<tr class="run">') == 2
    newest = build_report(study["uri"], experiment=EXPERIMENT,
                          output=tmp_path / "newest.html").read_text()
    assert study["parent"] in newest and newest.count('<tr class="run">') == 6


def test_attach_report_logs_report_html(study, tmp_path):
    attach_report(study["uri"], study["parent"], study["page"])
    with Tracker(study["uri"], artifacts_dir=study["root"]) as tracker:
        names = [a.path for a in tracker.client.list_artifacts(study["parent"])]
    assert "report.html" in names


def test_cli_writes_the_page_and_explains_errors(study, tmp_path, capsys):
    out = tmp_path / "cli.html"
    assert main(["--experiment", EXPERIMENT, "--tracking-uri", study["uri"],
                 "--output", str(out)]) == 0
    assert out.read_text().count('<tr class="run">') == 6
    assert main(["--experiment", "nope", "--tracking-uri", study["uri"],
                 "--output", str(out)]) == 2
    assert "no MLflow experiment 'nope'" in capsys.readouterr().err
    missing = f"sqlite:///{tmp_path / 'absent' / 'mlflow.db'}"
    assert main(["--experiment", EXPERIMENT, "--tracking-uri", missing]) == 2
    assert "no MLflow database" in capsys.readouterr().err
    assert not (tmp_path / "absent").exists()  # nothing created


def test_an_older_run_without_histories_or_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with Tracker(uri, artifacts_dir=tmp_path) as tracker:
        run_id = tracker.start_run("old", "old run")
        tracker.log_metrics(run_id, {"eval/overall/avg_at_1": 0.5}, step=0)
        tracker.end_run(run_id)
    page = build_report(uri, experiment="old", output=tmp_path / "r.html").read_text()
    assert page.count('<tr class="run">') == 1
    assert "no training history (train/loss)" in page
    assert "No rollout store at" in page
    assert "No trained run has a train/total_flops history." in page
    assert "No run has eval/&lt;benchmark&gt;/… metrics." in page
    assert not (tmp_path / "distill_lab.db").exists()


def log_rl_run(tracker: Tracker, source_run: str, label: str, before: float,
               after: float | None) -> str:
    """A GRPO run as rl_after_distill logs it: in its own experiment, tagged with its source,
    evaluated at step 0 and (unless it failed) at step 3."""
    run_id = tracker.start_run("rl-test", f"grpo {label}", tags={
        "cell": label, "source_run": source_run, "stage": "rl"})
    tracker.log_metrics(run_id, eval_metrics(before, 40.0, 0.30), step=0)
    for step in range(1, 4):
        tracker.log_metrics(run_id, {"rl/reward_mean": before + 0.05 * step}, step=step)
    if after is not None:
        tracker.log_metrics(run_id, eval_metrics(after, 30.0, 0.25), step=3)
    tracker.end_run(run_id, status="FINISHED" if after is not None else "FAILED")
    return run_id


def test_rl_section_shows_before_and_after_per_cell(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with Tracker(uri, artifacts_dir=tmp_path) as tracker:
        parent = tracker.start_run(EXPERIMENT, "grid", tags={"study": "grid"})
        ids = {cell[0]: log_cell(tracker, parent, cell, i)
               for i, cell in enumerate(CELLS[:1] + CELLS[2:])}
        tracker.end_run(parent)
        log_rl_run(tracker, ids["sft"], "sft", 0.30, None)  # an older, failed attempt
        newest = log_rl_run(tracker, ids["sft"], "sft", 0.30, 0.45)
        failed = log_rl_run(tracker, ids["teacher:0.5"], "teacher:0.5", 0.40, None)
    page = build_report(uri, parent_run_id=parent, output=tmp_path / "r.html").read_text()
    section = page[page.index("<h2>RL after distillation</h2>"):]
    section = section[:section.index("<h2>", 5)]
    rows = re.findall(r'<tr class="rl">.*?</tr>', section)
    assert len(rows) == 2  # the newest RL run of sft, and teacher:0.5's; opd has none
    assert newest in rows[0] and "0.300 → 0.450" in rows[0] and "(+0.150)" in rows[0]
    assert "40.0 → 30.0" in rows[0] and "<td>3</td>" in rows[0]  # length, GRPO steps
    assert failed in rows[1] and "0.400 → –" in rows[1] and "FAILED" in rows[1]
    assert section.count("<circle") == 2  # one arrow (before + after) for the evaluated run
    assert "Not plotted (not evaluated before and after): teacher:0.5." in section
    assert section.count("<polyline") == 2  # reward curves of both RL runs
    assert "sft: 2 RL runs started from it" in page


def test_a_study_without_rl_runs_says_how_to_add_them(study):
    assert "No GRPO runs start from this study" in study["html"]


# -- a real browser -----------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
OFFLINE_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--proxy-server=127.0.0.1:9", "--hide-scrollbars"]


def chromium(profile: Path, *args: str) -> str:
    done = subprocess.run([CHROMIUM, *OFFLINE_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120, check=True)
    return done.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install "
                    "-y --no-install-recommends chromium); the headless-browser test needs it")
def test_headless_chromium_renders_the_page(study, tmp_path):
    image_module = pytest.importorskip("PIL.Image", reason="Pillow (an mlflow dependency) reads "
                                       "the screenshot")
    url = study["page"].resolve().as_uri()
    dom = chromium(tmp_path / "profile", "--dump-dom", url)
    assert dom.count("<svg") == EXPECTED_SVGS
    assert dom.count("<circle") == EXPECTED_CIRCLES
    assert dom.count("<table") == EXPECTED_TABLES
    assert "<script" not in dom and "alert(1)" in dom  # shown as text, never an element
    shot = tmp_path / "report.png"
    chromium(tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,2400", url)
    with image_module.open(shot) as image:
        rgb = image.convert("RGB")
    assert rgb.size == (1280, 2400)
    total = rgb.width * rgb.height
    not_white = sum(rgb.convert("L").histogram()[:235])
    coloured = sum(rgb.convert("HSV").getchannel("S").histogram()[80:])  # plot marks, swatches
    assert not_white > 0.02 * total, "the screenshot is (nearly) blank"
    assert coloured > 2000, "no coloured plot marks in the screenshot"
    assert len(rgb.getcolors(total)) > 50
