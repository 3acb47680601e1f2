"""The deployments `distill serve` registers: their forms' defaults are the main job's (a run
submitted from the Prefect UI untouched trains and evaluates exactly as `distill grid
configs/demo.yaml` does, so it hits the same caches), the nightly evaluation uses the study's
procedure, every form field says what it is for, the one that needs a worker says how to
start it, and the serve terminal says each thing once."""

import inspect
import logging
import re

import pytest

from flows.serve import MAIN_JOB, OncePerWait, deployments, main_job, study_run_deployment
from tasks.configs import (
    BootstrapFlowConfig,
    EvaluateFlowConfig,
    ExperimentConfig,
    RLFlowConfig,
    StudyConfig,
    load_config,
)
from tasks.inputs import Inputs
from tasks.plan import (
    Cell,
    cells,
    eval_config,
    flow_eval_config,
    teacher_product_configs,
    train_config,
)

INPUTS = Inputs(teacher="/m/teacher", student="/m/student", train_problems="/d/train.jsonl",
                held_out_problems="/d/held_out.jsonl", benchmarks=("/d/test.jsonl",))


@pytest.fixture(scope="module")
def forms() -> dict:
    """What each deployment's run form submits when nothing is changed: the deployment's
    parameters over the defaults of its parameter schema (what the Prefect UI fills in)."""
    found = {}
    for deployment in deployments():
        schema = deployment._parameter_openapi_schema.model_dump()
        default = schema["properties"]["config"].get("default", {})
        found[deployment.name] = {**default, **deployment.parameters.get("config", {})}
    return found


def test_the_grid_form_is_the_main_job(forms):
    assert StudyConfig(**forms["grid"]) == load_config(MAIN_JOB, StudyConfig) == main_job()


def test_the_distill_form_trains_and_evaluates_as_the_main_jobs_cell(forms, tmp_path):
    ui = ExperimentConfig(**forms["distill"])
    study = main_job()
    assert ui.objective in study.cells and ui.seed in study.seeds
    cell = Cell(ui.objective)
    assert cell in cells(study)
    from_ui = train_config(ui, INPUTS, cell, ui.seed, tmp_path / "a", tmp_path)
    from_yaml = train_config(study, INPUTS, cell, ui.seed, tmp_path / "b", tmp_path)
    assert from_ui.fingerprint() == from_yaml.fingerprint()  # the same trained weights
    assert eval_config(ui, INPUTS, "m") == eval_config(study, INPUTS, "m")
    # the same teacher rollouts and score caches: keyed by these configs
    assert ([t.fingerprint() for t in teacher_product_configs(ui, INPUTS, [cell], tmp_path)]
            == [t.fingerprint() for t in teacher_product_configs(study, INPUTS, [cell],
                                                                 tmp_path)])


def test_the_nightly_evaluation_uses_the_studys_procedure(forms):
    nightly = EvaluateFlowConfig(**forms["nightly-evaluate"])
    assert nightly.models == []  # the newest registered students
    assert (flow_eval_config(nightly, "m", INPUTS.benchmarks)
            == eval_config(main_job(), INPUTS, "m"))


def test_the_nightly_deployment_is_scheduled():
    (nightly,) = [d for d in deployments("30 3 * * *", "Europe/Paris")
                  if d.name == "nightly-evaluate"]
    (schedule,) = nightly.schedules
    assert schedule.schedule.cron == "30 3 * * *"
    assert schedule.schedule.timezone == "Europe/Paris"


@pytest.mark.parametrize("model", [ExperimentConfig, StudyConfig, EvaluateFlowConfig,
                                   RLFlowConfig, BootstrapFlowConfig])
def test_every_form_field_is_described_in_plain_text(model):
    """The Prefect UI renders descriptions as Markdown: text that Markdown would turn into a
    quote, a list, a heading, a code block or emphasis does not show as written (the browser
    test compares the rendered text too)."""
    assert model.__doc__
    for name, field in model.model_fields.items():
        text = field.description
        assert text and text.strip() == text, f"{model.__name__}.{name} has no description"
        assert not text.startswith((">", "-", "+", "*", "#", "    ", "1.")), (model, name)
        for pitfall in ("*", "`", "__", "<", "\n"):
            assert pitfall not in text, f"{model.__name__}.{name}: {pitfall!r} in {text!r}"


@pytest.mark.slow
@pytest.mark.parametrize(("config", "field"), [
    ({"loss": "sparse", "cache_k": 0}, "cache_k"),
    ({"objective": "sfx"}, "objective"),
])
def test_the_server_refuses_a_bad_form_when_it_is_submitted(prefect_server, config, field):
    """The Prefect server checks a deployment's parameter schema when a run is created (what
    the UI's Run button does): the rules JSON Schema can state are refused there, before the
    run waits in a queue."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError

    from flows.distill import distill_flow

    deployment_id = distill_flow.to_deployment(name="submit-check").apply()
    with get_client(sync_client=True) as client:
        with pytest.raises(PrefectHTTPStatusError, match=field):
            client.create_flow_run_from_deployment(deployment_id, parameters={"config": config})
        accepted = client.create_flow_run_from_deployment(
            deployment_id, parameters={"config": {"loss": "sparse", "cache_k": 8}})
        client.delete_flow_run(accepted.id)


def test_the_deployment_that_needs_a_worker_says_how_to_start_one():
    """study-run runs on a work pool: without a worker the UI shows it Not Ready, and its
    description says why and what to start. The others run in the serve process itself."""
    description = study_run_deployment("gpu-pool").description
    assert "Not Ready" in description
    assert "`prefect worker start --pool gpu-pool --type process --limit 1`" in description
    assert "infra/worker.sh gpu-pool" in description
    assert [d.name for d in deployments() if d.work_pool_name] == []


def test_the_serve_terminal_says_once_that_runs_wait_for_a_free_slot():
    """Prefect's runner logs its "skipped (at capacity)" line on every poll (every 10 s) while
    a run waits for the one in progress: the first of a wait passes, saying what it means;
    the repeats do not, until the count changes or a new wait begins."""
    from prefect.runner._scheduled_run_poller import ScheduledRunPoller

    # the line exactly as the installed Prefect writes it
    (capacity,) = re.findall(r'_logger\.info\("([^"]*at capacity[^"]*)"',
                             inspect.getsource(ScheduledRunPoller))
    logger = logging.getLogger("tests.serve.runner")
    once = OncePerWait(poll_s=10)
    logger.addFilter(once)
    shown: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            shown.append(record.getMessage())

    logger.addHandler(Keep())
    logger.propagate = False
    logger.setLevel(logging.INFO)
    for at, waiting in ((0, 1), (10, 1), (20, 1), (30, 2), (40, 2), (50, 1), (60, 1),
                        (200, 1), (210, 1)):  # 60 → 200: the queue was empty for a while
        record = logger.makeRecord(logger.name, logging.INFO, "poller.py", 148, capacity,
                                   (waiting,), None)
        record.created = float(at)
        logger.handle(record)
    logger.info("Runner 'distill-lab' submitting flow run 'x'")
    assert shown == [f"{n} scheduled runs skipped (at capacity): they start when a flow run in "
                     "progress ends (not repeated while they wait)" for n in (1, 2, 1, 1)] + [
        "Runner 'distill-lab' submitting flow run 'x'"]
