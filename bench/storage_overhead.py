"""Orchestration cost per trial (storage + sampler + worker loop), by storage and number of worker processes.

Each worker process runs the real worker loop (``hpo.execution._worker.Worker``) and trial runner on the ``synthetic``
objective with no sleep: its computation takes microseconds, so a trial's time is orchestration, the same work a
real trial pays around its training: claiming or creating the trial, TPE sampling, 3 intermediate reports with
pruning checks, heartbeats, 16 user attributes (metrics, seed, host, pid), telling the result.

    python bench/storage_overhead.py [--trials 200] [--workers 1 2 4 8] [--pg URL]

Prints, per storage and worker count: trials/s, orchestration ms per trial (worker-seconds / trials), and that
cost as a percentage of a 60 s trial.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
import uuid

import optuna

from hpo import config_from_dict
from hpo.execution import Budget, Retry, TrialRunner, Worker, usable_cores
from hpo.study import open_study

SPACE = {
    "train.lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
    "distill.temperature": {"type": "float", "low": 1.0, "high": 8.0},
    "student.num_layers": {"type": "int", "low": 1, "high": 6},
}


def _config(name: str, trials: int) -> dict:
    return {
        "name": name,
        "objective": "synthetic",
        "n_trials": trials,
        "sampler": {"name": "tpe"},
        "pruner": {"name": "median"},
        "synthetic": {"steps": 3},
        "worker": {"heartbeat_interval": 5, "grace_period": 30},
        "search_space": SPACE,
    }


def _storage(kind: str, where: str) -> optuna.storages.BaseStorage:
    if kind == "journal":
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(where))
    from storage import create_storage

    return create_storage(where, heartbeat_interval=5, grace_period=30)


def _work(kind: str, where: str, name: str, trials: int, out: multiprocessing.Queue) -> None:
    config = config_from_dict(_config(name, trials))
    study = optuna.load_study(
        study_name=name, storage=_storage(kind, where), sampler=optuna.samplers.TPESampler(multivariate=True)
    )
    study.pruner = optuna.pruners.MedianPruner()
    worker = Worker(
        study, TrialRunner(config), Budget(n_trials=trials), max_retries=0, retry=Retry(3), poll=0.05, idle_limit=30
    )
    start = time.perf_counter()
    ran = worker.run()
    out.put((time.perf_counter() - start, ran))


def measure(kind: str, where: str, workers: int, trials: int) -> tuple[float, float]:
    """(trials per second, orchestration ms per trial) for ``workers`` processes sharing one study."""
    name = f"bench-{uuid.uuid4().hex[:8]}"
    config = config_from_dict(_config(name, trials))
    open_study(config, _storage(kind, where))
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_work, args=(kind, where, name, trials, out)) for _ in range(workers)]
    for p in procs:
        p.start()
    results = [out.get(timeout=900) for _ in procs]
    for p in procs:
        p.join()
    wall = max(r[0] for r in results)
    ran = sum(r[1] for r in results)
    return ran / wall, 1000 * sum(r[0] for r in results) / ran


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument(
        "--pg", default=os.environ.get("HPO_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    )
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tmp = tempfile.mkdtemp(prefix="hpo-bench-")
    targets = {
        "postgresql": args.pg,
        "sqlite": f"sqlite:///{tmp}/bench.db",
        "journal": f"{tmp}/bench.journal",
    }
    print(f"{args.trials} synthetic trials per run, TPE + median pruner, {usable_cores()} cores")
    print(f"{'storage':<11} {'workers':>7} {'trials/s':>9} {'ms/trial':>9} {'% of 60 s':>10}")
    for kind, where in targets.items():
        for workers in args.workers:
            rate, ms = measure(kind, where, workers, args.trials)
            print(f"{kind:<11} {workers:>7} {rate:>9.1f} {ms:>9.1f} {100 * ms / 60_000:>9.3f}%", flush=True)


if __name__ == "__main__":
    main()
