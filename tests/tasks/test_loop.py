"""The data checks both trainers make before their first step (tasks.loop.check_data)."""

import pytest

from tasks.loop import check_data


def _check(problems=64, processes=2, prompts=("batch_size", 8),
           response_cap=("max_new_tokens", 96), context=("student", 128)):
    check_data(problems, "train.jsonl", processes, prompts=prompts,
               response_cap=response_cap, context=context)


def test_a_run_its_data_can_carry_passes():
    _check()
    _check(problems=8, processes=8, response_cap=("max_new_tokens", 127))


@pytest.mark.parametrize(("arguments", "message"), [
    ({"problems": 4}, "batch_size=8 is larger than the 4 problems in train.jsonl"),
    ({"prompts": ("prompts_per_step", 65)},
     "prompts_per_step=65 is larger than the 64 problems"),
    ({"processes": 9}, "batch_size=8 is the global batch and this run has 9 processes: .*"
                       "raise batch_size or launch fewer processes"),
    ({"prompts": ("prompts_per_step", 1)}, "prompts_per_step=1 is the global batch .*"
                                           "raise prompts_per_step"),
    ({"response_cap": ("max(curriculum)", 128)}, r"max\(curriculum\)=128 is not below the "
                                                 r"student's context of 128 tokens; lower max"),
    ({"response_cap": ("max_new_tokens", 200), "context": ("policy", 128)},
     "max_new_tokens=200 is not below the policy's context of 128 tokens; lower "
     "max_new_tokens"),
])
def test_each_refusal_names_the_callers_field(arguments, message):
    with pytest.raises(ValueError, match=message):
        _check(**arguments)
