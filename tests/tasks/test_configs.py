"""Config files and names under hostile input: every mistake is refused before any work, in one
line naming the file and the line or field; no name can put a folder outside the artifacts
root."""

import pytest

from tasks.configs import ExperimentConfig, RLFlowConfig, load_config
from tasks.inputs import Inputs, check_lengths_fit
from tasks.runs import inside, slug


def _load(tmp_path, content: bytes | str):
    path = tmp_path / "config.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path, lambda: load_config(path, ExperimentConfig)


@pytest.mark.parametrize("content, message", [
    ("name: a\nsteps: 3\nsteps: 4\n", "line 3, column 1: duplicate key 'steps'"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "not UTF-8 text"),
    ("name: a\x00b\n", "NUL bytes"),
    ("name: [unclosed\n", "not valid YAML (line 2"),
    ("- just\n- a list\n", "expected a mapping of ExperimentConfig fields"),
    ("name: ../../x\n", "name: Value error, experiment name '../../x' is not allowed"),
    ("name: a/b\n", "experiment name 'a/b' is not allowed"),
    ('name: "relnl\\n"\n', "experiment name 'relnl\\n' is not allowed"),  # "$" took the newline
    ("name: ''\n", "experiment name is empty"),
    (f"name: {'x' * 600}\n", "is not allowed: use at most 64"),
    ("eval_ks: []\n", "eval_ks is empty"),
    ("eval_ks: [1, 8]\n", "eval_ks=[1, 8] has k=8 > eval_n=4"),
    ("steps: 1e23\n", "steps: Input should be a valid integer"),
    ("steps: 100000000\n", "steps: Input should be less than or equal to 10000000"),
    ("learning_rate: .inf\n", "learning_rate: Input should be a finite number"),
    ("learning_rate: 0\n", "learning_rate: Input should be greater than 0"),
    ("objective: sfft\n", "objective"),
    ("stepz: 3\n", "stepz: Extra inputs are not permitted"),
])
def test_a_bad_config_is_one_line_naming_the_file(tmp_path, content, message):
    path, load = _load(tmp_path, content)
    with pytest.raises(ValueError) as error:
        load()
    text = str(error.value)
    assert text.startswith(f"{path}: ") and message in text, text
    assert "\n" not in text


def test_a_byte_order_mark_is_accepted(tmp_path):
    _, load = _load(tmp_path, b"\xef\xbb\xbfname: bom\n")
    assert load().name == "bom"


def test_the_rl_study_name_is_checked_too():
    with pytest.raises(ValueError, match="experiment name 'a b' is not allowed"):
        RLFlowConfig(study_experiment="a b")


def test_no_path_escapes_the_artifacts_root(tmp_path):
    assert inside(tmp_path, "runs", "demo") == tmp_path / "runs" / "demo"
    for parts in (("..", "x"), ("/etc",), ("runs", "..", "..", "x")):
        with pytest.raises(ValueError, match="outside the artifacts root"):
            inside(tmp_path, *parts)
    assert slug("student:0.25 +curriculum") == "student-0.25-curriculum"
    assert slug("../../x") == "x"


def test_caps_longer_than_the_context_stop_before_any_work(tiny_pair, tmp_path):
    inputs = Inputs(str(tiny_pair[0]), str(tiny_pair[1]), "train.jsonl", "held.jsonl", ())
    check_lengths_fit(ExperimentConfig(max_new_tokens=8, eval_max_new_tokens=8), inputs)
    with pytest.raises(ValueError, match="eval_max_new_tokens=500 is not below the teacher's "
                                         "context of 160"):
        check_lengths_fit(ExperimentConfig(eval_max_new_tokens=500), inputs)
    with pytest.raises(ValueError, match="curriculum=200"):
        check_lengths_fit(ExperimentConfig(curriculum=[8, 200], eval_max_new_tokens=8), inputs)


def test_the_prompt_template_left_empty_is_the_profiles():
    from tasks.configs import EvaluateFlowConfig, StudyConfig

    # SmolLM2-Instruct is shown a worked example ending in a box: the grader's strict rule
    # reads only the box, and the instruction alone does not make a 135M model box.
    for model in (ExperimentConfig, StudyConfig, EvaluateFlowConfig, RLFlowConfig):
        assert model(profile="real-weights").prompt_template == "worked-example"
        assert model().prompt_template == "bare"
        assert model(profile="real-weights", prompt_template="bare").prompt_template == "bare"
    resolved = StudyConfig(profile="real-weights")
    assert StudyConfig(**resolved.model_dump()) == resolved  # a dumped config reloads the same
