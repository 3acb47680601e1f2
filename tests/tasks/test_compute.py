"""Compute accounting: 2·N FLOPs per forward token, 6·N per trained token, per stage."""

from tasks.compute import ComputeMeter


def test_flops_per_stage_and_total():
    meter = ComputeMeter(student_parameters=1_000, teacher_parameters=10_000)
    meter.generate(50)
    meter.teacher_forward(70)
    meter.student_forward(5)
    meter.student_train(70)
    meter.student_train(30)
    metrics = meter.metrics()
    assert metrics["compute/generate_flops"] == 2 * 1_000 * 50
    assert metrics["compute/teacher_score_flops"] == 2 * 10_000 * 70
    assert metrics["compute/student_forward_flops"] == 2 * 1_000 * 5
    assert metrics["compute/student_train_flops"] == 6 * 1_000 * 100
    assert metrics["compute/student_train_tokens"] == 100
    assert metrics["compute/total_flops"] == 100_000 + 1_400_000 + 10_000 + 600_000
