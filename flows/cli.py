"""`distill`: the command line. Subcommands mirror the flows and the local services.

    distill grid configs/demo.yaml     the study (the main job)
    distill run CONFIG                 one experiment (the distill flow)
    distill eval [--config YAML] [--model DIR ...]
    distill rl [--config YAML]         GRPO from every student of the newest grid study
    distill bootstrap [--real-weights] / distill prepare CONFIG
    distill serve [--cron "0 2 * * *"] [--timezone UTC] [--pool distill-pool]
    distill up / down / status         local Prefect + MLflow servers (SQLite) on 127.0.0.1
    distill up --postgres DSN          the same on PostgreSQL, with the rollout store
    distill report [--experiment NAME] [--run ID] [--html OUT [--attach]]
                                       a grid's results table, or its HTML tradeoff report
    distill replay                     send to MLflow what runs could not (server was down)

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
from pathlib import Path

from tasks.artifacts import ROOT_ENV, artifact_root


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
    evaluate = commands.add_parser("eval", help="evaluate models (the evaluate flow)")
    evaluate.add_argument("--config", type=Path, help="YAML file of EvaluateFlowConfig fields")
    evaluate.add_argument("--model", action="append", default=[],
                          help="model directory (repeatable; none: newest registered students)")
    evaluate.add_argument("--benchmark", action="append", default=[],
                          help="'default', a file, or name=path (repeatable)")
    rl = commands.add_parser("rl", help="GRPO after distillation (the rl_after_distill flow)")
    rl.add_argument("--config", type=Path, help="YAML file of RLFlowConfig fields")
    boot = commands.add_parser("bootstrap", help="build the default (or real-weights) models")
    boot.add_argument("--real-weights", action="store_true")
    serve = commands.add_parser("serve", help="serve the flows as Prefect deployments")
    serve.add_argument("--cron", default="0 2 * * *", help="nightly evaluation schedule")
    serve.add_argument("--timezone", default="UTC")
    serve.add_argument("--pool", default="distill-pool",
                       help="work pool to register study-run on (executor: pool studies)")
    up = commands.add_parser("up", help="start local Prefect and MLflow servers")
    up.add_argument("--prefect-port", type=int, default=4200)
    up.add_argument("--mlflow-port", type=int, default=5000)
    up.add_argument("--postgres", metavar="DSN",
                    help="postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE: Prefect, MLflow and "
                         "the rollout store keep their state there, in databases DATABASE_prefect, "
                         "_mlflow and _store (created if missing); default $DISTILL_LAB_POSTGRES, "
                         "else SQLite files")
    commands.add_parser("down", help="stop the servers `distill up` started")
    commands.add_parser("status", help="show the servers `distill up` started")
    commands.add_parser("replay", help="send what runs could not send to MLflow (spill files)")
    report = commands.add_parser("report", help="a grid's results table, or its HTML report")
    report.add_argument("--experiment", default="demo")
    report.add_argument("--run", help="parent run id (default: the experiment's newest grid)")
    report.add_argument("--html", type=Path, metavar="OUT",
                        help="write the tradeoff report (plots, tables, samples) to this file")
    report.add_argument("--attach", action="store_true",
                        help="with --html: also attach it as report.html of the grid run")
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
        print(f"distill {args.command}: interrupted; the run was marked KILLED and the same "
              "command resumes it", file=sys.stderr)
        return 130
    except Exception as error:
        if args.debug:
            raise
        print(f"distill {args.command}: {_one_line(error)}", file=sys.stderr)
        return 2


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

    with temporary_prefect_server():
        return command(args) or 0


def _interrupt_on_sigterm() -> None:
    """SIGTERM (kill, a scheduler stopping the job) ends the command as Ctrl-C does: the open
    run is marked KILLED and temporary servers are stopped, instead of dying mid-write."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def _one_line(error: BaseException) -> str:
    """An error as one line: the user's mistake as written, a full disk as such, anything
    unexpected with its type and a pointer to --debug."""
    from tasks.runs import describe_os_error

    cause = error
    while cause is not None:  # a full disk may surface as a database error several layers up
        if "No space left" in describe_os_error(cause):
            return describe_os_error(cause)
        cause = cause.__cause__ or cause.__context__
    text = (str(error).strip().splitlines() or [""])[0]
    if isinstance(error, (ValueError, FileNotFoundError, ConnectionError, RuntimeError)):
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
    _where_to_look(result["tracking_uri"], config.name)


def _run(args) -> None:
    from flows.distill import distill_flow

    config = args.experiment
    result = distill_flow(config)
    print({k: v for k, v in result.items() if k != "train"})


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
    for label, result in evaluate_flow(config).items():
        print(label, {k: round(v, 4) for k, v in result["metrics"].items()
                      if k.startswith("eval/overall/")})


def _rl(args) -> None:
    from flows.rl import rl_after_distill_flow
    from tasks.configs import RLFlowConfig, load_config

    config = load_config(args.config, RLFlowConfig) if args.config else RLFlowConfig()
    print(f"\n{rl_after_distill_flow(config)['table']}")


def _bootstrap(args) -> None:
    from flows.prepare import bootstrap_flow
    from tasks.configs import BootstrapFlowConfig

    print(bootstrap_flow(BootstrapFlowConfig(profile="real-weights" if args.real_weights
                                             else "default")))


def _serve(args) -> None:
    from flows.serve import serve

    if not os.environ.get("PREFECT_API_URL"):
        print("PREFECT_API_URL is not set: deployments need a running server (`distill up`, "
              "then export the PREFECT_API_URL it prints)", file=sys.stderr)
        raise SystemExit(2)
    serve(args.cron, args.timezone, pool=args.pool)


def _services_dir() -> Path:
    return artifact_root() / "services"


def _up(args) -> None:
    import shlex

    from tasks.services import POSTGRES_ENV, up

    info = up(_services_dir(), prefect_port=args.prefect_port, mlflow_port=args.mlflow_port,
              postgres=args.postgres or os.environ.get(POSTGRES_ENV) or None)
    print(f"Prefect UI: {info['prefect_ui']}\nMLflow UI:  {info['mlflow_ui']}\n"
          f"State:      {info['database']}\nexport "
          + " ".join(f"{k}={shlex.quote(v)}" for k, v in info["env"].items()))


def _down(args) -> None:
    from tasks.services import down

    print("\n".join(down(_services_dir())) or "nothing was running")


def _status(args) -> None:
    from tasks.services import status

    print(status(_services_dir()))


def _report(args) -> int:
    from tasks.study import grid_report
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


def _where_to_look(tracking_uri: str, experiment: str) -> None:
    print(f"MLflow: experiment {experiment!r} at {tracking_uri}")
    if tracking_uri.startswith("sqlite:"):
        print(f"  browse: mlflow ui --backend-store-uri {tracking_uri} --workers 1  "
              "(or `distill up` and set MLFLOW_TRACKING_URI)")
    print("Prefect: " + (os.environ.get("PREFECT_API_URL") or "ran on a temporary local server; "
                         "`distill up` keeps one with a UI, then export PREFECT_API_URL"))


def _replay(args) -> None:
    from tasks.runs import locations
    from tasks.tracking import Tracker

    where = locations()
    with Tracker(where.tracking_uri, artifacts_dir=where.root) as tracker:
        sent = tracker.replay_all()
    print(f"sent {sum(sent.values())} records of {len(sent)} runs to {where.tracking_uri}"
          if sent else f"nothing to send: {tracker.spill_dir} holds no spill files")


FLOW_COMMANDS = {"grid", "run", "prepare", "eval", "rl", "bootstrap"}
COMMANDS = {"grid": _grid, "run": _run, "prepare": _prepare, "eval": _eval, "rl": _rl,
            "bootstrap": _bootstrap, "serve": _serve, "up": _up, "down": _down,
            "status": _status, "report": _report, "replay": _replay}


if __name__ == "__main__":
    raise SystemExit(main())
