"""`distill`: the command line. Subcommands mirror the flows and the local services.

    distill grid configs/demo.yaml     the study (the main job)
    distill run CONFIG                 one experiment (the distill flow)
    distill eval [--config YAML] [--model DIR ...]
    distill rl [--config YAML]         GRPO from every student of the newest grid study
    distill bootstrap [--profile NAME] / distill prepare CONFIG
    distill serve [--cron "0 2 * * *"] [--timezone UTC] [--pool distill-pool]
                                       the flows as Prefect deployments (the UI's forms)
    distill up / down / status         local Prefect + MLflow servers (SQLite) on 127.0.0.1
    distill up --postgres DSN          the same on PostgreSQL, with the rollout store
    distill report [--experiment NAME] [--run ID] [--html OUT [--attach]]
                                       a grid's results table, or its HTML tradeoff report
    distill replay                     send to MLflow what runs could not (server was down)
    distill findings docs/findings.json [--readme README.md] [--study docs/study.md]
                                       the findings as Markdown, or rewrite those files' blocks

Honours MLFLOW_TRACKING_URI and PREFECT_API_URL; --artifacts DIR (or DISTILL_LAB_ARTIFACTS)
says where caches, checkpoints, the SQLite store and the default MLflow database live. Without
PREFECT_API_URL the flows run locally on a temporary Prefect server. The same command again
after a kill resumes the run; an error is one line (--debug shows the traceback).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from tasks.artifacts import ROOT_ENV, artifact_root
from tasks.profiles import DEFAULT, PROFILE_HELP, PROFILES

# Each subcommand imports its flow inside its function: `distill --help`, up, down and status
# then start in a fraction of a second, without loading torch, transformers and Prefect.


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distill", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", help=f"artifact/cache directory (${ROOT_ENV}, default "
                                            "./artifacts)")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of one line")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text, model in (
            ("grid", "run a study (the grid flow: cells × seeds, findings)", "StudyConfig"),
            ("run", "run the distill flow (one run) from a YAML config", "ExperimentConfig"),
            ("prepare", "resolve and cache an experiment's inputs", "ExperimentConfig")):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("config", type=Path, help=f"YAML file of {model} fields "
                                                    "(tasks/configs.py)")
    evaluate = commands.add_parser("eval", help="evaluate models (the evaluate flow)",
                                   description="Evaluate models with the study's evaluation "
                                   "procedure: one parent MLflow run, a child per model.")
    evaluate.add_argument("--config", type=Path, help="YAML file of EvaluateFlowConfig fields")
    evaluate.add_argument("--model", action="append", default=[],
                          help="model directory (repeatable; none: newest registered students)")
    evaluate.add_argument("--benchmark", action="append", default=[],
                          help="'default', a file, or name=path (repeatable)")
    rl = commands.add_parser("rl", help="GRPO after distillation (the rl_after_distill flow)")
    rl.add_argument("--config", type=Path, help="YAML file of RLFlowConfig fields (default: "
                    "GRPO from every student of the newest 'demo' study)")
    boot = commands.add_parser("bootstrap", help="build a profile's models and problems")
    boot.add_argument("--profile", choices=list(PROFILES), default=DEFAULT, help=PROFILE_HELP)
    boot.add_argument("--real-weights", dest="profile", action="store_const",
                      const="real-weights", help="the same as --profile real-weights")
    serve = commands.add_parser(
        "serve", help="serve the flows as Prefect deployments",
        description="Register the deployments (distill, grid, bootstrap, rl-after-distill, and "
        "nightly-evaluate on a schedule) with the Prefect server of $PREFECT_API_URL and run "
        "their flow runs here until stopped (Ctrl-C, or `distill down`). Stopping leaves the "
        "deployments and the nightly schedule as they are.")
    serve.add_argument("--cron", default="0 2 * * *",
                       help="the nightly evaluation's cron schedule (default: %(default)s)")
    serve.add_argument("--timezone", default="UTC",
                       help="time zone of --cron, e.g. Europe/Paris (default: %(default)s)")
    serve.add_argument("--pool", default="distill-pool",
                       help="work pool to register study-run on, created as a process pool "
                       "if missing (studies with executor: pool; default: %(default)s)")
    up = commands.add_parser("up", help="start local Prefect and MLflow servers",
                             description="Start a Prefect server (with its UI) and an MLflow "
                             "server on 127.0.0.1 in the background; they keep running until "
                             "`distill down`. Prints the two UI addresses and the variables "
                             "to export.")
    up.add_argument("--prefect-port", type=int, default=4200,
                    help="the Prefect server's port (default: %(default)s)")
    up.add_argument("--mlflow-port", type=int, default=5000,
                    help="the MLflow server's port (default: %(default)s)")
    up.add_argument("--postgres", metavar="DSN",
                    help="postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE: Prefect, MLflow and "
                         "the rollout store keep their state there, in databases DATABASE_prefect, "
                         "_mlflow and _store (created if missing); default $DISTILL_LAB_POSTGRES, "
                         "else SQLite files")
    commands.add_parser("down", help="stop the servers `distill up` started (and a `distill "
                        "serve` that serves them)")
    commands.add_parser("status", help="show the servers `distill up` started and a running "
                        "`distill serve`")
    commands.add_parser("replay", help="send what runs could not send to MLflow (spill files)")
    report = commands.add_parser("report", help="a grid's results table, or its HTML report")
    report.add_argument("--experiment", default="demo",
                        help="MLflow experiment of the grid study (default: %(default)s)")
    report.add_argument("--run", help="parent run id (default: the experiment's newest grid)")
    report.add_argument("--html", type=Path, metavar="OUT",
                        help="write the tradeoff report (plots, tables, samples) to this file")
    report.add_argument("--attach", action="store_true",
                        help="with --html: also attach it as report.html of the grid run")
    findings = commands.add_parser(
        "findings", help="a findings.json as Markdown, or the README's findings block rewritten")
    findings.add_argument("findings_json", type=Path, metavar="FINDINGS_JSON",
                          help="e.g. docs/findings.json (missing: 'not measured yet')")
    findings.add_argument("--readme", type=Path, metavar="README",
                          help="rewrite the block between <!-- findings:start --> and "
                               "<!-- findings:end --> in this file (one row per claim) "
                               "instead of printing")
    findings.add_argument("--study", type=Path, metavar="STUDY_MD",
                          help="rewrite that block in this file with every effect and its "
                               "interval (e.g. docs/study.md)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.artifacts:
        os.environ[ROOT_ENV] = str(Path(args.artifacts).resolve())
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.stdout.reconfigure(line_buffering=True)
    _interrupt_on_sigterm()
    try:
        if args.command in ("grid", "run", "prepare"):  # one line before any server starts
            args.experiment = _experiment(args.config, study=args.command == "grid")
        if args.command == "grid" and args.experiment.executor == "pool":
            _check_pool(args.experiment)
        if args.command in FLOW_COMMANDS and not _prefect_api_url():
            return _with_temporary_server(COMMANDS[args.command], args)
        return COMMANDS[args.command](args) or 0
    except KeyboardInterrupt:
        print(f"distill {args.command}: interrupted; {_killed_runs()}the same command resumes "
              "it", file=sys.stderr)
        return 130
    except Exception as error:
        if args.debug:
            raise
        print(f"distill {args.command}: {_one_line(error)}", file=sys.stderr)
        from tasks.tracking import TrackingOutage

        return TRACKING_OUTAGE_EXIT if isinstance(error, TrackingOutage) else 2


def _prefect_api_url() -> str | None:
    """The Prefect API the flows report to: $PREFECT_API_URL or a profile's setting."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


def _check_pool(config) -> None:
    """executor pool, before the flow starts: the pool's server answers, the pool has a live
    worker and study-run (flows.pool.check_pool), so that a server that is not there is named
    with the pool within seconds, not as Prefect's own "Failed to reach API"."""
    from flows.pool import check_pool

    if not _prefect_api_url():
        raise ValueError(f"executor pool: work pool {config.work_pool!r} is on the Prefect "
                         "server its workers use, and PREFECT_API_URL is not set: export it "
                         "(`distill up` prints it; infra/README.md)")
    check_pool(config)


def _with_temporary_server(command, args) -> int:
    """Run a flow command against a temporary Prefect server that dies with this process."""
    from tasks.services import temporary_prefect_server

    args.temporary_prefect = True  # what the flows ran on is gone afterwards: no UI link
    with temporary_prefect_server():
        try:
            return command(args) or 0
        finally:
            _send_pending_flow_logs()


def _send_pending_flow_logs() -> None:
    """Send the flow's queued log lines while its temporary server still runs (at most 5 s).
    Left queued, Prefect retries them at exit against the stopped server for about a minute
    and then prints 'Error logging to API'."""
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=5)


def _interrupt_on_sigterm() -> None:
    """SIGTERM (kill, a scheduler stopping the job) ends the command as Ctrl-C does: the open
    run is marked KILLED and temporary servers are stopped, instead of dying mid-write."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    sys.unraisablehook = _redeliver_swallowed_interrupts(sys.unraisablehook)


def _redeliver_swallowed_interrupts(default_hook):
    """An interrupt raised while Python runs a finaliser or weakref callback (SQLAlchemy's
    cleanup, say) is printed and dropped, and the command ran on to the end. Send the signal
    again: its handler then raises where the code can see it."""
    def hook(unraisable) -> None:
        error = unraisable.exc_value
        number = getattr(error, "signal", None)  # Prefect's TerminationSignal carries it
        if isinstance(error, KeyboardInterrupt):
            number = signal.SIGTERM if error.args == (f"signal {signal.SIGTERM}",) else (
                signal.SIGINT)
        if number is None:
            default_hook(unraisable)
            return
        # From another thread, a moment later: raised inside this hook it would be dropped too.
        again = threading.Timer(0.05, os.kill, (os.getpid(), number))
        again.daemon = True
        again.start()

    return hook


# EX_TEMPFAIL: the work is kept and closed as after a kill; trying again later completes it.
TRACKING_OUTAGE_EXIT = 75


def _killed_runs() -> str:
    """'MLflow run X was marked KILLED; ' for the runs this command closed so, else ''."""
    from tasks.runs import KILLED_HERE

    if not KILLED_HERE:  # interrupted before any run opened (a bootstrap, a wait, preflight)
        return ""
    runs = ", ".join(KILLED_HERE)
    return f"MLflow run{'s' * (len(KILLED_HERE) > 1)} {runs} marked KILLED; "


def _one_line(error: BaseException) -> str:
    """An error as one line: the user's mistake as written, a full disk as such, anything
    unexpected with its type and a pointer to --debug."""
    from tasks.files import WriteError
    from tasks.runs import describe_os_error

    cause = error
    while cause is not None:  # a full disk may surface as a database error several layers up
        if "No space left" in describe_os_error(cause):
            return describe_os_error(cause)
        cause = cause.__cause__ or cause.__context__
    text = (str(error).strip().splitlines() or [""])[0]
    if isinstance(error, (ValueError, FileNotFoundError, ConnectionError, RuntimeError,
                          WriteError)):  # WriteError: any refused write, named by its file
        return text
    return f"{type(error).__name__}: {text} (--debug shows the traceback)"


def _experiment(path: Path, study: bool = False):
    """The YAML config (a StudyConfig for the grid, else an ExperimentConfig), checked with
    everything that can be checked before any work (tracking reachable, free space, models
    available) so a mistake is one line, not a failed flow."""
    from tasks.configs import ExperimentConfig, StudyConfig, load_config
    from tasks.runs import preflight

    config = load_config(path, StudyConfig if study else ExperimentConfig)
    preflight(config)
    return config


def _grid(args) -> None:
    from flows.grid import grid_flow

    config = args.experiment
    result = grid_flow(config)
    print(f"\n{result['table']}\n")
    _where_to_look(args, result)


def _run(args) -> None:
    from flows.distill import distill_flow
    from tasks.tables import results_table

    config = args.experiment
    result = distill_flow(config)
    print(f"\n{results_table([result], config.eval_ks)}\n")
    print(f"student: {result['checkpoint']}")
    _where_to_look(args, result)


def _prepare(args) -> None:
    from flows.prepare import prepare_flow

    print(prepare_flow(args.experiment))


def _eval(args) -> None:
    from flows.evaluate import evaluate_flow
    from tasks.configs import EvaluateFlowConfig, load_config

    config = load_config(args.config, EvaluateFlowConfig) if args.config else EvaluateFlowConfig()
    updates = {"models": args.model} if args.model else {}
    if args.benchmark:
        updates["benchmarks"] = args.benchmark
    config = EvaluateFlowConfig(**{**config.model_dump(), **updates})
    results = evaluate_flow(config)
    if results:  # the night's table: each model's settings, its study's number beside, a flag
        first = next(iter(results.values()))
        print(f"\n{first['table']}")
        _where_to_look(args, first)


def _rl(args) -> None:
    from flows.rl import rl_after_distill_flow
    from tasks.configs import RLFlowConfig, load_config

    config = load_config(args.config, RLFlowConfig) if args.config else RLFlowConfig()
    print(f"\n{rl_after_distill_flow(config)['table']}")


def _bootstrap(args) -> None:
    from flows.prepare import bootstrap_flow
    from tasks.configs import BootstrapFlowConfig

    print(bootstrap_flow(BootstrapFlowConfig(profile=args.profile)))


def _serve(args) -> None:
    from flows.serve import serve
    from tasks.services import serving

    api_url = os.environ.get("PREFECT_API_URL")
    if not api_url:
        print("PREFECT_API_URL is not set: deployments need a running server (`distill up`, "
              "then export the PREFECT_API_URL it prints)", file=sys.stderr)
        raise SystemExit(2)
    with serving(_services_dir(), api_url):
        serve(args.cron, args.timezone, pool=args.pool)
    print("distill serve stopped. The deployments and the nightly schedule stay as they were; "
          "until `distill serve` runs again, scheduled runs wait as Late (pause the schedule in "
          "the Prefect UI to skip them).")


def _services_dir() -> Path:
    return artifact_root() / "services"


def _up(args) -> None:
    import shlex

    from tasks.services import POSTGRES_ENV, up

    info = up(_services_dir(), prefect_port=args.prefect_port, mlflow_port=args.mlflow_port,
              postgres=args.postgres or os.environ.get(POSTGRES_ENV) or None)
    if info["already_running"]:
        print("The servers already run (pids " + ", ".join(
            f"{name} {pid}" for name, pid in info["pids"].items()) + "); nothing started.")
    print(f"Prefect UI: {info['prefect_ui']}\nMLflow UI:  {info['mlflow_home']}\n"
          f"State:      {info['database']}\nexport "
          + " ".join(f"{k}={shlex.quote(v)}" for k, v in info["env"].items()))


def _down(args) -> None:
    from tasks.services import down

    stopped = down(_services_dir())
    print("\n".join(f"stopped {line}" if not line.endswith("not these servers") else line
                    for line in stopped) or "nothing was running")


def _status(args) -> None:
    from tasks.services import describe_status

    print("\n".join(describe_status(_services_dir())))


def grid_report(tracking_uri: str, experiment: str, parent_run_id: str | None = None) -> str:
    """The results table of a grid study, read back from MLflow (the newest, unless given)."""
    from tasks.study import newest_grid, read_study
    from tasks.tables import results_table
    from tasks.tracking import Tracker

    with Tracker(tracking_uri) as tracker:
        parent = parent_run_id or newest_grid(tracker, experiment)
        if parent is None:
            raise ValueError(f"no grid run in experiment {experiment!r} at {tracking_uri}; "
                             "run `distill grid CONFIG` first")
        study = read_study(tracker, parent_run_id=parent)
    rows = [{"cell": run.name, "metrics": dict(run.metrics), "train": dict(run.metrics)}
            for run in study.runs]
    return f"grid run {parent}\n" + results_table(rows, study.eval_ks or [1])


def _report(args) -> int:
    from tasks.tracking import default_tracking_uri

    if args.html is None:
        if args.attach:
            raise ValueError("--attach needs --html OUT")
        print(grid_report(default_tracking_uri(), args.experiment, args.run))
        return 0
    from dashboards.report import main as report_main

    argv = ["--output", str(args.html), "--tracking-uri", default_tracking_uri()]
    argv += ["--run", args.run] if args.run else ["--experiment", args.experiment]
    return report_main(argv + (["--attach"] if args.attach else []))


def _where_to_look(args, result: dict) -> None:
    """Where to look next: the flow's MLflow links (training view) and its Prefect run."""
    from flows.common import LINK_NAMES

    print("Where to look:")
    for name, url in result.get("links", {}).items():
        print(f"  {LINK_NAMES.get(name, name)}: {url.strip('`')}")
    if getattr(args, "temporary_prefect", False):
        print("  Prefect: the flow ran on a temporary local server, gone now; `distill up` "
              "keeps one with a UI (then export the PREFECT_API_URL it prints)")
    else:
        print(f"  Prefect flow run: {result.get('prefect_run_url')}")


def _replay(args) -> None:
    from tasks.runs import locations
    from tasks.tracking import Tracker

    where = locations()
    with Tracker(where.tracking_uri, artifacts_dir=where.root) as tracker:
        sent = tracker.replay_all()
    print(f"sent {sum(sent.values())} records of {len(sent)} runs to {where.tracking_uri}"
          if sent else f"nothing to send: {tracker.spill_dir} holds no spill files")


def _findings(args) -> None:
    from tasks.findings import findings_markdown, update_readme

    if args.readme is None and args.study is None:
        print(findings_markdown(args.findings_json))
        return
    for path, summary in ((args.readme, True), (args.study, False)):
        if path is not None:
            changed = update_readme(args.findings_json, path, summary=summary)
            print(f"{path}: findings block {'rewritten' if changed else 'already up to date'} "
                  f"from {args.findings_json}")


FLOW_COMMANDS = {"grid", "run", "prepare", "eval", "rl", "bootstrap"}
COMMANDS = {"grid": _grid, "run": _run, "prepare": _prepare, "eval": _eval, "rl": _rl,
            "bootstrap": _bootstrap, "serve": _serve, "up": _up, "down": _down,
            "status": _status, "report": _report, "replay": _replay, "findings": _findings}


if __name__ == "__main__":
    raise SystemExit(main())
