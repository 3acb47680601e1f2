"""The user's path through the two UIs, in a real headless Chromium on loopback only.

`distill up` → `distill serve` → a typo in the objective is refused at submit → the Prefect
deployment list shows the nightly schedule → every form shows its help texts as written (the UI
renders them as Markdown) → a distill run submitted with the form's defaults plus what a user
types for the suite's tiny models (teacher, student, problem files) reaches Completed, its logs
have "i of N, ETA" progress lines and no library bars, its Prefect artifact holds the results
table and the MLflow link → that link opens the run in MLflow's training view with its metrics →
a small study (the grid form, two cells) → MLflow's compare page and a runs table with metric
columns for its cells → `distill status` → `distill down` (which also stops the serve, leaving
the schedule on).

With $DISTILL_LAB_UI_SHOTS set to a folder, the screenshots and each step's time (with the
machine's load) go there, and the nightly deployment is also run by hand for its picture:
docs/ui.md's pictures come from this test (the nightly's grouping is tested in
tests/flows/test_flows.py).
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tasks.configs import (
    BootstrapFlowConfig,
    EvaluateFlowConfig,
    ExperimentConfig,
    RLFlowConfig,
    StudyConfig,
)
from tasks.data import write_problems

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium drives the browser: "
                                "pip install 'distill-lab[dev]'")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                       reason="needs Debian's chromium and chromium-driver (apt-get install -y "
                       "--no-install-recommends chromium chromium-driver)"),
]
OFFLINE_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--proxy-server=127.0.0.1:9", "--window-size=1400,1000"]
FORMS = {"distill": ExperimentConfig, "grid": StudyConfig, "nightly-evaluate": EvaluateFlowConfig,
         "rl-after-distill": RLFlowConfig, "bootstrap": BootstrapFlowConfig}
CLI = [sys.executable, "-m", "flows.cli"]
WAIT_S = 120  # the longest any one page or deployment may take on 2 busy cores
RUN_WAIT_S = 600  # a flow run: the tiny ones take 1-2 min at load 13, a serve runs one at a time


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Path_:
    """What the test saw and how long each step took, for docs/ui.md."""

    def __init__(self, shots: Path | None):
        self.shots, self.times = shots, {}
        if shots:
            shots.mkdir(parents=True, exist_ok=True)

    def timed(self, name: str, started: float) -> None:
        self.times[name] = {"seconds": round(time.monotonic() - started, 1),
                            "load": round(os.getloadavg()[0], 1)}

    def shot(self, browser, name: str, height: int | None = None) -> None:
        if self.shots:
            if height:
                browser.set_window_size(1400, height)
            path = self.shots / f"{name}.png"
            browser.save_screenshot(str(path))
            browser.set_window_size(1400, 1000)
            _shrink(path)


def _shrink(png: Path) -> None:
    """A 64-colour palette: a third of the bytes, the UI's text as legible (for docs/)."""
    from PIL import Image

    with Image.open(png) as image:
        small = image.convert("RGB").quantize(64, method=Image.Quantize.MEDIANCUT,
                                              dither=Image.Dither.NONE)
    small.save(png, optimize=True)


def _cli(env: dict, *args: str) -> str:
    done = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _browser(tmp_path: Path):
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*OFFLINE_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def _until(predicate, what: str, timeout: float = WAIT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := predicate():
            return found
        time.sleep(0.5)
    raise AssertionError(f"waited {timeout:.0f} s for {what}")


def _text(browser, css: str) -> str:
    from selenium.webdriver.common.by import By

    return " ".join(e.text for e in browser.find_elements(By.CSS_SELECTOR, css))


class Prefect:
    """The Prefect server's REST API, as the UI calls it."""

    def __init__(self, api: str):
        self.api = api

    def post(self, path: str, body: dict | None = None):
        return self._call("POST", path, body or {})

    def get(self, path: str):
        return self._call("GET", path)

    def _call(self, method: str, path: str, body: dict | None = None):
        """One API call, retried as Prefect's own client does when the server answers 503
        (its SQLite database busy: a loaded machine) or 429, and when it does not answer in
        30 s (at load 22 a poll of a running study's state did not)."""
        for attempt in range(6):
            try:
                response = httpx.request(method, f"{self.api}{path}", json=body, timeout=30)
            except httpx.TimeoutException:
                if attempt == 5:
                    raise
                continue
            if response.status_code not in (429, 503):
                break
            time.sleep(2 ** attempt / 2)
        response.raise_for_status()
        return response.json()

    def deployments(self) -> dict[str, dict]:
        return {d["name"]: d for d in self.post("/deployments/filter")}

    def run(self, deployment: dict, config: dict) -> str:
        """Submit a run as the UI's form does: the full form's values as parameters."""
        return self.post(f"/deployments/{deployment['id']}/create_flow_run",
                         {"parameters": {"config": config}})["id"]

    def finished(self, run_id: str) -> dict:
        def ended():
            run = self.get(f"/flow_runs/{run_id}")
            return run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") and run

        return _until(ended, f"flow run {run_id}", RUN_WAIT_S)

    def logs(self, run_id: str) -> list[str]:
        return [entry["message"] for entry in self.post(
            "/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200})]

    def log_times(self, run_id: str) -> list[float]:
        """The run's log lines' times (s since the epoch), oldest first."""
        from datetime import datetime

        times = []
        while page := self.post("/logs/filter", {
                "logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC",
                "limit": 200, "offset": len(times)}):
            times += [datetime.fromisoformat(e["timestamp"]).timestamp() for e in page]
        return times

    def artifact(self, run_id: str) -> dict:
        (found,) = self.post("/artifacts/filter",
                             {"artifacts": {"flow_run_id": {"any_": [run_id]}}})
        return found


def _form_defaults(deployment: dict) -> dict:
    """What the run form shows untouched: the deployment's parameters over the schema's."""
    config = deployment["parameter_openapi_schema"]["properties"]["config"]
    return {**config.get("default", {}), **deployment["parameters"].get("config", {})}


def test_the_users_path_through_prefect_and_mlflow(tmp_path, tiny_pair, tiny_problems):
    from selenium.webdriver.common.by import By

    seen = Path_(Path(os.environ["DISTILL_LAB_UI_SHOTS"]) if os.environ.get(
        "DISTILL_LAB_UI_SHOTS") else None)
    root = tmp_path / "artifacts"
    env = {**os.environ, "DISTILL_LAB_ARTIFACTS": str(root),
           "PREFECT_HOME": str(tmp_path / "prefect-home")}
    for name in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "DISTILL_LAB_STORE_URL"):
        env.pop(name, None)
    # The flows' 2 s MLflow timeout (tasks.tracking) is for a responsive server; here the
    # servers, the flows and the browser share 2 cores with other jobs (a preflight timed out
    # at load 30).
    env["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "30"
    started = time.monotonic()
    up = _cli(env, "up", "--prefect-port", str(_free_port()), "--mlflow-port",
              str(_free_port()))
    seen.timed("distill up", started)
    (home,) = re.findall(r"MLflow UI: +(\S+)", up)  # the training view, not the GenAI home
    assert home.endswith("/#/experiments?workflowType=machine_learning"), up
    exports = dict(re.findall(r"(\w+)=(\S+)", up.split("export ", 1)[1]))
    env.update(exports)
    prefect, mlflow_ui = Prefect(exports["PREFECT_API_URL"]), exports["MLFLOW_TRACKING_URI"]
    ui = exports["PREFECT_API_URL"].removesuffix("/api")
    started = time.monotonic()
    serve = subprocess.Popen([*CLI, "serve"], env=env, stdout=open(tmp_path / "serve.log", "w"),
                             stderr=subprocess.STDOUT, start_new_session=True)
    browser = None
    try:
        deployments = _until(lambda: len(d := prefect.deployments()) == 6 and d,
                             "distill serve to register its five deployments and study-run")
        seen.timed("distill serve (deployments registered)", started)
        assert "already run" in _cli(env, "up")  # a second `up` says so and starts nothing
        # A typo in the objective is refused at submit, naming the field; no run starts.
        with pytest.raises(httpx.HTTPStatusError) as refused:
            prefect.run(deployments["distill"],
                        {**_form_defaults(deployments["distill"]), "objective": "sfft"})
        assert refused.value.response.status_code == 409
        assert "objective" in refused.value.response.text
        assert prefect.post("/flow_runs/filter", {"flow_runs": {"deployment_id": {
            "any_": [deployments["distill"]["id"]]}}}) == []

        # Runs as a user submits them from the forms: the defaults, plus what a user types for
        # the suite's tiny models (paths, and sizes for a quick try: the defaults' 512 teacher
        # rollouts alone take 3.5 min on 2 busy cores). `serve` runs one at a time, in order.
        train = write_problems(tiny_problems["train"][:32], tmp_path / "train.jsonl")
        bench = write_problems(tiny_problems["test"][:8], tmp_path / "tiny.jsonl")
        typed = {"teacher": str(tiny_pair[0]), "student": str(tiny_pair[1]),
                 "train_problems": str(train), "held_out_problems": str(train),
                 "benchmarks": [str(bench)], "train_size": 32, "steps": 8,
                 "max_new_tokens": 24, "eval_max_new_tokens": 24}
        submitted = time.monotonic()
        distill_run = prefect.run(deployments["distill"],
                                  {**_form_defaults(deployments["distill"]), **typed})
        # The study: the form's four cells and references, 2 steps each, evaluated with
        # settings other than the nightly form's (2 samples, k 2, 6 problems, not 4, 4, 50).
        study = {**_form_defaults(deployments["grid"]), **typed, "name": "ui-study",
                 "steps": 2, "batch_size": 4, "eval_n": 2, "eval_ks": [1, 2], "eval_limit": 6,
                 "evaluate_references": True, "baseline": "sft", "register_model": True,
                 "min_teacher_lead": 0}  # the suite's teacher is untrained: no lead to demand
        assert study["cells"] == ["sft", "dagger", "offline_rl", "opd"]
        grid_run = prefect.run(deployments["grid"], study)

        started = time.monotonic()
        browser = _browser(tmp_path)
        browser.get(f"{ui}/deployments")
        _until(lambda: "nightly-evaluate" in browser.page_source and "every day" in
               browser.page_source, "the deployment list")
        assert "At 02:00 AM every day" in _text(browser, "body")
        seen.shot(browser, "prefect-deployments")
        for name, model in FORMS.items():
            _check_form(browser, f"{ui}/deployments/deployment/{deployments[name]['id']}/run",
                        model, seen if name == "distill" else None)
        seen.timed("browser: the deployment list and the five forms", started)

        run = prefect.finished(distill_run)
        assert run["state"]["type"] == "COMPLETED", (run["state"], (tmp_path / "serve.log")
                                                     .read_text()[-3000:])
        seen.timed("distill run from the form (submit → Completed)", submitted)
        # The nightly deployment run by hand, untouched: it queues behind the study, then
        # evaluates each registered student (the distill run's, the study's four) with the
        # settings its own run used. Its form's benchmark ("default") is only the fallback for
        # a student without them: none here, so the embedded default is never bootstrapped.
        night_run = prefect.run(deployments["nightly-evaluate"],
                                _form_defaults(deployments["nightly-evaluate"]))
        link = _logged(prefect, distill_run, "MLflow run")  # all its logs are in by then
        logs = prefect.logs(distill_run)
        # a first run (teacher rollouts, training, evaluation) is never silent for 60 s
        stamps = prefect.log_times(distill_run)
        gaps = [later - earlier for earlier, later in zip(stamps, stamps[1:], strict=False)]
        assert len(stamps) > 10 and max(gaps) <= 60, (max(gaps), logs)
        # progress as log lines ("training sft: 8 of 8 steps (100%), 0:07 elapsed"; a longer
        # step also logs one every 30 s with its ETA), not bars; the teacher rollouts' too,
        # not only in the serve terminal
        progress = [line for line in logs
                    if re.search(r": \d+ of \d+ \w+ \(\d+%\), \d+:\d\d elapsed", line)]
        assert {line.split(":")[0].split(" on ")[0] for line in progress} >= {
            "teacher rollouts", "training sft", "evaluating sft at step 8"}, logs
        served = (tmp_path / "serve.log").read_text()
        assert "it/s]" not in served and "Loading weights" not in served  # no library bars
        # the grid run waited for the distill run: said once per wait, not every 10 s
        assert served.count("(at capacity)") <= 3, served[-3000:]
        assert link.startswith(f"{mlflow_ui}/#/experiments/") and link.endswith(
            "?workflowType=machine_learning")

        artifact = prefect.artifact(distill_run)
        browser.get(f"{ui}/artifacts/artifact/{artifact['id']}")
        _until(lambda: browser.find_elements(By.CSS_SELECTOR, "table"), "the artifact's table")
        hrefs = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "a")]
        assert link in hrefs
        assert "avg@4" in _text(browser, "table")
        seen.shot(browser, "prefect-artifact")

        browser.get(home)  # the address `distill up` printed
        _until(lambda: "Model registry" in _text(browser, "aside"), "MLflow's experiment list")
        _training_sidebar(browser)
        browser.get(link)  # the run in MLflow's training view, with its metrics
        _until(lambda: "eval/overall/avg_at_4" in _text(browser, "body"), "the MLflow run page")
        _training_sidebar(browser)
        # MLflow's Assistant opens itself on a browser's first visit to a local server, and
        # the server has no setting against it: closed once, it stays closed (docs/ui.md)
        _click(browser, "mlflow.assistant.chat_panel.close")
        body = _text(browser, "body")
        assert "train/loss" in body and "eval.n" in body and "avg_at_4" in body
        seen.shot(browser, "mlflow-run")

        # Job 3: the study from the grid form, its cells compared in MLflow.
        assert prefect.finished(grid_run)["state"]["type"] == "COMPLETED"
        seen.timed("distill run, then a 4-cell study from the grid form (submit → Completed)",
                   submitted)
        cells = {"sft", "dagger", "offline_rl", "opd"}
        browser.get(_logged(prefect, grid_run, "its runs, as a table with metric columns"))
        rows = _until(lambda: len(r := _table_rows(browser)) == 4 and r, "the cells' table")
        assert {name for name, _ in rows} == cells  # the cells, no parent row, no references
        for name, metrics in rows:  # numbers in every metric column, with no click
            assert "metrics.`avg_at_2`" in metrics, metrics
            assert all(_is_number(value) for value in metrics.values()), (name, metrics)
        _training_sidebar(browser)
        seen.shot(browser, "mlflow-study-runs")
        browser.get(_logged(prefect, grid_run, "its runs, charted side by side"))
        first = _until(lambda: _first_chart(browser), "the cells' charts")
        for axis in ("cell", "prefix_source", "kl", "avg_at_2", "entropy"):
            assert axis in first.split("\n"), first
        _training_sidebar(browser)
        seen.shot(browser, "mlflow-study-charts", height=1300)
        browser.get(_logged(prefect, grid_run, "compare them in MLflow"))
        _until(lambda: "Comparing 4 Runs" in _text(browser, "body"), "the compare page")
        axes = _until(lambda: _texts(browser, ".js-plotly-plot .axis-title"),
                      "the parallel coordinates plot")
        assert axes[:3] == ["cell", "kl", "prefix_source"], axes  # the first plot's axes
        _training_sidebar(browser)
        seen.shot(browser, "mlflow-compare", height=1600)
        browser.get(_logged(prefect, grid_run, "the report, in MLflow"))  # a link, not a path
        _until(lambda: "report.html" in _text(browser, "body"), "the report in MLflow")
        _training_sidebar(browser)
        browser.get(_logged(prefect, grid_run, "the same table with the teacher and starting "
                                               "student"))
        rows = _until(lambda: len(r := _table_rows(browser)) == 6 and r, "the table with both")
        assert {name for name, _ in rows} == cells | {"teacher", "student (start)"}
        _training_sidebar(browser)

        # The night agrees with the study: each of its students evaluated with its settings.
        assert prefect.finished(night_run)["state"]["type"] == "COMPLETED"
        seen.timed("... then the nightly evaluation by hand (submit → Completed)", submitted)
        night = _markdown_rows(prefect.artifact(night_run)["data"])
        studied = {row["model"]: row for row in night if row["model"].startswith("distill-ui-")}
        assert len(studied) == 4, night
        for row in studied.values():
            assert (row["settings"], row["problems"], row["samples"], row["k"]) == (
                "its study", "6", "2", "2"), row
            assert row["agrees"] == "=" and row["Δ"] == "+0.000", row
        browser.get(_logged(prefect, night_run, "MLflow run"))
        _until(lambda: "avg_at_2/distill-ui-study-opd" in _text(browser, "body"),
               "the night's run")
        _training_sidebar(browser)
        seen.shot(browser, "mlflow-night")

        started = time.monotonic()
        status = _cli(env, "status")
        seen.timed("distill status", started)
        assert re.search(r"Prefect: +running", status) and re.search(r"serve: +running", status)
    finally:
        if browser is not None:
            browser.quit()
        started = time.monotonic()
        down = _cli(env, "down")
        seen.timed("distill down", started)
        if serve.poll() is None:  # down did not stop it: the test fails below, clean up here
            os.killpg(serve.pid, signal.SIGKILL)
        serve.wait(timeout=60)
        if seen.shots:
            (seen.shots / "timings.json").write_text(json.dumps(seen.times, indent=2) + "\n")
    assert down.startswith("stopped distill serve")
    assert "stopped prefect" in down and "stopped mlflow" in down
    assert "Traceback" not in (tmp_path / "serve.log").read_text()


def _click(browser, component: str) -> None:
    """Click the MLflow UI's button whose data-component-id ends with component, if shown."""
    from selenium.webdriver.common.by import By

    for button in browser.find_elements(By.CSS_SELECTOR,
                                        f'button[data-component-id$="{component}"]'):
        button.click()
        time.sleep(0.5)
        return


def _training_sidebar(browser) -> None:
    """The page shows MLflow's training sidebar (runs, models), not its GenAI one (traces,
    evaluations, prompts), which the UI falls back to wherever an address lacks workflowType."""
    aside = _text(browser, "aside")
    assert "Model registry" in aside and not {"Observability", "Prompts"} & set(
        aside.split("\n")), aside


def _table_rows(browser) -> list[tuple[str, dict[str, str]]]:
    """The runs table's rows as MLflow renders them: (run name, {metric column: text})."""
    from selenium.webdriver.common.by import By

    names = {row.get_attribute("row-index"): row.text.split("\n")[-2] for row in
             browser.find_elements(By.CSS_SELECTOR, ".ag-pinned-left-cols-container .ag-row")}
    values = {row.get_attribute("row-index"): {
        cell.get_attribute("col-id"): cell.text
        for cell in row.find_elements(By.CSS_SELECTOR, ".ag-cell")
        if (cell.get_attribute("col-id") or "").startswith("metrics.")}
        for row in browser.find_elements(By.CSS_SELECTOR, ".ag-center-cols-container .ag-row")}
    return [(names[i], values[i]) for i in sorted(names)] if names.keys() == values.keys() else []


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _first_chart(browser) -> str:
    """The text of the first chart card on a runs view's chart page (its axes' names)."""
    from selenium.webdriver.common.by import By

    cards = browser.find_elements(By.CSS_SELECTOR,
                                  '[data-testid="experiment-view-compare-runs-card"]')
    return cards[0].text if cards and "entropy" in cards[0].text else ""


def _texts(browser, css: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.get_attribute("textContent") for e in browser.find_elements(By.CSS_SELECTOR, css)]


def _markdown_rows(markdown: str) -> list[dict[str, str]]:
    """The rows of the first Markdown table with a "model" column, by column name."""
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    head = next(i for i, line in enumerate(lines) if line.startswith("| model |"))
    names = [c.strip() for c in lines[head].strip("|").split("|")]
    rows = []
    for line in lines[head + 1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != len(names):
            break
        rows.append(dict(zip(names, cells, strict=True)))
    return rows


def _logged(prefect: Prefect, run_id: str, label: str) -> str:
    """The link a flow run printed as "<label>: <link>" (its logs reach the API in batches,
    shortly after the run's state)."""
    (link,) = _until(lambda: [line.split(": ", 1)[1] for line in prefect.logs(run_id)
                              if line.startswith(label + ": ")], f"{label!r} in the logs")
    return link


def _check_form(browser, url: str, model, seen: Path_ | None) -> None:
    """Every field of the form has its description, rendered exactly as written."""
    from selenium.webdriver.common.by import By

    browser.get(url)
    selector = ".schema-form-property__description"
    rendered = _until(lambda: [e.get_attribute("textContent").strip() for e in
                               browser.find_elements(By.CSS_SELECTOR, selector)],
                      f"the form at {url}")
    written = [model.__doc__.split("\n\n")[0], *(f.description
                                                  for f in model.model_fields.values())]
    assert [" ".join(t.split()) for t in rendered] == [" ".join(t.split()) for t in written]
    if seen:
        seen.shot(browser, "prefect-distill-form")
