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


def test_the_nightly_table_puts_each_models_settings_and_study_number_beside_tonights():
    from tasks.evaluate import EvalConfig
    from tasks.tables import AGREES, DIFFERS, NO_STUDY, OTHER_PROCEDURE, nightly_table

    config = EvalConfig("m", ("b=x.jsonl",), n=4, ks=(1, 4), temperature=0.7,
                        max_new_tokens=96, limit=20)
    tonight = {"eval/overall/avg_at_4": 0.1, "eval/overall/problems": 20.0,
               "eval/overall/seconds": 12.4}

    def row(model, study_avg=None, identity="same", settings="its study"):
        study = {"metrics": {"eval/overall/avg_at_4": study_avg}, "identity": "same"}
        return {"model": model, "settings": settings, "config": config, "metrics": tonight,
                "study": study if study_avg is not None else {}, "identity": identity}

    table = nightly_table([row("distill-sft v1", 0.1), row("distill-opd v3", 0.05),
                           row("distill-rl v1", 0.05, identity="other"),
                           row("given", settings="the flow's (given model)")])
    same, differs, other, given = (columns(table, i) for i in range(4))
    assert table.splitlines()[0].startswith("| model | settings |")
    assert (same["problems"], same["samples"], same["T"], same["cap"], same["k"]) == (
        "20", "4", "0.7", "96", "4")
    assert (same["avg@k"], same["study"], same["Δ"], same["agrees"]) == (
        "0.100", "0.100", "+0.000", AGREES)
    assert (differs["study"], differs["Δ"], differs["agrees"]) == ("0.050", "+0.050", DIFFERS)
    assert other["agrees"] == OTHER_PROCEDURE  # evaluated otherwise: Δ is no discrepancy
    assert (given["study"], given["Δ"], given["agrees"]) == ("–", "–", NO_STUDY)
    assert same["eval s"] == "12" and "train FLOPs" not in table
    assert "Δ = tonight − study" in table and table.endswith(LEGEND)
