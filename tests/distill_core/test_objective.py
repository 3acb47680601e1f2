"""Objective: the grid's presets, parsing, and bad input."""

import pytest

from distill_core import PRESETS, Objective


def test_presets_are_the_four_corners():
    assert PRESETS["sft"] == Objective("teacher", 0.0)
    assert PRESETS["dagger"] == Objective("student", 0.0)
    assert PRESETS["offline_rl"] == Objective("teacher", 1.0)
    assert PRESETS["opd"] == Objective("student", 1.0)


@pytest.mark.parametrize("name", ["sft", "dagger", "offline_rl", "opd"])
def test_preset_names_round_trip(name):
    assert Objective.parse(name).name == name


def test_parse_mix():
    objective = Objective.parse("student:0.25")
    assert objective.prefix_source == "student"
    assert objective.reverse_weight == 0.25
    assert objective.forward_weight == 0.75
    assert objective.on_policy
    assert objective.name == "student:0.25"
    assert Objective.parse("teacher:1") == PRESETS["offline_rl"]


def test_objective_is_frozen():
    with pytest.raises(AttributeError):
        PRESETS["sft"].reverse_weight = 0.5  # type: ignore[misc]


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("opdd", "not a preset"),
        ("student:1.5", "reverse_weight=1.5"),
        ("student:-0.1", "reverse_weight=-0.1"),
        ("student:abc", "'abc' is not a number"),
        ("critic:0.5", "prefix_source='critic'"),
        ("student:nan", "reverse_weight=nan"),
    ],
)
def test_bad_objective_strings_name_the_problem(text, fragment):
    with pytest.raises(ValueError, match=fragment):
        Objective.parse(text)


def test_bad_weight_type():
    with pytest.raises(ValueError, match="reverse_weight=True"):
        Objective("student", True)  # type: ignore[arg-type]
