"""Entropy-gated length curriculum: the gate, the ladder, and checkpoint round trips."""

import json

import pytest

from distill_core import EntropyGatedLengthCurriculum, doubling_ladder


def test_doubling_ladder():
    assert doubling_ladder(128, 4096) == (128, 256, 512, 1024, 2048, 4096)
    assert doubling_ladder(100, 300) == (100, 200, 300)
    assert doubling_ladder(64, 64) == (64,)
    with pytest.raises(ValueError, match="start=0"):
        doubling_ladder(0, 10)


def test_advances_only_when_entropy_clears_the_gate():
    curriculum = EntropyGatedLengthCurriculum(lengths=(16, 32, 64), min_entropy=0.5)
    assert curriculum.max_response_length == 16
    decision = curriculum.update(0.7)
    assert decision == {"held_out_entropy": 0.7, "min_entropy": 0.5, "gate_passed": True,
                        "advanced": True, "length_before": 16, "length_after": 32}
    decision = curriculum.update(0.4)
    assert not decision["gate_passed"] and not decision["advanced"]
    assert curriculum.max_response_length == 32
    curriculum.update(0.5)  # equal to H_min passes
    assert curriculum.max_response_length == 64 and curriculum.at_last_rung
    decision = curriculum.update(9.0)  # the last rung: passing keeps it there
    assert decision["gate_passed"] and not decision["advanced"]
    assert curriculum.max_response_length == 64
    assert len(curriculum.history) == 4


def test_state_round_trips_through_json():
    curriculum = EntropyGatedLengthCurriculum(lengths=(8, 16, 32), min_entropy=1.0)
    curriculum.update(2.0)
    curriculum.update(0.1)
    state = json.loads(json.dumps(curriculum.state_dict()))
    restored = EntropyGatedLengthCurriculum.from_state_dict(state)
    assert restored == curriculum
    assert restored.max_response_length == 16
    restored.update(3.0)
    assert restored.max_response_length == 32


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(lengths=(), min_entropy=0.1), "non-empty"),
        (dict(lengths=(32, 16), min_entropy=0.1), "strictly increasing"),
        (dict(lengths=(16, 16), min_entropy=0.1), "strictly increasing"),
        (dict(lengths=(16, 0), min_entropy=0.1), "positive ints"),
        (dict(lengths=(16, 32), min_entropy=-1.0), "min_entropy=-1.0"),
        (dict(lengths=(16, 32), min_entropy=0.1, stage=2), "stage=2"),
    ],
)
def test_bad_configuration(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        EntropyGatedLengthCurriculum(**kwargs)


def test_bad_measurement_and_state():
    curriculum = EntropyGatedLengthCurriculum(lengths=(8, 16), min_entropy=1.0)
    with pytest.raises(ValueError, match="held_out_entropy=nan"):
        curriculum.update(float("nan"))
    with pytest.raises(ValueError, match=r"missing keys \['stage'\]"):
        EntropyGatedLengthCurriculum.from_state_dict({"lengths": [8], "min_entropy": 0.0})
