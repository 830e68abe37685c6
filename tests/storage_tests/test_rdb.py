"""The Optuna storage on real databases: SQLite here, PostgreSQL through HPO_TEST_PG_URL."""

import datetime
import multiprocessing
import os
import time
import uuid
from pathlib import Path
from typing import Any

import optuna
import pytest

from storage import claim_study_attr, create_storage, first_starts, retry_trial, set_paused, start_trial


def _roundtrip(url: str) -> None:
    storage = create_storage(url)
    name = f"rdb-{uuid.uuid4().hex[:8]}"
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    again = optuna.load_study(study_name=name, storage=create_storage(url))
    assert len(again.trials) == 3 and again.best_value == study.best_value
    optuna.delete_study(study_name=name, storage=storage)


def test_sqlite(tmp_path: Path) -> None:
    _roundtrip(f"sqlite:///{tmp_path}/s.db")


def test_postgresql(pg_url: str) -> None:
    _roundtrip(pg_url)


def _claim(url: str, name: str, key: str, start: Any, out: Any) -> None:
    """One process: open its own storage, wait for the others, claim ``key`` with its pid, report what it kept."""
    storage = create_storage(url, create_tables=False)
    study_id = storage.get_study_id_from_name(name)
    start.wait()
    out.put(claim_study_attr(storage, study_id, key, {"pid": os.getpid()}))


def _claim_race(url: str) -> None:
    name = f"claim-{uuid.uuid4().hex[:8]}"
    storage = create_storage(url)
    study_id = optuna.create_study(study_name=name, storage=storage)._study_id
    assert claim_study_attr(storage, study_id, "first", 1) == 1
    assert claim_study_attr(storage, study_id, "first", 2) == 1  # a second claim keeps the first value
    context = multiprocessing.get_context("fork")  # separate processes and connections, without re-importing optuna
    for round_ in range(3):
        start, out = context.Barrier(6), context.Queue()
        procs = [context.Process(target=_claim, args=(url, name, f"k{round_}", start, out)) for _ in range(6)]
        for proc in procs:
            proc.start()
        kept = [out.get(timeout=120) for _ in procs]
        for proc in procs:
            proc.join(timeout=60)
        # all six raced to store their own pid; every one of them came back with the same, stored value
        assert len({k["pid"] for k in kept}) == 1
        assert storage.get_study_system_attrs(study_id)[f"k{round_}"] == kept[0]
    optuna.delete_study(study_name=name, storage=storage)


def test_claim_keeps_the_first_value_across_processes_sqlite(tmp_path: Path) -> None:
    _claim_race(f"sqlite:///{tmp_path}/s.db")


def test_claim_keeps_the_first_value_across_processes_postgresql(pg_url: str) -> None:
    _claim_race(pg_url)


def _start(url: str, name: str, limits: dict[str, Any], start: Any, out: Any) -> None:
    """One process: wait for the others, then try to start trials (never finishing them); report which it got."""
    storage = create_storage(url, create_tables=False)
    study_id = storage.get_study_id_from_name(name)
    start.wait()
    out.put([tid for _ in range(8) if (tid := start_trial(storage, study_id, **limits)) is not None])


def _start_race(url: str) -> None:
    """Six processes start trials at once: the cap on running trials, the budget and a pause all hold."""
    storage = create_storage(url)
    context = multiprocessing.get_context("fork")  # as in _claim_race
    for limits, expected in (({"n_trials": None, "max_running": 2}, 2), ({"n_trials": 3}, 3)):
        name = f"start-{uuid.uuid4().hex[:8]}"
        study = optuna.create_study(study_name=name, storage=storage)
        study.enqueue_trial({"x": 0.5})  # queued trials are started first
        start, out = context.Barrier(6), context.Queue()
        procs = [context.Process(target=_start, args=(url, name, limits, start, out)) for _ in range(6)]
        for proc in procs:
            proc.start()
        started = [tid for _ in procs for tid in out.get(timeout=120)]
        for proc in procs:
            proc.join(timeout=60)
        assert len(started) == len(set(started)) == expected, limits
        trials = study.get_trials(deepcopy=False)
        assert [t.state for t in trials] == [optuna.trial.TrialState.RUNNING] * expected
        assert trials[0].system_attrs.get("fixed_params") == {"x": 0.5}
        set_paused(storage, study._study_id, True)
        assert study.user_attrs["paused"] is True
        assert start_trial(storage, study._study_id, n_trials=None) is None  # paused: nothing starts
        set_paused(storage, study._study_id, False)
        assert start_trial(storage, study._study_id, n_trials=None) is not None  # resumed, no cap, no budget
        optuna.delete_study(study_name=name, storage=storage)
        with pytest.raises(KeyError, match="deleted"):  # a pool surveyed it just before: it moves on
            start_trial(storage, study._study_id, n_trials=None)


def test_start_trial_holds_cap_budget_and_pause_across_processes_sqlite(tmp_path: Path) -> None:
    _start_race(f"sqlite:///{tmp_path}/s.db")


def test_start_trial_holds_cap_budget_and_pause_across_processes_postgresql(pg_url: str) -> None:
    _start_race(pg_url)


def test_start_trial_on_in_memory_storage() -> None:
    study = optuna.create_study()
    study.enqueue_trial({"x": 0.5})
    storage, study_id = study._storage, study._study_id
    first = start_trial(storage, study_id, n_trials=2, max_running=2)
    assert storage.get_trial(first).system_attrs["fixed_params"] == {"x": 0.5}  # the queued trial first
    second = start_trial(storage, study_id, n_trials=2, max_running=2)
    assert second not in (None, first)
    assert start_trial(storage, study_id, n_trials=None, max_running=2) is None  # two running: the cap
    assert start_trial(storage, study_id, n_trials=2) is None  # two running of a budget of two
    study.set_user_attr("paused", True)
    assert start_trial(storage, study_id, n_trials=None) is None


@pytest.mark.parametrize("backend", ["sqlite", "in-memory"])
def test_start_trial_stops_once_the_timeout_since_the_first_trial_has_passed(tmp_path: Path, backend: str) -> None:
    storage = create_storage(f"sqlite:///{tmp_path}/s.db") if backend == "sqlite" else optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage)
    study.enqueue_trial({"x": 0.5})  # queued, not started: the clock has not started
    time.sleep(1.2)
    first = start_trial(storage, study._study_id, n_trials=None, timeout=1.0)
    assert first is not None
    assert start_trial(storage, study._study_id, n_trials=None, timeout=1.0) is not None  # within a second of it
    if backend == "sqlite":  # the first start, in UTC as stored
        started = storage.get_trial(first).datetime_start.astimezone(datetime.UTC).replace(tzinfo=None)
        assert first_starts(storage) == first_starts(storage, study._study_id) == {study._study_id: started}
    time.sleep(1.2)
    assert start_trial(storage, study._study_id, n_trials=None, timeout=1.0) is None  # its time is up
    assert start_trial(storage, study._study_id, n_trials=None, timeout=10.0) is not None  # a longer one is not


def test_claim_on_in_memory_storage() -> None:
    study = optuna.create_study()
    assert claim_study_attr(study._storage, study._study_id, "k", [1.5]) == [1.5]
    assert claim_study_attr(study._storage, study._study_id, "k", [2.5]) == [1.5]


def test_retries_count_failures_not_stops(tmp_path: Path) -> None:
    storage = create_storage(f"sqlite:///{tmp_path}/r.db")
    study = optuna.create_study(study_name="retries", storage=storage)
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    runs = []  # stopped four times, then failing: max_retries=2 allows two retries after the first failure
    for stopped in (True, True, True, True, False, False, False):
        last = study.trials[-1]
        runs.append(retry_trial(study, last, max_retries=2, stopped=stopped))
        if runs[-1]:
            rerun = study.ask()  # the queued trial, with the same parameters
            assert rerun.suggest_float("x", 0, 1) == study.trials[0].params["x"]
            study.tell(rerun, state=optuna.trial.TrialState.FAIL)
    assert runs == [True, True, True, True, True, True, False]
    final = study.trials[-1].system_attrs
    assert final["stopped_runs"] == 4 and final["retry_history"] == [0, 1, 2, 3, 4, 5] and final["failed_trial"] == 0
