"""The rl_after_distill flow: the same GRPO budget from every distilled student of a study,
each evaluated before and after, as child runs tagged with the distillation run they start from;
the before → after table goes to the study's parent run, and the study's report is rebuilt with
its "RL after distillation" section."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.common import links_task, publish, study_report
from tasks.configs import RLFlowConfig
from tasks.inputs import check_rl_lengths_fit
from tasks.plan import eval_config, grpo_config, rl_source_spec, rl_spec
from tasks.prefect_tasks import (
    evaluate_task,
    log_text_task,
    preflight_task,
    rl_inputs_task,
    rl_task,
    run_results_task,
    tracked_run,
)
from tasks.rl_sources import rl_sources
from tasks.runs import RunRef
from tasks.tables import before_after_table


@flow(name="rl_after_distill", log_prints=True)
def rl_after_distill_flow(config: RLFlowConfig = RLFlowConfig()) -> dict:
    """GRPO from each source student; returns the before → after table and the run ids."""
    where = preflight_task(config)
    inputs = rl_inputs_task(config, str(where.root))
    study, sources = rl_sources(config, where.tracking_uri, get_run_logger().warning)
    check_rl_lengths_fit(config, sources)  # before any run opens, not after an evaluation
    spec = rl_spec(config, inputs, where.root)
    rows = []
    with tracked_run(spec, where.tracking_uri) as parent:
        for source in sources:
            rows.append(_grpo_from(config, inputs, source, where, spec.run_dir,
                                   parent.ref.run_id))
        table = before_after_table(rows, config.eval_ks)
        if not parent.finished:
            parent.end.text["rl_results.md"] = table + "\n"
            if study is not None:  # the distillation study gets the table and a rebuilt report
                log_text_task(RunRef(where.tracking_uri, study), table + "\n", "rl_results.md")
                study_report(where, study, spec.run_dir)
    print(table)
    links = links_task(where.tracking_uri, parent.ref.run_id, max(config.eval_ks))
    publish(f"rl-{config.name}", f"GRPO after distillation ({config.name})", links,
            "## Before → after GRPO\n\n" + table)
    return {"parent_run_id": parent.ref.run_id, "rows": rows, "table": table,
            "run_dir": str(spec.run_dir), "links": links}


def _grpo_from(config: RLFlowConfig, inputs, source: dict, where, study_dir,
               parent_run_id: str) -> dict:
    """One source student: evaluate, GRPO, evaluate again — one tracked child run."""
    spec = rl_source_spec(config, inputs, source, study_dir, parent_run_id)
    with tracked_run(spec, where.tracking_uri) as run:
        if run.finished:
            metrics = run_results_task(run.ref, before_after=True)
            return {"label": source["label"], "run_id": run.ref.run_id, **metrics}
        before = evaluate_task(eval_config(config, inputs, source["checkpoint"]),
                               str(spec.run_dir / "eval-before"), where.store_url, run.ref, 0,
                               str(where.root), label=f"{source['label']} before GRPO")
        trained = rl_task(grpo_config(config, inputs, source, str(spec.run_dir / "grpo")),
                          run.ref)
        after = evaluate_task(eval_config(config, inputs, trained["checkpoint"]),
                              str(spec.run_dir / "eval-after"), where.store_url, run.ref,
                              config.steps, str(where.root), label=f"{source['label']} after GRPO")
    return {"label": source["label"], "run_id": run.ref.run_id, "before": before["metrics"],
            "after": after["metrics"], "checkpoint": trained["checkpoint"]}
