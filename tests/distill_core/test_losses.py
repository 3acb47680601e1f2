"""Losses by name: one signature, the same values as the trainer's former paths, and the checks
a config makes from what each entry declares."""

import inspect

import pytest
import torch

import distill_core as dc
from distill_core import LOSSES, Objective, TeacherLogits, TeacherTopK, check_loss_choice


def _batch(batch=2, length=5, vocab=13, k=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    student = (torch.randn(batch, length, vocab, generator=generator) * 2).requires_grad_(True)
    teacher = torch.randn(batch, length, vocab, generator=generator) * 2
    mask = torch.ones(batch, length)
    mask[0, 3:] = 0
    ids = torch.randint(0, vocab, (batch, length), generator=generator)
    topk = teacher.log_softmax(-1).topk(k, dim=-1)
    return student, teacher, mask, ids, TeacherTopK(topk.values, topk.indices)


def _former_path(name, student, teacher, topk, mask, ids, lam, temperature, count):
    """The loss and per-token terms as tasks/train.py::_loss computed them before the registry."""
    entropy = dc.token_entropy(student.detach(), temperature)
    if name == "exact":
        out = dc.kl_loss(student, teacher, mask, lam, temperature=temperature,
                         num_valid_tokens=count)
        return out.loss, (out.forward_kl_BT, out.reverse_kl_BT, out.student_entropy_BT)
    if name == "sparse":
        forward, reverse = dc.sparse_kl_terms(student, topk.logprobs_BTK, topk.ids_BTK,
                                              temperature)
        loss = ((lam * reverse + (1 - lam) * forward) * mask).sum() / max(count, 1.0)
        return loss, (forward, reverse, entropy)
    forward, reverse, _ = dc.kl_terms(student, teacher, temperature)
    student_lp = dc.sampled_token_logprobs(student, ids, temperature)
    teacher_lp = dc.sampled_token_logprobs(teacher, ids, temperature)
    surrogate, _ = dc.reverse_kl_surrogate(student_lp, teacher_lp)
    loss = ((lam * surrogate + (1 - lam) * forward) * mask).sum() / max(count, 1.0)
    return loss, (forward, reverse, entropy)


@pytest.mark.parametrize("name", ["exact", "sparse", "sampled"])
@pytest.mark.parametrize("lam", [0.0, 0.25, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 1.7])
def test_registry_gives_the_former_paths_values_gradients_and_stats(name, lam, temperature):
    student, teacher, mask, ids, topk = _batch()
    count = 11.0  # a global count larger than this micro-batch's 8 tokens
    before, before_terms = _former_path(name, student, teacher, topk, mask, ids, lam,
                                        temperature, count)
    (before_grad,) = torch.autograd.grad(before, student)
    target = topk if name == "sparse" else TeacherLogits(teacher)
    out = LOSSES[name](student, target, mask, Objective("student", lam),
                       temperature=temperature, num_valid_tokens=count, response_ids_BT=ids)
    (grad,) = torch.autograd.grad(out.loss, student)
    torch.testing.assert_close(out.loss, before, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, before_grad, rtol=1e-4, atol=1e-7)
    for value, expected in zip(out[1:], before_terms, strict=True):
        assert not value.requires_grad
        torch.testing.assert_close(value * mask, expected.detach() * mask, rtol=1e-4, atol=1e-6)


def test_every_entry_has_the_one_signature_and_declares_its_needs():
    signatures = {str(inspect.signature(entry.function)) for entry in LOSSES.values()}
    assert len(signatures) == 1, signatures
    assert set(LOSSES) == {"exact", "sparse", "sampled"}
    assert LOSSES["sampled"].requires_student_samples and LOSSES["sampled"].needs_response_ids
    assert not LOSSES["exact"].requires_student_samples
    assert LOSSES["sparse"].teachers == (TeacherTopK,)
    assert [name for name, entry in LOSSES.items() if entry.hidden_states] == ["exact", "sparse"]


@pytest.mark.parametrize(
    "name, objective, temperatures, fused, fragment",
    [
        ("sampled", "offline_rl", (1.0, 1.0), False, "teacher-written prefixes"),
        ("sampled", "teacher:0.5", (1.0, 1.0), False, "teacher-written prefixes"),
        ("sampled", "opd", (1.0, 0.7), False, "sampling temperature 0.7 but loss temperature 1.0"),
        ("sampled", "opd", (1.0, 1.0), True, "no fused form"),
        ("chunked", "opd", (1.0, 1.0), False, r"loss='chunked' is not one of"),
    ],
)
def test_config_checks_refuse_what_an_entry_does_not_support(name, objective, temperatures,
                                                             fused, fragment):
    with pytest.raises(ValueError, match=fragment):
        check_loss_choice(name, Objective.parse(objective), temperature=temperatures[0],
                          sampling_temperature=temperatures[1], hidden_states=fused)


@pytest.mark.parametrize(
    "name, objective, temperatures",
    [
        ("sampled", "opd", (0.8, 0.8)),
        ("sampled", "student:0.5", (1.0, 1.0)),
        ("sampled", "sft", (1.0, 0.6)),  # λ = 0: no REINFORCE part, any prefix and temperature
        ("exact", "offline_rl", (1.0, 0.6)),
        ("sparse", "sft", (1.0, 1.0)),
    ],
)
def test_config_checks_accept_valid_choices(name, objective, temperatures):
    entry = check_loss_choice(name, Objective.parse(objective), temperature=temperatures[0],
                              sampling_temperature=temperatures[1])
    assert entry is LOSSES[name]


def test_a_teacher_of_the_wrong_kind_is_named():
    student, teacher, mask, ids, topk = _batch()
    with pytest.raises(ValueError, match="'exact' loss takes the teacher as TeacherLogits or "
                                         "HiddenStates, got TeacherTopK"):
        LOSSES["exact"](student, topk, mask, Objective("teacher", 0.0))
    with pytest.raises(ValueError, match="'sparse' loss takes the teacher as TeacherTopK, got "
                                         "TeacherLogits"):
        LOSSES["sparse"](student, TeacherLogits(teacher), mask, Objective("teacher", 0.0))
    with pytest.raises(ValueError, match="got Tensor"):
        LOSSES["exact"](student, teacher, mask, Objective("teacher", 0.0))


def test_sampled_needs_response_ids_and_an_objective():
    student, teacher, mask, _, _ = _batch()
    with pytest.raises(ValueError, match="needs response_ids_BT"):
        LOSSES["sampled"](student, TeacherLogits(teacher), mask, Objective("student", 1.0))
    with pytest.raises(ValueError, match="must be a distill_core.Objective"):
        LOSSES["exact"](student, TeacherLogits(teacher), mask, 0.5)


def test_objective_parsed_once_carries_lambda_to_the_loss():
    student, teacher, mask, _, _ = _batch()
    objective = Objective.parse("student:0.25")
    out = LOSSES["exact"](student, TeacherLogits(teacher), mask, objective, chunk_size=None)
    forward, reverse, _ = dc.kl_terms(student, teacher)
    expected = dc.masked_mean(0.25 * reverse + 0.75 * forward, mask)
    torch.testing.assert_close(out.loss, expected)


def test_top_k_shapes_must_agree():
    with pytest.raises(ValueError, match=r"TeacherTopK: logprobs_BTK \(1, 2, 3\) and ids_BTK"):
        TeacherTopK(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4, dtype=torch.long))
