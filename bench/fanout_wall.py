"""Wall time of a 4-run micro-study (2 cells × 2 seeds, tiny models) on a work pool with N
process workers: the README's fan-out figure, and the stack tests/flows/test_fanout.py uses.

Everything on this machine, as a team runs it across machines: Prefect and MLflow servers
(``distill up``'s tasks.services.up, SQLite), study-run registered on a process pool, N workers
started by infra/worker.sh sharing one artifact folder, then the grid flow with executor pool.

    python -m bench.fanout_wall --workers 2     # then --workers 1; prints one line each
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.pool import live_workers
from flows.serve import register_study_run
from tasks.configs import StudyConfig
from tasks.data import write_problems
from tasks.services import down, free_port, up

REPO = Path(__file__).resolve().parents[1]
WORKER_START_S = 300.0
SERVER_START_S = 300.0  # servers and workers start niced, on a loaded machine in the tests


@contextmanager
def pool_stack(root: Path, pool: str, workers: int) -> Iterator[dict]:
    """Prefect + MLflow servers under root, study-run on pool, `workers` process workers (one
    run at a time each, infra/worker.sh) sharing root/artifacts with this process: yields
    {root, services, env} (env: what a worker and the study need exported)."""
    services = up(root / "services", prefect_port=free_port(), mlflow_port=free_port(),
                  timeout_s=SERVER_START_S)
    (root / "artifacts").mkdir(exist_ok=True)
    env = {**os.environ, **services["env"], "DISTILL_LAB_ARTIFACTS": str(root / "artifacts"),
           "DISTILL_LAB_STORE_URL": f"sqlite:///{root / 'artifacts' / 'distill_lab.db'}",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "PYTHON": sys.executable, "PREFECT_WORKER_QUERY_SECONDS": "2"}
    started = []
    try:
        with temporary_settings({PREFECT_API_URL: services["prefect_api"]}):
            register_study_run(pool)
            for index in range(workers):
                name = f"worker-{index}"
                log = open(root / f"{name}.log", "w")  # noqa: SIM115  (the worker writes to it)
                started.append(subprocess.Popen(
                    [str(REPO / "infra" / "worker.sh"), pool],
                    env={**env, "PREFECT_HOME": str(root / name), "WORKER_NAME": name},
                    cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            _wait_for_workers(pool, started, root)
        yield {"root": root, "services": services, "env": env}
    finally:
        _drain_to(services["prefect_api"])
        for worker in started:
            os.killpg(worker.pid, signal.SIGTERM)
        for worker in started:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:  # a Prefect worker can sit out SIGTERM (seen
                os.killpg(worker.pid, signal.SIGKILL)  # in CI, and by hand: a second kill)
                worker.wait(timeout=30)
        down(root / "services", grace_s=SERVER_START_S)  # niced servers stop slowly


def _wait_for_workers(pool: str, workers: list[subprocess.Popen], root: Path) -> None:
    deadline = time.monotonic() + WORKER_START_S
    while True:
        with get_client(sync_client=True) as client:
            if len(live_workers(client, pool)) >= len(workers):
                return
        for index, worker in enumerate(workers):
            if worker.poll() is not None:
                raise RuntimeError(f"worker-{index} exited with code {worker.returncode}: "
                                   + (root / f"worker-{index}.log").read_text()[-3000:])
        if time.monotonic() > deadline:
            raise RuntimeError(f"the workers sent no heartbeat within {WORKER_START_S:.0f} s; "
                               f"see {root}/worker-*.log")
        time.sleep(1)


def _drain_to(api_url: str) -> None:
    """Send this process's queued Prefect logs and events while their server still answers
    (as prefect_test_harness does), else they retry against it at exit for a minute."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    with temporary_settings({PREFECT_API_URL: api_url}):
        APILogWorker.drain_all(timeout=30)
        EventsWorker.drain_all(timeout=30)


def micro_study(root: Path, teacher: Path, student: Path, problems: dict,
                **changes) -> StudyConfig:
    """2 cells × 2 seeds, 3 steps, no references (the baseline is sft), one evaluation per
    run of 4 problems × 2 samples × 8 tokens."""
    bench = write_problems(problems["test"][:4], root / "tiny.jsonl")
    train = write_problems(problems["train"][:16], root / "train.jsonl")
    settings = dict(
        name="fanout", teacher=str(teacher), student=str(student), train_problems=str(train),
        held_out_problems=str(train), train_size=8, batch_size=4, max_new_tokens=8, steps=3,
        cells=["sft", "opd"], seeds=[0, 1], evaluate_references=False, baseline="sft",
        benchmarks=[str(bench)], eval_n=2, eval_ks=[1, 2], eval_limit=4, eval_max_new_tokens=8,
        readiness="warn", register_model=False)
    return StudyConfig(**{**settings, **changes})


def _tiny_pair(root: Path, problems: dict) -> tuple[Path, Path]:
    """An untrained teacher (2 layers) and student (1 layer) sharing one tokenizer."""
    from tasks.models import TinyModelConfig, build_tiny_model, build_tokenizer

    tokenizer = build_tokenizer([p.problem + "\n" + p.solution for p in problems["train"]],
                                vocab_size=300)
    for seed, (role, width, layers) in enumerate([("teacher", 48, 2), ("student", 32, 1)]):
        shape = TinyModelConfig(hidden_size=width, num_layers=layers, num_heads=2,
                                intermediate_size=2 * width, max_positions=160)
        build_tiny_model(shape, tokenizer, seed=seed).save_pretrained(root / role)
        tokenizer.save_pretrained(root / role)
    return root / "teacher", root / "student"


def main() -> None:
    from flows.grid import grid_flow
    from tasks.arithmetic import ArithmeticConfig, generate_splits

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    problems = generate_splits(ArithmeticConfig(train_size=300, held_out_size=20, test_size=20))
    with tempfile.TemporaryDirectory(prefix="fanout-wall-") as scratch:
        root = Path(scratch)
        config = micro_study(root, *_tiny_pair(root, problems), problems, executor="pool",
                             work_pool="fanout-wall", max_concurrent_runs=4)
        with pool_stack(root, "fanout-wall", args.workers) as stack:
            os.environ.update({key: stack["env"][key] for key in (
                "DISTILL_LAB_ARTIFACTS", "DISTILL_LAB_STORE_URL", "MLFLOW_TRACKING_URI")})
            load = os.getloadavg()
            started = time.monotonic()
            with temporary_settings({PREFECT_API_URL: stack["services"]["prefect_api"]}):
                state = grid_flow(config, return_state=True)
            wall_s = time.monotonic() - started
    print(f"4-run micro-study, {args.workers} worker(s): {wall_s:.0f} s, {state.name}; "
          f"load average before {load[0]:.1f}, after {os.getloadavg()[0]:.1f}, "
          f"{os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
