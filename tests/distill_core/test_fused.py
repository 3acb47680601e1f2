"""The loss fused with the LM head: the same values and gradients as the logits path, without
ever forming the (T, V) logits."""

import pytest
import torch

from distill_core import (
    LOSSES,
    HeadFacts,
    HiddenStates,
    Objective,
    TeacherLogits,
    TeacherTopK,
    check_fused_head,
    fused_kl_loss,
)

BATCH, LENGTH, WIDTH, VOCAB = 3, 5, 8, 29


def _pair(dtype=torch.float32, seed=0, vocab_size=None, head_rows=VOCAB):
    """Student (leaf hidden states and head) and teacher HiddenStates, and a mask with holes."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=generator) * scale).to(dtype)

    student = HiddenStates(randn(BATCH, LENGTH, WIDTH).requires_grad_(True),
                           randn(head_rows, WIDTH, scale=0.7).requires_grad_(True), vocab_size)
    teacher = HiddenStates(randn(BATCH, LENGTH, 2 * WIDTH), randn(head_rows, 2 * WIDTH, scale=0.5),
                           vocab_size)
    mask = torch.ones(BATCH, LENGTH)
    mask[0, 3:] = 0
    mask[2, :2] = 0
    return student, teacher, mask


def _grads(loss, student):
    return torch.autograd.grad(loss, (student.hidden_BTD, student.head_weight_VD))


def _logits_path(name, student, teacher, mask, lam, **options):
    """The registry's loss on the materialised logits: the reference the fused path must equal."""
    if isinstance(teacher, HiddenStates):
        teacher = TeacherLogits(teacher.logits().detach())
    out = LOSSES[name](student.logits(), teacher, mask, Objective("student", lam), **options)
    return out, _grads(out.loss, student)


def _fused(name, student, teacher, mask, lam, **options):
    out = LOSSES[name](student, teacher, mask, Objective("student", lam), **options)
    return out, _grads(out.loss, student)


def _assert_same(fused, reference, loss_tol, grad_tol, stats_tol=(1e-4, 1e-6)):
    (out, grads), (ref, ref_grads) = fused, reference
    torch.testing.assert_close(out.loss, ref.loss, rtol=loss_tol[0], atol=loss_tol[1])
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        assert grad.dtype == ref_grad.dtype
        torch.testing.assert_close(grad.float(), ref_grad.float(), rtol=grad_tol[0],
                                   atol=grad_tol[1])
    for name in ("forward_kl_BT", "reverse_kl_BT", "student_entropy_BT"):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name), rtol=stats_tol[0],
                                   atol=stats_tol[1])


# fp32: both paths compute the same float32 formulas; only summation order differs.
FP32 = dict(loss_tol=(1e-5, 1e-6), grad_tol=(1e-4, 1e-6))


@pytest.mark.parametrize("lam", [0.0, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("teacher_form", ["hidden", "logits"])
@pytest.mark.parametrize("chunk_size", [2, "auto"])
def test_fused_exact_equals_the_logits_path_fp32(lam, temperature, teacher_form, chunk_size):
    student, teacher, mask = _pair()
    if teacher_form == "logits":
        teacher = TeacherLogits(teacher.logits())
    options = dict(temperature=temperature, num_valid_tokens=17)
    reference = _logits_path("exact", student, teacher, mask, lam, **options)
    fused = _fused("exact", student, teacher, mask, lam, chunk_size=chunk_size, **options)
    _assert_same(fused, reference, **FP32)


@pytest.mark.parametrize("lam", [0.0, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 1.3])
def test_fused_sparse_equals_the_sparse_loss_on_logits(lam, temperature):
    student, teacher, mask = _pair()
    topk = teacher.logits().log_softmax(-1).topk(6, dim=-1)
    cache = TeacherTopK(topk.values, topk.indices)
    reference = _logits_path("sparse", student, cache, mask, lam, temperature=temperature)
    fused = _fused("sparse", student, cache, mask, lam, temperature=temperature, chunk_size=4)
    _assert_same(fused, reference, **FP32)


@pytest.mark.parametrize("lam", [0.0, 0.25, 0.5, 1.0])
def test_fused_equals_the_logits_path_bf16(lam):
    # Both paths form bf16 logits and compute the loss in float32. The logits path rounds ∂L/∂z
    # to bf16 before its head matmuls; the fused path keeps it float32 and accumulates ∂L/∂W in
    # float32, so the two differ by bf16 rounding: loss to 1e-3 relative, gradients to 2e-2.
    student, teacher, mask = _pair(dtype=torch.bfloat16)
    reference = _logits_path("exact", student, teacher, mask, lam, temperature=0.7)
    fused = _fused("exact", student, teacher, mask, lam, temperature=0.7, chunk_size=3)
    _assert_same(fused, reference, loss_tol=(1e-3, 1e-4), grad_tol=(2e-2, 2e-3),
                 stats_tol=(1e-2, 1e-3))
    # …and the fused gradients are at least as close to float32 arithmetic as the logits path's.
    student32 = HiddenStates(*(x.detach().float().requires_grad_(True)
                               for x in (student.hidden_BTD, student.head_weight_VD)))
    teacher32 = HiddenStates(teacher.hidden_BTD.float(), teacher.head_weight_VD.float())
    _, exact_grads = _logits_path("exact", student32, teacher32, mask, lam, temperature=0.7)
    for fused_grad, ref_grad, exact in zip(fused[1], reference[1], exact_grads, strict=True):
        fused_error = (fused_grad.float() - exact).norm() / exact.norm()
        assert fused_error <= (ref_grad.float() - exact).norm() / exact.norm() + 1e-3


def test_tied_embeddings_accumulate_into_one_parameter():
    # The student's head is its embedding matrix (padded to 32 rows for a 29-token vocabulary):
    # the embedding lookup's gradient and the head's add up in the one parameter, and padded rows
    # get the lookup's gradient only.
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(32, WIDTH)
    layer = torch.nn.Linear(WIDTH, WIDTH)
    input_ids = torch.randint(0, VOCAB, (BATCH, LENGTH))
    _, teacher, mask = _pair(vocab_size=VOCAB, head_rows=32)

    def run(fused: bool) -> torch.Tensor:
        embedding.zero_grad(set_to_none=True)
        hidden = torch.tanh(layer(embedding(input_ids)))
        student = HiddenStates(hidden, embedding.weight, vocab_size=VOCAB)
        if not fused:
            student = student.logits()  # what response_logits(..., vocab) hands the loss
        target = teacher if fused else TeacherLogits(teacher.logits())
        LOSSES["exact"](student, target, mask, Objective("student", 0.5)).loss.backward()
        return embedding.weight.grad.clone()

    fused_grad, reference_grad = run(fused=True), run(fused=False)
    torch.testing.assert_close(fused_grad, reference_grad, rtol=1e-4, atol=1e-6)
    assert fused_grad[VOCAB:].abs().sum() == 0  # no lookup of a padded id, no head gradient


def test_padded_head_rows_are_sliced_off_and_get_zero_gradient():
    student, teacher, mask = _pair(vocab_size=VOCAB - 4)
    assert student.logits().shape[-1] == VOCAB - 4
    reference = _logits_path("exact", student, teacher, mask, 0.5)
    fused = _fused("exact", student, teacher, mask, 0.5, chunk_size=4)
    _assert_same(fused, reference, **FP32)
    assert fused[1][1][VOCAB - 4:].abs().max() == 0


def test_fully_masked_batch_gives_zero_not_nan():
    student, teacher, _ = _pair()
    out, grads = _fused("exact", student, teacher, torch.zeros(BATCH, LENGTH), 0.5)
    assert out.loss.item() == 0.0
    assert all(grad.abs().max() == 0 for grad in grads)
    assert out.reverse_kl_BT.abs().max() == 0


def test_masked_rows_are_never_computed():
    student, teacher, mask = _pair()
    hidden = student.hidden_BTD.detach().clone()
    hidden[0, 4] = float("nan")  # padding garbage at a masked position
    student = HiddenStates(hidden.requires_grad_(True), student.head_weight_VD)
    out, (hidden_grad, weight_grad) = _fused("exact", student, teacher, mask, 0.5, chunk_size=2)
    assert torch.isfinite(out.loss) and torch.isfinite(weight_grad).all()
    assert hidden_grad[0, 4].abs().max() == 0


@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_negative_infinity_teacher_logits_as_in_the_chunked_path(lam):
    # Vocabulary entries the teacher rules out (-inf): forward KL stays finite; both paths agree.
    student, teacher, mask = _pair()
    logits = teacher.logits().detach().clone()
    logits[..., -3:] = float("-inf")
    reference = _logits_path("exact", student, TeacherLogits(logits), mask, lam)
    fused = _fused("exact", student, TeacherLogits(logits), mask, lam, chunk_size=3)
    _assert_same(fused, reference, **FP32)
    assert torch.isfinite(fused[0].forward_kl_BT).all()
    assert all(torch.isfinite(grad).all() for grad in fused[1])


def test_flat_rows_and_a_global_token_count():
    student, teacher, mask = _pair()
    flat = HiddenStates(student.hidden_BTD.reshape(-1, WIDTH), student.head_weight_VD)
    flat_teacher = HiddenStates(teacher.hidden_BTD.reshape(-1, 2 * WIDTH), teacher.head_weight_VD)
    out = fused_kl_loss(flat, flat_teacher, mask.reshape(-1), 0.3, num_valid_tokens=40)
    whole = fused_kl_loss(student, teacher, mask, 0.3)
    assert out.forward_kl_BT.shape == (BATCH * LENGTH,)
    torch.testing.assert_close(out.loss, whole.loss * mask.sum() / 40)


def test_upstream_gradient_scales_and_a_second_backward_is_refused():
    student, teacher, mask = _pair()
    _, grads = _fused("exact", student, teacher, mask, 0.2)
    scaled = 2.5 * fused_kl_loss(student, teacher, mask, 0.2).loss
    for grad, scaled_grad in zip(grads, _grads(scaled, student), strict=True):
        torch.testing.assert_close(scaled_grad, 2.5 * grad)
    loss = fused_kl_loss(student, teacher, mask, 0.2).loss
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward pass"):
        loss.backward()


def test_no_gradient_needed_still_gives_values():
    student, teacher, mask = _pair()
    reference = fused_kl_loss(student, teacher, mask, 0.5)
    with torch.no_grad():
        out = fused_kl_loss(student, teacher, mask, 0.5)
    torch.testing.assert_close(out.loss, reference.loss.detach())


def test_the_teacher_gets_no_gradient():
    student, teacher, mask = _pair()
    teacher = HiddenStates(teacher.hidden_BTD.requires_grad_(True), teacher.head_weight_VD)
    fused_kl_loss(student, teacher, mask, 0.5).loss.backward()
    assert teacher.hidden_BTD.grad is None and student.hidden_BTD.grad is not None


def test_no_tensor_of_all_the_logits_is_allocated():
    # 64 rows × 1,000 logits: a (64, 1000) float32 tensor is 256 KB; the four (4, 1000) chunk
    # buffers (64 KB, one allocation) and the (1000, 16) head gradient (64 KB) stay far below.
    generator = torch.Generator().manual_seed(0)
    student = HiddenStates(torch.randn(64, 16, generator=generator).requires_grad_(True),
                           torch.randn(1000, 16, generator=generator).requires_grad_(True))
    teacher = HiddenStates(torch.randn(64, 16, generator=generator),
                           torch.randn(1000, 16, generator=generator))
    with torch.profiler.profile(profile_memory=True) as profile:
        fused_kl_loss(student, teacher, torch.ones(64), 0.5, chunk_size=4).loss.backward()
    largest = max(event.cpu_memory_usage for event in profile.events())
    assert 0 < largest < 64 * 1000 * 4 / 2, largest


def test_mismatched_teacher_vocabulary_is_named():
    student, teacher, mask = _pair()
    short = HiddenStates(teacher.hidden_BTD, teacher.head_weight_VD, vocab_size=VOCAB - 1)
    with pytest.raises(ValueError, match=r"teacher HiddenStates give logits \(3, 5, 28\) but the "
                                         r"student's are \(3, 5, 29\)"):
        fused_kl_loss(student, short, mask, 0.5)
    with pytest.raises(ValueError, match="teacher_logits has shape"):
        fused_kl_loss(student, TeacherLogits(torch.zeros(3, 5, 30)), mask, 0.5)


def test_nan_teacher_names_the_position():
    student, teacher, mask = _pair()
    hidden = teacher.hidden_BTD.clone()
    hidden[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"teacher_logits give NaN probabilities at token "
                                         r"position \(1, 2\)"):
        fused_kl_loss(student, HiddenStates(hidden, teacher.head_weight_VD), mask, 0.5)


def test_sampled_has_no_fused_form():
    student, teacher, mask = _pair()
    with pytest.raises(ValueError, match="'sampled' loss takes the teacher as TeacherLogits"):
        _fused("sampled", student, teacher, mask, 1.0)
    with pytest.raises(ValueError, match="needs the student's logits"):
        _fused("sampled", student, TeacherLogits(teacher.logits()), mask, 1.0)


@pytest.mark.parametrize("facts, attribute", [
    (HeadFacts(bias=True), "bias=True"),
    (HeadFacts(logit_softcap=30.0), "logit_softcap=30.0"),
    (HeadFacts(logit_scale=0.0625), "logit_scale=0.0625"),
])
def test_heads_the_fused_path_cannot_compute_are_refused(facts, attribute):
    with pytest.raises(ValueError, match=f"teacher's .*{attribute}"):
        check_fused_head(facts, model="teacher")


def test_a_plain_head_passes():
    check_fused_head(HeadFacts())
    check_fused_head(HeadFacts(bias=False, logit_softcap=None, logit_scale=1.0))


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_bf16_activations_of_an_fp32_model_under_autocast(lam):
    """What accelerate's bf16 mixed precision hands the loss: bf16 hidden states, fp32 heads,
    an autocast region around the call. On a GPU this stopped training with 'Index put requires
    the source and destination dtypes match' (bf16 chunk statistics into float32 ones); the
    fused path now computes in the heads' dtype, as float32 arithmetic on the rounded hidden
    states does."""
    student, teacher, mask = _pair()
    student16 = HiddenStates(student.hidden_BTD.detach().bfloat16().requires_grad_(True),
                             student.head_weight_VD)
    teacher16 = HiddenStates(teacher.hidden_BTD.bfloat16(), teacher.head_weight_VD)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = _fused("exact", student16, teacher16, mask, lam, temperature=0.7, chunk_size=3)
    rounded = HiddenStates(student16.hidden_BTD.detach().float().requires_grad_(True),
                           student.head_weight_VD)
    teacher32 = HiddenStates(teacher16.hidden_BTD.float(), teacher.head_weight_VD)
    reference = _logits_path("exact", rounded, teacher32, mask, lam, temperature=0.7)
    (out, (grad_h, grad_w)), (ref, (ref_h, ref_w)) = fused, reference
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=1e-6)
    assert grad_h.dtype == torch.bfloat16  # ∂L/∂h in the activations' dtype: bf16 rounding
    torch.testing.assert_close(grad_h.float(), ref_h, rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(grad_w, ref_w, rtol=1e-4, atol=1e-6)
    for name in ("forward_kl_BT", "reverse_kl_BT", "student_entropy_BT"):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name), rtol=1e-5, atol=1e-6)
