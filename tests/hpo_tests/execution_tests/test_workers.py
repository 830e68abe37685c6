"""Workers sharing one study on the real PostgreSQL (and MariaDB): real processes, real kills, a real restart."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import yaml
from optuna.trial import TrialState

from hpo.views import states_table
from tests.conftest import PostgresCluster, pgbouncer, private_cluster, tiny_config

SPACE = {
    "train.lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
    "distill.temperature": {"type": "float", "low": 1.0, "high": 8.0},
}


def synthetic(name: str, **overrides: object) -> dict:
    config = {
        "name": name,
        "objective": "synthetic",
        "n_trials": 8,
        "sampler": {"name": "tpe"},
        "pruner": {"name": "none"},
        "synthetic": {"steps": 3},
        "worker": {"heartbeat_interval": 1, "grace_period": 3, "storage_retries": 10},
        "search_space": SPACE,
    }
    config.update(overrides)
    return config


def cli(*args: str, url: str, cwd: Path, **kwargs: object) -> subprocess.Popen[str]:
    """Start `hpo ARGS` with the storage URL in HPO_STORAGE (as a deployment would pass it)."""
    env = {**os.environ, "HPO_STORAGE": url}
    return subprocess.Popen(
        [sys.executable, "-m", "hpo._cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def run_cli(*args: str, url: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = cli(*args, url=url, cwd=cwd)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def create(tmp_path: Path, url: str, config: dict) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_cli("create", str(path), url=url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> object:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).trials


def states(url: str, name: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in trials(url, name):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def running_of(url: str, name: str, pid: int) -> optuna.trial.FrozenTrial | None:
    return next(
        (t for t in trials(url, name) if t.state == TrialState.RUNNING and t.user_attrs.get("pid") == pid), None
    )


@pytest.fixture
def name() -> str:
    return f"w-{uuid.uuid4().hex[:10]}"


def test_create_is_idempotent_and_keeps_no_password(tmp_path: Path, pg_url: str, name: str) -> None:
    secret_url = pg_url.replace("postgres@", "postgres:s3cret@")  # trust auth ignores the password
    create(tmp_path, secret_url, synthetic(name))
    again = run_cli("create", str(tmp_path / "study.yaml"), url=secret_url, cwd=tmp_path)
    assert again.returncode == 0 and "s3cret" not in again.stdout + again.stderr
    assert "***" in again.stdout
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(synthetic(name, seed=5)))
    differ = run_cli("create", str(tmp_path / "other.yaml"), url=pg_url, cwd=tmp_path)
    assert differ.returncode == 2 and "exists with another config (seed: 0 -> 5)" in differ.stderr
    study = optuna.load_study(study_name=name, storage=pg_url)
    assert "s3cret" not in repr(study.user_attrs) and "storage" not in study.user_attrs["config"]
    upgrade = run_cli("db", "upgrade", url=secret_url, cwd=tmp_path)
    assert upgrade.returncode == 0 and "schema" in upgrade.stdout and "s3cret" not in upgrade.stdout


def test_worker_needs_an_existing_study_and_never_creates_tables(tmp_path: Path, pg_url: str) -> None:
    result = run_cli("worker", "--study", "no-such-study", url=pg_url, cwd=tmp_path)
    assert result.returncode == 2
    assert "--study: no study named 'no-such-study'" in result.stderr and "hpo create" in result.stderr
    empty = f"sqlite:///{tmp_path}/empty.db"
    result = run_cli("worker", "--study", "x", url=empty, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"hpo: error: --storage: {empty} has no study tables; run hpo create (or hpo db upgrade) first"
    )


@pytest.mark.slow
def test_eight_workers_four_hundred_trials(tmp_path: Path, pg_url: str, name: str) -> None:
    n_trials = 400
    create(tmp_path, pg_url, synthetic(name, n_trials=n_trials, sampler={"name": "random"}))
    result = run_cli("worker", "--study", name, "--procs", "8", url=pg_url, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    all_trials = trials(pg_url, name)
    numbers = [t.number for t in all_trials]
    assert sorted(numbers) == list(range(len(numbers)))  # no duplicated or missing numbers
    by_state = states(pg_url, name)
    assert by_state.get("RUNNING", 0) == 0 and by_state.get("WAITING", 0) == 0
    assert by_state["COMPLETE"] == n_trials  # nothing lost, and trials start under the study's lock: no overrun
    assert len(all_trials) <= n_trials + 8
    assert len({t.user_attrs["pid"] for t in all_trials}) == 8
    # A worker starved of CPU past the grace period loses its trial (FAIL, reason recorded), which is re-run with
    # the same parameters; those re-runs aside, each worker samples with its own seed (seeded alike, the eight
    # would propose the same parameters).
    for t in all_trials:
        assert t.state != TrialState.FAIL or t.user_attrs["fail_reason"].startswith("worker lost"), t.user_attrs
    params = [tuple(sorted(t.params.items())) for t in all_trials if "failed_trial" not in t.system_attrs]
    assert len(set(params)) == len(params)


def test_grid_runs_every_point_exactly_once_with_eight_workers(tmp_path: Path, pg_url: str, name: str) -> None:
    grid = {
        "train.batch_size": {"type": "categorical", "choices": [8, 16, 32]},
        "student.num_layers": {"type": "int", "low": 1, "high": 4},
    }
    config = synthetic(name, n_trials=None, timeout=600, sampler={"name": "grid"}, search_space=grid)
    config["synthetic"] = {"steps": 2, "sleep": 0.3}
    create(tmp_path, pg_url, config)
    result = run_cli("worker", "--study", name, "--procs", "8", url=pg_url, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    all_trials = trials(pg_url, name)
    assert len(all_trials) == 12 and all(t.state == TrialState.COMPLETE for t in all_trials)
    points = {(t.params["train.batch_size"], t.params["student.num_layers"]) for t in all_trials}
    assert points == {(b, n) for b in (8, 16, 32) for n in (1, 2, 3, 4)}


@pytest.mark.slow
def test_sigkill_trial_goes_stale_and_is_rerun_with_the_same_params(tmp_path: Path, pg_url: str, name: str) -> None:
    config = synthetic(name, n_trials=3)
    config["synthetic"] = {"steps": 10, "sleep": 4.0}
    create(tmp_path, pg_url, config)
    victim = cli("worker", "--study", name, url=pg_url, cwd=tmp_path)
    killed = wait_for(lambda: running_of(pg_url, name, victim.pid), 60, "the victim's trial")
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    time.sleep(4.5)  # past the 3 s grace period
    status = run_cli("status", "--study", name, url=pg_url, cwd=tmp_path)
    assert status.returncode == 0
    assert f"trial {killed.number}" in status.stdout and "STALE (no heartbeat)" in status.stdout

    survivor = run_cli("worker", "--study", name, url=pg_url, cwd=tmp_path, timeout=300)
    assert survivor.returncode == 0, survivor.stderr[-3000:]
    final = {t.number: t for t in trials(pg_url, name)}
    assert final[killed.number].state == TrialState.FAIL
    retries = [t for t in final.values() if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == killed.params
    assert retries[0].user_attrs["pid"] != victim.pid
    assert states(pg_url, name) == {"COMPLETE": 3, "FAIL": 1}
    reason = final[killed.number].user_attrs["fail_reason"]  # why it failed, and which worker held it
    match = re.fullmatch(r"worker lost \(no heartbeat for (\d+) s; held by (\S+) pid (\d+)\)", reason)
    assert match, reason
    assert int(match.group(1)) >= 3 and match.group(2) == socket.gethostname() and int(match.group(3)) == victim.pid
    shown = run_cli("status", "--study", name, url=pg_url, cwd=tmp_path)
    assert f"trial {killed.number}  {reason}" in shown.stdout
    assert reason in states_table(optuna.load_study(study_name=name, storage=pg_url))  # the report's table


def test_sigterm_stops_promptly_marks_and_requeues_the_trial(tmp_path: Path, pg_url: str, name: str) -> None:
    config = synthetic(name, n_trials=2)
    config["synthetic"] = {"steps": 20, "sleep": 20.0}
    create(tmp_path, pg_url, config)
    worker = cli("worker", "--study", name, url=pg_url, cwd=tmp_path)
    running = wait_for(lambda: running_of(pg_url, name, worker.pid), 60, "a running trial")
    start = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    assert time.monotonic() - start < 10
    final = {t.number: t for t in trials(pg_url, name)}
    stopped = final[running.number]
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["fail_reason"] == "worker stopped"
    (queued,) = [t for t in final.values() if t.state == TrialState.WAITING]
    assert queued.params == stopped.params and queued.system_attrs["failed_trial"] == running.number


@pytest.mark.slow
def test_sigterm_stops_do_not_use_up_max_retries(tmp_path: Path, pg_url: str, name: str) -> None:
    config = synthetic(name, n_trials=1)
    config["synthetic"] = {"steps": 10, "sleep": 5.0}
    config["worker"] = {**config["worker"], "max_retries": 1}
    create(tmp_path, pg_url, config)
    stopped = []
    for _ in range(3):  # three preemptions of the same trial: more than max_retries allows failures
        worker = cli("worker", "--study", name, url=pg_url, cwd=tmp_path)
        stopped.append(wait_for(lambda pid=worker.pid: running_of(pg_url, name, pid), 180, "a running trial"))
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0
    last = run_cli("worker", "--study", name, url=pg_url, cwd=tmp_path)
    assert last.returncode == 0, last.stderr[-3000:]
    final = sorted(trials(pg_url, name), key=lambda t: t.number)
    assert [t.state for t in final] == [TrialState.FAIL] * 3 + [TrialState.COMPLETE]
    assert [t.number for t in final[:3]] == [t.number for t in stopped]
    assert all(t.user_attrs["fail_reason"] == "worker stopped" for t in final[:3])
    assert all(t.params == final[0].params for t in final)  # the same grid point, rerun every time
    done = final[3].system_attrs
    assert done["retry_history"] == [t.number for t in stopped] and done["stopped_runs"] == 3
    assert done["failed_trial"] == stopped[0].number


def test_a_trial_past_max_minutes_fails_as_timeout_and_the_worker_goes_on(
    tmp_path: Path, pg_url: str, name: str
) -> None:
    config = synthetic(name, n_trials=2, train={"max_minutes": 0.05})  # 3 s
    config["synthetic"] = {"steps": 2, "sleep": 60.0}  # every trial would sleep a minute
    create(tmp_path, pg_url, config)
    worker = run_cli("worker", "--study", name, "--n-trials", "2", url=pg_url, cwd=tmp_path)
    assert worker.returncode == 0, worker.stderr[-3000:]
    final = trials(pg_url, name)
    assert [t.state for t in final] == [TrialState.FAIL] * 2
    assert [t.user_attrs["fail_reason"] for t in final] == ["timeout", "timeout"]
    for t in final:  # cut at 3 s, not after the minute it would sleep
        assert 3 <= (t.datetime_complete - t.datetime_start).total_seconds() < 15
    assert "restarting this worker" not in worker.stderr  # interrupted where it slept: no restart needed


@pytest.mark.slow  # a minute of real processes; CI runs it
def test_a_trial_hung_in_a_c_call_is_timed_out_and_its_worker_restarted(tmp_path: Path, pg_url: str, name: str) -> None:
    config = synthetic(name, n_trials=2, train={"max_minutes": 0.05})
    config["synthetic"] = {"steps": 2, "sleep": 0.2, "hang_trials": [0]}  # trial 0 blocks every signal and hangs
    create(tmp_path, pg_url, config)
    worker = cli("worker", "--study", name, url=pg_url, cwd=tmp_path)
    hung = wait_for(lambda: running_of(pg_url, name, worker.pid), 180, "the hanging trial")
    _, err = worker.communicate(timeout=300)  # the same process, restarted in place, runs the rest
    assert worker.returncode == 0, err[-3000:]
    final = {t.number: t for t in trials(pg_url, name)}
    assert final[hung.number].state == TrialState.FAIL and final[hung.number].user_attrs["fail_reason"] == "timeout"
    seconds = (final[hung.number].datetime_complete - final[hung.number].datetime_start).total_seconds()
    assert 3 + 10 <= seconds < 40  # the 3 s limit, then the 10 s grace for a call that ignores SIGALRM
    assert "restarting this worker" in err
    done = [t for t in final.values() if t.state == TrialState.COMPLETE]
    assert len(done) == 2 and {t.user_attrs["pid"] for t in done} == {worker.pid}


def test_oom_nan_and_crash_are_recorded_and_the_worker_goes_on(tmp_path: Path, pg_url: str, name: str) -> None:
    config = synthetic(name, n_trials=6, sampler={"name": "random"})
    config["synthetic"] = {"steps": 2, "oom_trials": [1], "nan_trials": [2], "crash_trials": [3]}
    create(tmp_path, pg_url, config)
    result = run_cli("worker", "--study", name, url=pg_url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    final = {t.number: t for t in trials(pg_url, name)}
    assert (final[1].state, final[1].user_attrs["fail_reason"]) == (TrialState.FAIL, "oom")
    assert (final[2].state, final[2].user_attrs["fail_reason"]) == (TrialState.PRUNED, "nan")
    assert final[3].state == TrialState.FAIL
    assert final[3].user_attrs["fail_reason"] == "RuntimeError: synthetic crash in trial 3"
    assert sum(t.state == TrialState.COMPLETE for t in final.values()) == 5
    assert all(t.state != TrialState.RUNNING for t in final.values())


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("pg_ctlcluster") is None, reason="needs Debian's pg_ctlcluster")
def test_memory_limit_fails_the_greedy_trial_as_oom_and_the_worker_goes_on(
    tmp_path: Path, pg_url: str, name: str
) -> None:
    config = synthetic(name, n_trials=3, sampler={"name": "random"})
    config["synthetic"] = {"steps": 2, "oom_trials": [1], "oom_mib": 3000}  # a real 3000 MiB allocation
    create(tmp_path, pg_url, config)
    result = run_cli("worker", "--study", name, "--procs", "2", "--memory-limit", "1500", url=pg_url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    final = {t.number: t for t in trials(pg_url, name)}
    assert (final[1].state, final[1].user_attrs["fail_reason"]) == (TrialState.FAIL, "oom")
    assert sum(t.state == TrialState.COMPLETE for t in final.values()) == 3
    # without the limit the same allocation succeeds: the limit, not the machine, failed the trial
    create(tmp_path, pg_url, {**config, "name": name + "-free"})
    result = run_cli("worker", "--study", name + "-free", url=pg_url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert trials(pg_url, name + "-free")[1].state == TrialState.COMPLETE


def test_memory_limit_below_what_a_worker_holds_is_refused(tmp_path: Path, pg_url: str, name: str) -> None:
    create(tmp_path, pg_url, synthetic(name))
    result = run_cli("worker", "--study", name, "--memory-limit", "10", url=pg_url, cwd=tmp_path)
    assert (
        result.returncode == 2 and "--memory-limit: 10 MiB is not above what the worker already holds" in result.stderr
    )
    assert not trials(pg_url, name)


@pytest.mark.slow
def test_database_restart_mid_study_loses_nothing(tmp_path: Path, private_pg: PostgresCluster, name: str) -> None:
    """The worker's own PostgreSQL cluster is stopped for 5 s and started again mid-study (a cluster of this test
    alone: the shared server other tests use stays up)."""
    pg_url = private_pg.url
    config = synthetic(name, n_trials=30, sampler={"name": "random"})
    config["synthetic"] = {"steps": 4, "sleep": 0.4}
    create(tmp_path, pg_url, config)
    worker = cli("worker", "--study", name, url=pg_url, cwd=tmp_path)
    wait_for(lambda: states(pg_url, name).get("COMPLETE", 0) >= 5, 120, "five finished trials")
    # A restart with 5 s of downtime: a bare restart can be quicker than the worker's next query, which the pool's
    # pre-ping then reconnects silently, and the test would not see the outage handled.
    private_pg.stop()
    try:
        time.sleep(5)
    finally:
        private_pg.start()
    _, err = worker.communicate(timeout=300)
    assert worker.returncode == 0, err[-3000:]
    assert "retry" in err  # it saw the outage and backed off
    by_state = states(pg_url, name)
    assert by_state["COMPLETE"] == 30 and by_state.get("RUNNING", 0) == 0


@pytest.mark.slow
def test_thirty_two_workers_fit_in_forty_connections(tmp_path: Path, name: str) -> None:
    """32 worker processes on a PostgreSQL of 40 connections (the test's monitor takes one more) run a study to its
    budget: one connection per worker, shared by the heartbeat thread. Two per worker (a connection pool's default
    when the heartbeat and the trial overlap) would need 64 and fail with "too many clients"."""
    import threading

    import sqlalchemy

    workers = 32
    with private_cluster(max_connections=40) as pg:
        config = synthetic(name, n_trials=64, sampler={"name": "random"})
        config["synthetic"] = {"steps": 2, "sleep": 0.2}
        config["worker"] = {"heartbeat_interval": 1, "grace_period": 20, "storage_retries": 3}
        create(tmp_path, pg.url, config)
        peak: dict[str, int] = {}
        done = threading.Event()
        count = sqlalchemy.text(
            "SELECT application_name, count(*) FROM pg_stat_activity "
            "WHERE application_name LIKE 'hpo pid %' GROUP BY application_name"
        )

        def watch() -> None:  # one connection of its own, sampled every 50 ms while the workers run; autocommit, as
            # PostgreSQL keeps one snapshot of pg_stat_activity for the whole of a transaction
            engine = sqlalchemy.create_engine(pg.url, poolclass=sqlalchemy.pool.NullPool, isolation_level="AUTOCOMMIT")
            with engine.connect() as conn:
                while not done.wait(0.05):
                    for app, n in conn.execute(count):
                        peak[app] = max(peak.get(app, 0), n)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            result = run_cli("worker", "--study", name, "--procs", str(workers), url=pg.url, cwd=tmp_path, timeout=900)
        finally:
            done.set()
            watcher.join(10)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "too many clients" not in result.stderr and "retry" not in result.stderr
        assert states(pg.url, name)["COMPLETE"] == 64
        print(f"peak connections per worker process: {max(peak.values())} ({len(peak)} processes seen)")
        assert len(peak) >= workers and max(peak.values()) == 1


def test_workers_through_pgbouncer_in_transaction_mode(tmp_path: Path, pg_url: str, name: str) -> None:
    """Three workers share two server connections through PgBouncer in transaction mode: a statement psycopg had
    prepared on one server connection would be missing on the next ("prepared statement ... does not exist")."""
    parsed = sqlalchemy.engine.make_url(pg_url)
    with pgbouncer(parsed.database, parsed.port, pool_size=2) as url:
        create(tmp_path, url, synthetic(name, n_trials=12, sampler={"name": "random"}))
        result = run_cli("worker", "--study", name, "--procs", "3", url=url, cwd=tmp_path, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "prepared statement" not in result.stderr and "retry" not in result.stderr
        assert states(url, name) == {"COMPLETE": 12}


def test_mariadb_create_and_worker(tmp_path: Path, mysql_url: str, name: str) -> None:
    create(tmp_path, mysql_url, synthetic(name, n_trials=5))
    result = run_cli("worker", "--study", name, "--procs", "2", url=mysql_url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    by_state = states(mysql_url, name)
    assert set(by_state) == {"COMPLETE"}
    assert 5 <= by_state["COMPLETE"] <= 6  # the budget; two workers racing for the last slot may both start one


@pytest.mark.slow
def test_workers_report_one_latency_per_architecture(tmp_path: Path, pg_url: str, name: str) -> None:
    # Real (tiny BERT) students, one architecture, two worker processes: each would measure its own latency (a few
    # percent apart); the first measurement stored in the study is the one every trial reports.
    space = {"train.lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}}
    create(tmp_path, pg_url, tiny_config(name, objective="finetune", n_trials=6, search_space=space))
    result = run_cli("worker", "--study", name, "--procs", "2", url=pg_url, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    complete = [t for t in trials(pg_url, name) if t.state == TrialState.COMPLETE]
    assert len(complete) >= 6 and len({t.user_attrs["pid"] for t in complete}) == 2
    for metric in ("latency_ms", "latency_ms_p95", "speedup", "throughput"):
        assert len({t.user_attrs[metric] for t in complete}) == 1, metric
    study = optuna.load_study(study_name=name, storage=pg_url)
    stored = study._storage.get_study_system_attrs(study._study_id)
    costs = [value for key, value in stored.items() if key.startswith("cost:")]
    assert len(costs) == 1 and costs[0]["latency_ms"] == complete[0].user_attrs["latency_ms"]
