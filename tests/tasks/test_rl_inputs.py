"""Plain steps of the RL flow over a real SQLite MLflow: which students a study hands to GRPO,
and the RL flow's inputs (no teacher or student resolved, no bootstrap when files are given)."""

import shutil

import pytest

from tasks.checkpoints import write_checksums
from tasks.configs import RLFlowConfig
from tasks.data import write_problems
from tasks.inputs import resolve_rl_inputs
from tasks.rl_sources import rl_sources
from tasks.tracking import Tracker

pytestmark = pytest.mark.slow  # its fixture logs a grid to a fresh MLflow database


def fake_checkpoint(output_dir):
    """The layout latest_checkpoint() reads: a checkpoint folder whose files match its
    checksums (the weights themselves are not read here)."""
    checkpoint = output_dir / "checkpoint-000002"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    write_checksums(checkpoint)
    return checkpoint


@pytest.fixture
def grid(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with Tracker(uri, artifacts_dir=tmp_path) as tracker:
        parent = tracker.start_run("study", "grid", tags={"study": "grid"})
        reference = tracker.start_run("study", "teacher", {"reference": "true"},
                                      parent_run_id=parent)
        tracker.end_run(reference)
        runs = {}
        for name, status in (("sft", "FINISHED"), ("dagger", "FAILED"), ("opd", "FINISHED")):
            runs[name] = tracker.start_run("study", name, {"cell": name}, parent_run_id=parent)
            output_dir = tmp_path / name / "train"
            if status == "FINISHED":
                fake_checkpoint(output_dir)
            tracker.log_params(runs[name], {"train": {"output_dir": str(output_dir),
                                                      "student": "/models/student"}})
            tracker.end_run(runs[name], status=status)
        tracker.end_run(parent)
    return uri, parent, runs, tmp_path


def test_rl_sources_are_the_finished_cells_of_the_newest_grid(grid):
    uri, parent, runs, root = grid
    said = []
    study, sources = rl_sources(RLFlowConfig(study_experiment="study"), uri, said.append)
    assert study == parent
    assert [s["label"] for s in sources] == ["sft", "opd"]
    assert sources[0] == {"label": "sft", "source_run": runs["sft"],
                          "checkpoint": str(root / "sft" / "train" / "checkpoint-000002"),
                          "reference": "/models/student"}
    assert said == [f"skipping cell 'dagger' (run {runs['dagger']}): its run is FAILED, not "
                    "FINISHED"]


def test_a_finished_cell_without_its_checkpoint_is_named(grid):
    uri, _, runs, root = grid
    shutil.rmtree(root / "opd" / "train" / "checkpoint-000002")
    with pytest.raises(FileNotFoundError, match=f"cell 'opd' \\(run {runs['opd']}\\) has no "
                       "checkpoint"):
        rl_sources(RLFlowConfig(study_experiment="study"), uri, lambda _: None)


def test_explicit_checkpoints_share_the_first_ones_tokenizer(tmp_path):
    config = RLFlowConfig(checkpoints=["/a/student-1", "/b/student-2"])
    study, sources = rl_sources(config, f"sqlite:///{tmp_path / 'unused.db'}")
    assert study is None
    assert [(s["label"], s["reference"]) for s in sources] == [
        ("student-1", "/a/student-1"), ("student-2", "/a/student-1")]


def test_no_grid_study_says_what_to_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(ValueError, match="no grid study in experiment 'demo'.*distill grid"):
        rl_sources(RLFlowConfig(), uri)


def test_rl_inputs_from_files_need_no_profile(tmp_path, tiny_problems):
    train = write_problems(tiny_problems["train"][:8], tmp_path / "train.jsonl")
    inputs = resolve_rl_inputs(RLFlowConfig(train_problems=str(train), train_size=4,
                                            benchmarks=["gsm8k=/data/gsm8k.jsonl"]), tmp_path)
    assert inputs.benchmarks == ("gsm8k=/data/gsm8k.jsonl",)
    assert len(open(inputs.train_problems).read().splitlines()) == 4
    assert not (tmp_path / "models").exists()  # nothing bootstrapped
    with pytest.raises(ValueError, match="train_size=9"):
        resolve_rl_inputs(RLFlowConfig(train_problems=str(train), train_size=9,
                                       benchmarks=["x=/y.jsonl"]), tmp_path)
