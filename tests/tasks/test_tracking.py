"""tasks.tracking against a real MLflow: a SQLite store in tmp_path, and for the outage test a
real `mlflow server` subprocess that is killed and restarted mid-run."""

import contextlib
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tasks.tracking import (
    SHARED_VIEW_TAG,
    RunsCharts,
    Tracker,
    default_tracking_uri,
    flatten_config,
    git_sha,
    is_path_value,
)


@pytest.fixture(scope="module")
def tracker(tmp_path_factory) -> Tracker:
    """One SQLite-backed tracker for the module (creating MLflow's tables takes seconds)."""
    root = tmp_path_factory.mktemp("tracking")
    return Tracker(f"sqlite:///{root / 'mlflow.db'}", artifacts_dir=root)


@dataclass(frozen=True)
class Optim:
    lr: float = 1e-3
    betas: tuple = (0.9, 0.95)


@dataclass(frozen=True)
class Experiment:
    objective: str = "opd"
    optim: Optim = field(default_factory=Optim)


def test_default_uri_is_sqlite_beside_artifacts_unless_env_says(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert default_tracking_uri(tmp_path) == "http://mlflow.example:5000"


@pytest.mark.slow
def test_experiment_artifacts_sit_beside_the_sqlite_database(tracker):
    run_id = tracker.start_run("artifact-location", "r", {})
    artifact_uri = tracker.client.get_run(run_id).info.artifact_uri
    assert artifact_uri.startswith((tracker.artifacts_dir / "mlflow-artifacts").as_uri())


def test_params_are_flattened_and_logged_once(tracker, caplog):
    run_id = tracker.start_run("params", "once", {})
    config = {"experiment": Experiment(), "note": "x" * 7000}
    assert flatten_config(Experiment()) == {
        "objective": "opd", "optim.lr": "0.001", "optim.betas": "[0.9,0.95]"}
    with caplog.at_level(logging.WARNING, logger="tasks.tracking"):
        tracker.log_params(run_id, config)
    assert "over MLflow's limit" in caplog.text
    params = tracker.run_params(run_id)
    assert params["experiment.optim.lr"] == "0.001"
    assert params["experiment.optim.betas"] == "[0.9,0.95]"
    assert len(params["note"]) == 6000 and params["note"].endswith("[truncated 7000 chars to 6000]")

    tracker.log_params(run_id, config)  # same values again: a no-op
    with pytest.raises(ValueError, match=r"experiment\.objective: logged 'opd', now 'sft'"):
        tracker.log_params(run_id, {"experiment": Experiment(objective="sft")})


def test_paths_are_logged_as_tags_and_read_back_with_the_params(tracker):
    """MLflow's compare page plots the first differing params by name: a folder must not be
    one of them (it was: eval.model and train.artifacts_root won over the cells' objectives)."""
    run_id = tracker.start_run("params", "paths", {})
    tracker.log_params(run_id, {"cell": "opd", "train": {
        "output_dir": "/runs/opd/train", "student": "./models/student", "steps": 2,
        "benchmarks": ["/data/test.jsonl"], "template": "boxed"}})
    params = tracker.client.get_run(run_id).data.params
    assert params == {"cell": "opd", "train.steps": "2", "train.template": "boxed"}
    tags = tracker.run_tags(run_id)
    assert tags["train.output_dir"] == "/runs/opd/train"
    assert tags["train.benchmarks"] == '["/data/test.jsonl"]'
    assert tracker.run_params(run_id)["train.student"] == "./models/student"
    assert not is_path_value('["default"]') and not is_path_value("<the trained student>")


def test_the_cells_view_filters_sorts_and_charts_them(tracker):
    """The saved view of a study's cells: only children tagged role=cell, sorted by Avg@k
    (which also lists them as rows of their own instead of nested under their parent), the
    identity params as columns, and the charts section ahead of MLflow's own."""
    parent = tracker.start_run("views", "study", {})
    cells = [tracker.start_run("views", cell, {"cell": cell, "role": "cell"}, parent)
             for cell in ("sft", "opd")]
    tracker.start_run("views", "teacher", {"cell": "teacher", "role": "reference"}, parent)
    assert [c.run_id for c in tracker.child_runs(parent, role="cell")] == cells
    key = tracker.save_runs_view(parent, ["avg_at_4", "entropy"], param_keys=("cell", "kl"),
                                 role="cell", order_by="avg_at_4",
                                 charts=RunsCharts("Cells", ("cell", "kl"),
                                                   ["avg_at_4", "entropy"]))
    experiment = tracker.client.get_run(parent).info.experiment_id
    state = json.loads(tracker.client.get_experiment(experiment).tags[SHARED_VIEW_TAG + key])
    assert state["searchFilter"] == (f"tags.`mlflow.parentRunId` = '{parent}' and "
                                     "tags.`role` = 'cell'")
    assert (state["orderByKey"], state["orderByAsc"]) == ("metrics.`avg_at_4`", False)
    assert state["selectedColumns"][:3] == ["params.`cell`", "params.`kl`", "metrics.`avg_at_4`"]
    parallel, *bars = state["compareRunCharts"]
    assert (parallel["type"], parallel["selectedParams"], parallel["selectedMetrics"]) == (
        "PARALLEL", ["cell", "kl"], ["avg_at_4", "entropy"])
    assert [b["metricKey"] for b in bars] == ["avg_at_4", "entropy"]
    assert {c["metricSectionId"] for c in state["compareRunCharts"]} <= {
        s["uuid"] for s in state["compareRunSections"]}
    link = tracker.runs_view_link(parent, key, charts=True)
    assert link.endswith(f"viewStateShareKey={key}&compareRunsMode=CHART&"
                         "workflowType=machine_learning")


def test_headline_metrics_are_logged_at_the_top_level(tracker):
    run_id = tracker.start_run("metrics", "headline", {})
    tracker.log_metrics(run_id, {"avg_at_4": 0.5, "greedy": 0.25}, step=0)
    assert tracker.run_metrics(run_id) == {"avg_at_4": 0.5, "greedy": 0.25}


def test_metrics_are_read_back_by_step(tracker, caplog):
    run_id = tracker.start_run("metrics", "steps", {})
    length_key = "eval/default/response_length_mean"
    for step in range(3):
        tracker.log_metrics(run_id, {"train/loss": 1.0 / (step + 1), length_key: 10.0 * step},
                            step=step)
    with caplog.at_level(logging.WARNING, logger="tasks.tracking"):
        tracker.log_metrics(run_id, {"train/entropy": float("nan")}, step=3)
        tracker.log_metrics(run_id, {"train/entropy": float("inf")}, step=4)
    assert caplog.text.count("not logged") == 1
    assert tracker.nonfinite_skipped["train/entropy"] == 2

    assert tracker.metric_history(run_id, "train/loss") == [(0, 1.0), (1, 0.5), (2, 1 / 3)]
    assert tracker.metric_history(run_id, length_key) == [(0, 0.0), (1, 10.0), (2, 20.0)]
    assert tracker.run_metrics(run_id) == {"train/loss": 1 / 3, length_key: 20.0}
    with pytest.raises(ValueError, match="name it 'stage/name'"):
        tracker.log_metrics(run_id, {"loss": 1.0}, step=5)
    with pytest.raises(ValueError, match="not valid in MLflow"):  # "$" alone took the newline
        tracker.log_metrics(run_id, {"train/loss\n": 1.0}, step=5)


def test_parent_and_child_runs_with_tags(tracker):
    parent = tracker.start_run("grid", "study", {"study": "kl-grid"})
    children = [tracker.start_run("grid", cell, {"cell": cell}, parent_run_id=parent)
                for cell in ("sft", "opd")]
    tracker.set_tags(children[0], {"reverse_weight": 0.5})
    tracker.end_run(children[0])
    tracker.end_run(children[1], status="FAILED")

    summaries = tracker.child_runs(parent)
    assert [(s.run_id, s.run_name, s.status) for s in summaries] == [
        (children[0], "sft", "FINISHED"), (children[1], "opd", "FAILED")]
    tags = tracker.run_tags(children[0])
    assert tags["mlflow.parentRunId"] == parent
    assert tags["reverse_weight"] == "0.5" and tags["cell"] == "sft"
    assert tags["git_sha"] == git_sha()
    assert tracker.child_runs(children[0]) == []


def test_artifacts_files_dirs_dicts_and_tables(tracker, tmp_path):
    run_id = tracker.start_run("artifacts", "files", {})
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "a.jsonl").write_text("{}\n")
    tracker.log_artifact(run_id, tmp_path / "notes.txt")
    tracker.log_artifact(run_id, tmp_path / "samples", "rollouts")
    tracker.log_dict(run_id, {"objective": "opd"}, "config.json")
    tracker.log_table(run_id, [{"id": "p1", "correct": True}, {"id": "p2", "length": 7}],
                      "eval/samples.json")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tracker.log_artifact(run_id, tmp_path / "missing.txt")

    local = Path(tracker.client.download_artifacts(run_id, "", str(tmp_path / "back")))
    assert (local / "notes.txt").read_text() == "hello"
    assert (local / "rollouts" / "a.jsonl").is_file()
    assert json.loads((local / "config.json").read_text()) == {"objective": "opd"}
    table = json.loads((local / "eval" / "samples.json").read_text())
    assert table["columns"] == ["id", "correct", "length"]
    assert table["data"][0][:2] == ["p1", True] and table["data"][1][0] == "p2"
    assert "eval/samples.json" in tracker.run_tags(run_id)["mlflow.loggedArtifacts"]


def _tiny_llama(path: Path) -> Path:
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=32)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def test_model_registration_and_download_round_trip(tracker, tmp_path):
    model_dir = _tiny_llama(tmp_path / "student")
    versions = []
    for cell in ("opd", "opd-again"):
        run_id = tracker.start_run("registry", cell, {})
        versions.append(tracker.register_model(run_id, model_dir, "distill-student-opd",
                                               {"eval/gsm8k/avg_at_4": 0.25}))
    assert versions == [1, 2]
    version = tracker.client.get_model_version("distill-student-opd", "2")
    assert version.tags == {"eval/gsm8k/avg_at_4": "0.25"} and version.run_id == run_id

    [latest] = tracker.latest_model_versions("distill-student", download_to=tmp_path / "dl")
    assert (latest.name, latest.version, latest.run_id) == ("distill-student-opd", 2, run_id)
    loaded = LlamaForCausalLM.from_pretrained(latest.local_dir)
    original = LlamaForCausalLM.from_pretrained(model_dir)
    for (name, a), (_, b) in zip(original.state_dict().items(), loaded.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name
    assert tracker.latest_model_versions(["distill-student-opd"])[0].local_dir is None
    with pytest.raises(FileNotFoundError, match="no config.json"):
        tracker.register_model(run_id, tmp_path, "distill-student-opd", {})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_server_fails_fast_at_start(tmp_path):
    uri = f"http://127.0.0.1:{_free_port()}"
    started = time.monotonic()
    with pytest.raises(ConnectionError, match=f"{uri} is not reachable"):
        Tracker(uri, artifacts_dir=tmp_path)
    assert time.monotonic() - started < 10
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ConnectionError, match="cannot open the MLflow SQLite database"):
        Tracker(f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}", artifacts_dir=tmp_path)


def test_metrics_that_cannot_be_sent_are_spilled_then_replayed(tracker):
    # A deleted run refuses metrics just as a dead server does; restoring it is the "recovery".
    run_id = tracker.start_run("spill", "deleted-mid-run", {})
    tracker.log_metrics(run_id, {"train/loss": 3.0}, step=0)
    tracker.client.delete_run(run_id)
    started = time.monotonic()
    for step in range(1, 21):
        tracker.log_metrics(run_id, {"train/loss": 3.0 - 0.1 * step}, step=step)
    assert time.monotonic() - started < 10  # backoff: failed sends do not stall training
    assert tracker.flush() == 20

    assert tracker.close() == 20
    spill = tracker.spill_path(run_id)
    assert len(spill.read_text().splitlines()) == 20
    tracker.client.restore_run(run_id)
    assert tracker.replay_spill(spill) == 20
    assert not spill.exists()
    assert [step for step, _ in tracker.metric_history(run_id, "train/loss")] == list(range(21))


def test_a_long_outage_spills_to_disk_instead_of_filling_memory(tracker):
    small = Tracker(tracker.tracking_uri, artifacts_dir=tracker.artifacts_dir, max_buffered=5)
    run_id = small.start_run("spill", "small-buffer", {})
    small.client.delete_run(run_id)
    for step in range(8):
        small.log_metrics(run_id, {"train/loss": float(step)}, step=step)
    assert len(small.spill_path(run_id).read_text().splitlines()) == 6  # buffer passed 5
    assert small.close() == 2  # the rest join the same file
    small.client.restore_run(run_id)
    assert small.replay_spill(small.spill_path(run_id)) == 8
    assert len(small.metric_history(run_id, "train/loss")) == 8


@pytest.mark.slow
def test_metrics_survive_a_server_outage(tmp_path, mlflow_server):
    server = mlflow_server  # started
    try:
        tracker = Tracker(server.uri, artifacts_dir=tmp_path)
        run_id = tracker.start_run("outage", "train", {})
        for step in range(3):
            tracker.log_metrics(run_id, {"train/loss": float(step)}, step=step)

        server.stop()  # outage: training goes on, each step returns quickly
        started = time.monotonic()
        for step in range(3, 13):
            tracker.log_metrics(run_id, {"train/loss": float(step)}, step=step)
        assert time.monotonic() - started < 10

        server.start()  # same port, same database
        assert tracker.flush() == 0
        assert [s for s, _ in tracker.metric_history(run_id, "train/loss")] == list(range(13))

        server.stop()  # down for good: closing spills what is left
        tracker.log_metrics(run_id, {"train/loss": 13.0, "eval/default/avg_at_4": 0.5}, step=13)
        assert tracker.close() == 2
        spill = tracker.spill_path(run_id)
        assert spill.is_file()

        server.start()
        assert Tracker(server.uri, artifacts_dir=tmp_path).replay_spill(spill) == 2
        assert tracker.run_metrics(run_id) == {"train/loss": 13.0, "eval/default/avg_at_4": 0.5}
    finally:
        server.stop()


class SlowLink:
    """A TCP relay to a real server that holds every response back by delay_s: a tracking
    server that answers, slowly (as one just back from an outage may)."""

    def __init__(self, port: int, delay_s: float):
        self.upstream, self.delay_s = ("127.0.0.1", port), delay_s
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.uri = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            server = socket.create_connection(self.upstream)
            asked = threading.Event()
            threading.Thread(target=self._pump, args=(client, server, asked, False),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, asked, True),
                             daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, asked: threading.Event,
              answers: bool) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                if not answers:
                    asked.set()
                elif asked.is_set():  # the first bytes of an answer wait
                    time.sleep(self.delay_s)
                    asked.clear()
                sink.sendall(chunk)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


@pytest.mark.slow
def test_replay_waits_as_long_as_mlflow_itself_would(tmp_path, mlflow_server, monkeypatch):
    from flows.cli import main

    tracker = Tracker(mlflow_server.uri, artifacts_dir=tmp_path)
    run_id = tracker.start_run("replay", "slow", {})
    mlflow_server.stop()
    tracker.log_metrics(run_id, {"train/loss": 1.0}, step=0)
    assert tracker.close() == 1  # spilled
    mlflow_server.start()
    # 3 s per answer: past the 2 s a run allows itself, well inside MLflow's own 120 s.
    slow = SlowLink(mlflow_server.port, delay_s=3.0)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", slow.uri)
    monkeypatch.setenv("DISTILL_LAB_ARTIFACTS", str(tmp_path))
    assert main(["replay"]) == 0
    assert tracker.metric_history(run_id, "train/loss") == [(0, 1.0)]
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "2"  # runs keep their short timeout
