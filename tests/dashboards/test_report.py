"""The tradeoff report over a real SQLite MLflow and a real rollout store: tables, plots, gaps
for missing metrics, escaping, the MLflow artifact, the CLI, and a real headless browser."""

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from dashboards.report import attach_report, build_report, main
from tasks.stats import problem_values
from tasks.store import RolloutStore, SampleRecord
from tasks.study import EvalSample
from tasks.tracking import Tracker

pytestmark = pytest.mark.slow  # its fixture logs a study to a fresh MLflow database

EXPERIMENT = "report-test"
STEPS = 10
SCRIPT = "<script>alert(1)</script>"
BENCHMARKS = ("gsm8k", "math500")
PROBLEMS, SAMPLES = 20, 4  # per benchmark, in the store
# (cell tag, objective, prefix source, λ, curriculum, FLOPs per step, status, evaluated, in store)
CELLS = [
    ("sft", "sft", "teacher", "0", False, 1.0e9, "FINISHED", True, True),
    ("dagger", "dagger", "student", "0", False, 2.0e9, "FAILED", False, False),
    ("teacher:0.5", "teacher:0.5", "teacher", "0.5", False, 1.2e9, "FINISHED", True, True),
    ("opd +curriculum", "opd", "student", "1", True, 1.5e9, "FINISHED", True, False),
]
# References: the teacher (no store rows) and the starting student (store rows: the baseline).
# Marks (SVG groups with a class and a <title>), all cells single-seed:
#   points: differences 3 panels (Avg@k, greedy, entropy) × 2 cells with rows; entropy and
#   length scatters 2 references + 3 evaluated cells each; FLOPs scatter 3 evaluated trained
#   cells; Avg@k against FLOPs: the 2 trained cells with store rows, one evaluated step each;
#   intervals: (x and y) × 3 cells with rows on 2 scatters, y × 2 on FLOPs, y × 2 on Avg@k
#   against FLOPs, 6 in the forest plot, 2 benchmarks × 3 cells with rows on the bars.
EXPECTED_POINTS = 3 * 2 + 5 + 5 + 3 + 2
EXPECTED_INTERVALS = 2 * 3 * 2 + 2 + 2 + 6 + 2 * 3
EXPECTED_SVGS = 1 + 4 + 3 + 1  # differences, 4 tradeoff plots, 3 training curves, 1 bar chart
EXPECTED_TABLES = 4  # results, paired differences, matched FLOPs, per benchmark


def synthetic_metrics(accuracy: float, length: float, entropy: float) -> dict[str, float]:
    """Evaluation metrics of a run that has no rows in the store."""
    metrics = {}
    for benchmark, shift in (("overall", 0.0), ("gsm8k", 0.05), ("math500", -0.05)):
        metrics |= {f"eval/{benchmark}/avg_at_1": accuracy + shift,
                    f"eval/{benchmark}/avg_at_4": accuracy + shift,
                    f"eval/{benchmark}/pass_at_4": min(1.0, accuracy + shift + 0.2),
                    f"eval/{benchmark}/response_length_mean": length,
                    f"eval/{benchmark}/greedy_accuracy": accuracy + shift + 0.1,
                    f"eval/{benchmark}/truncation_rate": 0.02,
                    f"eval/{benchmark}/entropy": entropy} | gold_nll(benchmark, accuracy)
    return metrics


def gold_nll(benchmark: str, accuracy: float) -> dict[str, float]:
    """The gold-solution NLL a run logs (no per-problem rows anywhere)."""
    return {f"eval/{benchmark}/gold_nll_digits": 1.0 - accuracy,
            f"eval/{benchmark}/gold_nll_other": 2.0}


def stored_evaluation(url: str, run_id: str, accuracy: float, length: float, step: int,
                      seed: int = 0) -> dict[str, float]:
    """Graded samples of a run in the store (problems drawn around accuracy) with one greedy
    response per problem, and the metrics tasks.evaluate would log for exactly these rows."""
    rng = np.random.default_rng(seed * 1000 + int(accuracy * 100))
    samples = {b: [EvalSample(b, f"{b}/{i}", j, bool(rng.random() < accuracy),
                              int(length + rng.integers(-5, 6)), bool(rng.random() < 0.05),
                              float(rng.uniform(0.1, 0.4)), step)
                   for i in range(PROBLEMS) for j in range(SAMPLES)] for b in BENCHMARKS}
    greedy = {b: [EvalSample(b, f"{b}/{i}", 0, bool(rng.random() < accuracy + 0.1), 30, False,
                             None, step) for i in range(PROBLEMS)] for b in BENCHMARKS}
    with RolloutStore(url) as store:
        store.ensure_run(run_id, run_id, "evaluate")
        for benchmark, rows in samples.items():
            store.add_prompts(run_id, [(f"{benchmark}/{i}", f"What is {i} + 1? <b>bold</b>",
                                        str(i + 1)) for i in range(PROBLEMS)])
            store.add_samples(run_id, f"eval/{benchmark}", step, [
                SampleRecord(s.problem_id, s.sample_index,
                             f"{SCRIPT} \\boxed{{{s.sample_index}}}" if i == 0 else "\\boxed{1}",
                             s.length, s.truncated, s.correct, s.entropy)
                for i, s in enumerate(rows)])
            store.add_samples(run_id, f"eval_greedy/{benchmark}", step, [
                SampleRecord(s.problem_id, 0, "\\boxed{1}", s.length, s.truncated, s.correct)
                for s in greedy[benchmark]])
    metrics = {}
    for benchmark, rows in (*samples.items(), ("overall", sum(samples.values(), []))):
        for name, k in (("avg_at_k", 1), ("avg_at_k", 4), ("pass_at_k", 4),
                        ("response_length_mean", 1), ("truncation_rate", 1), ("entropy", 1)):
            values = problem_values({0: rows}, name, k)
            metrics[f"eval/{benchmark}/{values.metric}"] = values.estimate
        greedy_rows = greedy.get(benchmark) or sum(greedy.values(), [])
        metrics[f"eval/{benchmark}/greedy_accuracy"] = problem_values(
            {0: greedy_rows}, "greedy_accuracy").estimate
        metrics |= gold_nll(benchmark, accuracy)
    return metrics


def log_cell(tracker: Tracker, parent: str | None, cell: tuple, index: int, store_url: str,
             experiment: str = EXPERIMENT, seed: int | None = None) -> str:
    label, objective, prefix, lam, curriculum, flops_per_step, status, evaluated, stored = cell
    tags = {"cell": label, "objective": objective, "prefix_source": prefix, "lambda": lam,
            "curriculum": str(curriculum).lower()} | ({"seed": seed} if seed is not None else {})
    run_id = tracker.start_run(experiment, label, parent_run_id=parent, tags=tags)
    for step in range(1, STEPS + 1):
        cap = 32.0 if curriculum and step <= 5 else 64.0
        metrics = {"train/loss": 1.0 / step + 0.1 * index, "train/entropy": 0.5 - 0.02 * step,
                   "train/response_length": 20.0 + step, "train/total_flops": flops_per_step * step,
                   "train/max_response_length": cap}
        if curriculum and step % 5 == 0:
            metrics["curriculum/length_after"] = 64.0
        tracker.log_metrics(run_id, metrics, step=step)
    tracker.log_metrics(run_id, {"time/train_total": 30.0 + index}, step=STEPS)
    accuracy = 0.3 + 0.1 * index
    if stored:
        tracker.log_metrics(run_id, stored_evaluation(store_url, run_id, accuracy, 40 + index,
                                                      STEPS, seed or 0), STEPS)
    elif evaluated:
        tracker.log_metrics(run_id, synthetic_metrics(accuracy, 40.0 + index, 0.2), STEPS)
    tracker.end_run(run_id, status=status)
    return run_id


def log_reference(tracker: Tracker, parent: str, name: str, accuracy: float,
                  store_url: str | None) -> str:
    run_id = tracker.start_run(EXPERIMENT, name, parent_run_id=parent,
                               tags={"cell": name, "reference": "true"})
    metrics = (stored_evaluation(store_url, run_id, accuracy, 35, 0) if store_url
               else synthetic_metrics(accuracy, 35.0, 0.1))
    tracker.log_metrics(run_id, metrics, step=0)
    tracker.end_run(run_id)
    return run_id


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict:
    """A grid study: parent, 2 references, 4 cells (one failed without eval metrics); the
    starting student, sft and teacher:0.5 have their samples in the store."""
    root = tmp_path_factory.mktemp("study")
    uri, store = f"sqlite:///{root / 'mlflow.db'}", f"sqlite:///{root / 'distill_lab.db'}"
    with Tracker(uri, artifacts_dir=root) as tracker:
        parent = tracker.start_run(EXPERIMENT, "test grid", tags={"study": "grid"})
        ids = {"teacher": log_reference(tracker, parent, "teacher", 0.8, None),
               "student (start)": log_reference(tracker, parent, "student (start)", 0.2, store)}
        ids |= {cell[0]: log_cell(tracker, parent, cell, i, store)
                for i, cell in enumerate(CELLS)}
        tracker.end_run(parent)
        metrics = {name: tracker.run_metrics(run_id) for name, run_id in ids.items()}
    page = build_report(uri, parent_run_id=parent, output=root / "out" / "report.html")
    return {"root": root, "uri": uri, "store": store, "parent": parent, "ids": ids,
            "page": page, "html": page.read_text(), "metrics": metrics}


def marks(page_html: str, kind: str) -> int:
    return page_html.count(f'class="{kind}"><title>')


def run_row(page_html: str, label: str) -> str:
    rows = re.findall(r'<tr class="run">.*?</tr>', page_html)
    return next(row for row in rows if f"</span>{label}</td>" in row)


def test_table_has_a_row_per_run_grouped(study):
    page = study["html"]
    assert page.count('<tr class="run">') == 6
    groups = re.findall(r'<tr class="group"><th colspan="\d+">([^<]+)</th>', page)
    assert groups == ["references", "grid cells", "λ mixes", "curriculum runs"]
    sft = run_row(page, "sft")
    avg = format(study["metrics"]["sft"]["eval/overall/avg_at_4"], ".3f")
    assert f"<td>{avg}<br><span class=\"ci\">[" in sft  # Avg@4 with its interval
    greedy = format(study["metrics"]["sft"]["eval/overall/greedy_accuracy"], ".3f")
    assert f"<td>{greedy}<br><span class=\"ci\">[" in sft  # greedy accuracy with its interval
    assert sft.count('class="ci"') == 2
    gold = format(study["metrics"]["sft"]["eval/overall/gold_nll_digits"], ".3f")
    assert f"<td>{gold}</td><td>2.000</td>" in sft  # gold NLL, digits and other
    assert "sharpening alone cannot raise it" in page and "learning lowers the first" in page
    assert "the store's samples give" not in page  # the greedy rows give the logged number
    assert "1.00e+10" in sft and "FINISHED" in sft  # FLOPs
    assert run_row(page, "opd +curriculum").count('class="ci"') == 0  # no rows: no interval


def test_plots_count_and_points(study):
    page = study["html"]
    assert page.count("<svg") == EXPECTED_SVGS
    assert marks(page, "point") == EXPECTED_POINTS
    assert marks(page, "interval") == EXPECTED_INTERVALS
    assert marks(page, "line") == 3 * 4 + 2  # 3 training curves × 4 trained runs, 2 Avg@k/FLOPs
    assert marks(page, "marker") == 3 * (1 + 2)  # a length change and two gates, on 3 curves
    assert marks(page, "bar") == 2 * 5  # 2 benchmarks × 5 evaluated cells
    assert page.count("<table") == EXPECTED_TABLES
    assert re.search(r'<title>sft \(1 run: \w{8}\): avg@4 [\d.]+ \[[\d.]+, [\d.]+\], token', page)
    assert "No interval (no per-problem rows in the store): teacher, opd +curriculum." in page


def test_paired_differences_against_the_starting_student(study):
    page = study["html"]
    rows = re.findall(r'<tr class="difference">.*?</tr>', page)
    assert [re.search(r"</span>([^<]+)</td>", row)[1] for row in rows] == [
        "teacher", "sft", "dagger", "teacher:0.5", "opd +curriculum"]
    metrics = study["metrics"]
    delta = (metrics["sft"]["eval/overall/avg_at_4"]
             - metrics["student (start)"]["eval/overall/avg_at_4"])
    assert f">{delta:+.3f}<br>" in rows[1]  # the paired difference of the same numbers
    assert rows[1].count('class="ci"') == 6 and rows[0].count('class="missing"') == 6
    greedy = (metrics["sft"]["eval/overall/greedy_accuracy"]
              - metrics["student (start)"]["eval/overall/greedy_accuracy"])
    assert f">{greedy:+.3f}<br>" in rows[1]  # Δ greedy from the greedy responses alone
    assert "<th>Δ greedy</th>" in page
    assert "This table makes 30 comparisons at 95 % each" in page
    assert "No paired rows in the store (no interval): teacher, dagger, opd +curriculum." in page


def test_missing_metrics_are_gaps_with_a_note(study):
    page = study["html"]
    dagger = run_row(page, "dagger")
    assert dagger.count('class="missing"') == 9  # the nine eval columns; FLOPs, time logged
    assert "FAILED" in dagger
    assert re.search(r"dagger \(FAILED, run \w+\): no evaluation metrics", page)
    assert "Not plotted (no eval/overall/entropy or eval/overall/avg_at_4): dagger." in page


def test_matched_flops_compare_evaluated_cells_within_the_smallest_budget(study):
    page = study["html"]
    assert "At matched FLOPs (budget 1e+10: the smallest final spend of any cell)" in page
    matched = page[page.index('<table class="matched">'):]
    matched = matched[:matched.index("</table>")]
    rows = re.findall(r"</span>([^<]+)</td><td[^>]*>([^<]+)</td>", matched)
    # sft spent 1e10 by its evaluated step 10; teacher:0.5 was evaluated only after 1.2e10
    assert rows == [("sft", "10"), ("teacher:0.5", "–")]


def test_samples_are_escaped(study):
    page = study["html"]
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "<b>bold" not in page
    assert 'class="sample correct"' in page and 'class="sample incorrect"' in page


def test_page_is_self_contained(study):
    page = study["html"]
    assert not re.search(r"""src\s*=|href\s*=\s*["'][^#]|@import|url\([^#]""", page)
    assert "http://" not in page and "https://" not in page
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids)), "SVG ids repeat across figures"


def test_selected_runs_and_newest_grid_of_an_experiment(study, tmp_path):
    ids = study["ids"]
    selected = build_report(study["uri"], run_ids=[ids["sft"], ids["dagger"]],
                            output=tmp_path / "two.html").read_text()
    assert selected.count('<tr class="run">') == 2
    newest = build_report(study["uri"], experiment=EXPERIMENT,
                          output=tmp_path / "newest.html").read_text()
    assert study["parent"] in newest and newest.count('<tr class="run">') == 6


def test_attach_logs_the_page_and_every_figure(study, tmp_path):
    attach_report(study["uri"], study["parent"], study["page"])
    with Tracker(study["uri"], artifacts_dir=study["root"]) as tracker:
        names = [a.path for a in tracker.client.list_artifacts(study["parent"])]
        assert "report.html" in names and "report" not in names
        build_report(study["uri"], parent_run_id=study["parent"], output=tmp_path / "r.html",
                     attach=True)
        figures = [a.path for a in tracker.client.list_artifacts(study["parent"], "report")]
    assert len(figures) == EXPECTED_SVGS and "report/avg_vs_entropy.png" in figures
    with pytest.raises(ValueError, match="--attach needs a grid run"):
        build_report(study["uri"], run_ids=[study["ids"]["sft"]], output=tmp_path / "x.html",
                     attach=True)


def test_another_baseline_can_be_named(study, tmp_path):
    page = build_report(study["uri"], parent_run_id=study["parent"], baseline="sft",
                        output=tmp_path / "b.html").read_text()
    assert "Each cell minus <b>sft</b>" in page
    with pytest.raises(ValueError, match="baseline 'nope' is not a cell.*teacher, student"):
        build_report(study["uri"], parent_run_id=study["parent"], baseline="nope",
                     output=tmp_path / "n.html")


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
    assert "No rollout store at" in page and "no intervals" in page
    assert "No trained cell has evaluations with a FLOPs history." in page
    assert "One benchmark: its numbers are the results table" in page
    assert not (tmp_path / "distill_lab.db").exists()


def log_rl_run(tracker: Tracker, source_run: str, label: str, before: float,
               after: float | None, store_url: str | None = None) -> tuple[str, dict]:
    """A GRPO run as rl_after_distill logs it: in its own experiment, tagged with its source,
    evaluated at step 0 and (unless it failed) at step 3; with a store, from stored samples."""
    run_id = tracker.start_run("rl-test", f"grpo {label}", tags={
        "cell": label, "source_run": source_run, "stage": "rl"})
    evaluations = {0: before} | ({3: after} if after is not None else {})
    logged = {}
    for step, accuracy in evaluations.items():
        logged[step] = (stored_evaluation(store_url, run_id, accuracy, 40 - 3 * step, step)
                        if store_url else synthetic_metrics(accuracy, 40 - 10 * step / 3, 0.3))
        tracker.log_metrics(run_id, logged[step], step=step)
    for step in range(1, 4):
        tracker.log_metrics(run_id, {"rl/reward_mean": before + 0.05 * step}, step=step)
    tracker.end_run(run_id, status="FINISHED" if after is not None else "FAILED")
    return run_id, logged


def test_rl_section_shows_before_and_after_per_cell(study, tmp_path):
    with Tracker(study["uri"], artifacts_dir=study["root"]) as tracker:
        parent = tracker.start_run("rl-grid", "grid", tags={"study": "grid"})
        ids = {cell[0]: log_cell(tracker, parent, cell, i, study["store"], "rl-grid")
               for i, cell in enumerate(CELLS[:1] + CELLS[2:])}
        tracker.end_run(parent)
        log_rl_run(tracker, ids["sft"], "sft", 0.30, None)  # an older, failed attempt
        newest, logged = log_rl_run(tracker, ids["sft"], "sft", 0.30, 0.6, study["store"])
        failed, _ = log_rl_run(tracker, ids["teacher:0.5"], "teacher:0.5", 0.40, None)
    page = build_report(study["uri"], parent_run_id=parent,
                        output=tmp_path / "r.html").read_text()
    section = page[page.index("<h2>RL after distillation</h2>"):]
    section = section[:section.index("<h2>", 5)]
    rows = re.findall(r'<tr class="rl">.*?</tr>', section)
    assert len(rows) == 2  # the newest RL run of sft, and teacher:0.5's; opd has none
    before, after = (logged[s]["eval/overall/avg_at_4"] for s in (0, 3))
    assert newest in rows[0] and f"{before:.3f} → {after:.3f}" in rows[0]
    assert f"({after - before:+.3f})" in rows[0] and "<td>3</td>" in rows[0]  # GRPO steps
    assert f'class="above" title="the interval above 0">{after - before:+.3f}<br>' in rows[0]
    assert failed in rows[1] and "0.400 → –" in rows[1] and "FAILED" in rows[1]
    assert rows[1].count('class="missing"') == 2  # no GRPO steps, no Δ without an "after"
    assert marks(section, "point") == 2  # one arrow (before + after) for the evaluated run
    assert marks(section, "interval") == 2 * 2  # entropy and Avg@4 intervals at both ends
    assert "Not plotted (not evaluated before and after): teacher:0.5." in section
    assert marks(section, "line") == 2  # reward curves of both RL runs
    assert "sft: 2 RL runs started from it" in page


def test_seeds_pool_into_one_interval_per_cell(study, tmp_path):
    with Tracker(study["uri"], artifacts_dir=study["root"]) as tracker:
        parent = tracker.start_run("seeds", "grid", tags={"study": "grid"})
        for seed in (0, 1, 2):
            log_cell(tracker, parent, CELLS[0], 0, study["store"], "seeds", seed)
        for seed in (0, 1):
            log_cell(tracker, parent, CELLS[2], 2, study["store"], "seeds", seed)
        tracker.end_run(parent)
    page = build_report(study["uri"], experiment="seeds", output=tmp_path / "s.html").read_text()
    assert [re.search(r"<td>(\d+)</td>", row)[1] for row in
            re.findall(r'<tr class="run">.*?</tr>', page)] == ["0", "1", "2", "0", "1"]
    assert marks(page, "seed-point") == 3 * 5  # every run on the three tradeoff scatters
    assert "training seeds 0, 1, 2" in page
    (row,) = re.findall(r'<tr class="difference">.*?</tr>', page)  # teacher:0.5 − sft
    assert "Each cell minus <b>sft</b>" in page and "<td>2</td>" in row


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
    assert marks(dom, "point") == EXPECTED_POINTS  # every mark still carries its hover title
    assert marks(dom, "interval") == EXPECTED_INTERVALS
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
