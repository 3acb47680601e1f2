"""The Markdown tables: greedy accuracy and the gold NLL split beside Avg@k with their legend, in
the results table, the RL before → after table and the interval table of a toy study (a cell
that is right greedily on every problem against a baseline that never is)."""

from tasks.study import EvalSample, Study, StudyRun
from tasks.tables import LEGEND, before_after_table, interval_table, results_table

METRICS = {"eval/overall/avg_at_4": 0.5, "eval/overall/pass_at_4": 0.75,
           "eval/overall/avg_at_1": 0.25, "eval/overall/greedy_accuracy": 0.125,
           "eval/overall/gold_nll_digits": 0.0625, "eval/overall/gold_nll_other": 1.5}


def columns(table: str, row: int) -> dict[str, str]:
    """{column head: cell text} of a Markdown table's row (0: the first after the head)."""
    lines = table.splitlines()
    heads = [h.strip() for h in lines[0].strip("|").split("|")]
    values = [v.strip() for v in lines[2 + row].strip("|").split("|")]
    return dict(zip(heads, values, strict=True))


def test_results_table_shows_greedy_and_gold_nll_with_the_legend():
    table = results_table([{"cell": "opd", "metrics": METRICS},
                           {"cell": "old run", "metrics": {"eval/overall/avg_at_4": 0.5}}], [4])
    opd, old = columns(table, 0), columns(table, 1)
    assert (opd["avg@4"], opd["greedy"], opd["gold NLL digits"], opd["gold NLL other"]) == (
        "0.500", "0.125", "0.062", "1.500")
    assert (old["greedy"], old["gold NLL digits"]) == ("–", "–")  # not measured: not 0
    assert table.endswith(LEGEND) and "sharpening alone cannot raise it" in LEGEND


def test_before_after_table_shows_greedy_and_gold_nll():
    after = METRICS | {"eval/overall/greedy_accuracy": 0.25}
    row = columns(before_after_table([{"label": "opd", "before": METRICS, "after": after}],
                                     [4]), 0)
    assert row["greedy before → after"] == "0.125 → 0.250"
    assert row["gold NLL digits before → after"] == "0.062 → 0.062"


def _run(label: str, seed: int, sampled: bool, greedy: bool | None) -> StudyRun:
    """Ten problems, four samples each correct as ``sampled``; one greedy response per problem
    correct as ``greedy`` (None: no greedy rows, as a run from before they existed)."""
    samples = tuple(EvalSample("b", f"b/{p}", i, sampled, 10, False, 0.5, 4)
                    for p in range(10) for i in range(4))
    greedy_rows = () if greedy is None else tuple(
        EvalSample("b", f"b/{p}", 0, greedy, 12, False, None, 4) for p in range(10))
    return StudyRun(f"{label}-{seed}", label, "FINISHED", {"cell": label, "seed": str(seed)},
                    metrics={"eval/overall/gold_nll_digits": 0.5 + seed},
                    evaluations=samples, greedy=greedy_rows)


def test_interval_table_gives_greedy_its_interval_and_paired_difference():
    runs = (_run("base", 0, True, False), _run("sharp", 0, True, True),
            _run("sharp", 1, True, True), _run("old", 0, True, None))
    table = interval_table(Study("toy", "", None, runs), "base", 4)
    base, sharp, old = (columns(table, i) for i in range(3))
    assert sharp["greedy [95 %]"] == "1.000 [1.000, 1.000]"
    assert sharp["Δ greedy vs base [95 %]"] == "+1.000 [+1.000, +1.000]"
    assert sharp["Δ avg@4 vs base [95 %]"] == "+0.000 [+0.000, +0.000]"  # samples: the same
    assert sharp["gold NLL digits"] == "1.000" and sharp["gold NLL other"] == "–"  # seed mean
    assert base["Δ greedy vs base [95 %]"] == "–"  # the baseline itself
    assert old["greedy [95 %]"] == old["Δ greedy vs base [95 %]"] == "–"
    assert table.endswith(LEGEND)
