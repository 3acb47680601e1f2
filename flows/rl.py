"""The rl_after_distill flow: the same GRPO budget from every distilled student of a study,
each evaluated before and after, as child runs tagged with the distillation run they start from;
the before → after table goes to the study's parent run, and the study's report is rebuilt with
its "RL after distillation" section."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows.common import locations, run_directory, study_report
from tasks.experiment import (
    RLFlowConfig,
    before_after_table,
    eval_config,
    grpo_config,
    rl_sources,
)
from tasks.prefect_tasks import (
    RunRef,
    evaluate_task,
    finish_run_task,
    log_text_task,
    rl_inputs_task,
    rl_task,
    start_run_task,
)


@flow(name="rl_after_distill", log_prints=True)
def rl_after_distill_flow(config: RLFlowConfig = RLFlowConfig()) -> dict:
    """GRPO from each source student; returns the before → after table and the run ids."""
    where = locations()
    inputs = rl_inputs_task(config, where["root"])
    run_dir = run_directory(where["root"], config.name)
    parent = start_run_task(where["tracking_uri"], config.name, f"{config.name} study",
                            {"study": "rl_after_distill"}, {"rl": config.model_dump()})
    rows = []
    try:
        study, sources = rl_sources(config, where["tracking_uri"])
        for source in sources:
            out = run_dir / source["label"].replace(" ", "-").replace(":", "-")
            run = start_run_task(where["tracking_uri"], config.name, f"grpo {source['label']}",
                                 {"cell": source["label"], "source_run": source["source_run"],
                                  "stage": "rl"}, {"rl": config.model_dump(), **source},
                                 parent)
            before = evaluate_task(eval_config(config, inputs, source["checkpoint"]),
                                   str(out / "eval-before"), where["store_url"], run, 0,
                                   where["root"])
            grpo = grpo_config(config, inputs, source, str(out / "grpo"))
            trained = rl_task(grpo, run)
            after = evaluate_task(eval_config(config, inputs, trained["checkpoint"]),
                                  str(out / "eval-after"), where["store_url"], run,
                                  config.steps, where["root"])
            finish_run_task(run, "FINISHED")
            rows.append({"label": source["label"], "run_id": run.run_id,
                         "before": before["metrics"], "after": after["metrics"],
                         "checkpoint": trained["checkpoint"]})
        table = before_after_table(rows, config.eval_ks)
        finish_run_task(parent, "FINISHED", text={"rl_results.md": table + "\n"})
        if study is not None:  # the distillation study gets the table and a rebuilt report
            log_text_task(RunRef(where["tracking_uri"], study), table + "\n", "rl_results.md")
            study_report(where, study, run_dir)
    except BaseException:
        finish_run_task(parent, "FAILED")
        raise
    print(table)
    return {"parent_run_id": parent.run_id, "rows": rows, "table": table,
            "run_dir": str(Path(run_dir))}
