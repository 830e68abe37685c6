"""Creating the Optuna study storage for a URL."""

from __future__ import annotations

import collections
import contextlib
import datetime
import json
import os
import re
import time
import warnings
from collections.abc import Iterator
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from storage._url import engine_kwargs, validate_storage_url

FAIL_REASON = "fail_reason"
"""User attribute of a failed (or NaN-pruned) trial: ``nan``, ``oom``, ``worker stopped``, ``worker lost (...)``
or the exception."""

_CREATE_RACE = re.compile(r"already exists|duplicate|unique", re.IGNORECASE)


def create_storage(
    url: str,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    max_retries: int = 0,
    create_tables: bool = True,
) -> optuna.storages.RDBStorage:
    """Open (and on first use create the tables of) the Optuna RDB storage at ``url``.

    With ``heartbeat_interval`` set, running trials send heartbeats and a trial whose worker died is marked FAIL
    once ``grace_period`` seconds pass without one, and re-queued with the same parameters up to ``max_retries``
    times. Workers pass ``create_tables=False``: only ``hpo create`` / ``hpo db upgrade`` change the schema; they
    hold one connection (:func:`~storage._url.engine_kwargs`), which Optuna's own schema check would need twice at
    once, so the check here reads the two versions one after the other.
    """
    validate_storage_url(url)
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(5):
        try:
            with warnings.catch_warnings():  # heartbeats and their retry callback are experimental since Optuna 2
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs(url, overflow=1 if create_tables else 0),
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                    heartbeat_stale_trial_callback=LostWorkerCallback(max_retries) if heartbeat_interval else None,
                    skip_table_creation=not create_tables,
                    skip_compatibility_check=not create_tables,
                )
            if not create_tables:
                _check_schema(storage)
            return storage
        except (IntegrityError, ProgrammingError) as exc:
            # Two first-time creators race on CREATE TABLE (PostgreSQL: UniqueViolation on pg_type) or on the
            # version row; the loser finds the tables made once the winner commits.
            if not create_tables or attempt == 4 or not _CREATE_RACE.search(str(exc)):
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def _check_schema(storage: optuna.storages.RDBStorage) -> None:
    """Optuna's schema compatibility check (its own takes two connections at once): the tables' version must be the
    one this Optuna writes."""
    manager = storage._version_manager
    current, head = manager.get_current_version(), manager.get_head_version()
    if current != head:
        fix = "run hpo db upgrade" if current in manager.get_all_versions() else "install the Optuna that wrote them"
        raise RuntimeError(
            f"the study tables have schema {current}, this Optuna ({optuna.__version__}) needs {head}: {fix}"
        )


class LostWorkerCallback:
    """Optuna's stale-trial callback, recording why first: ``fail_reason: worker lost (no heartbeat for N s; held
    by HOST pid PID)``, then re-queueing the trial with the same parameters up to ``max_retry`` times
    (:func:`retry_trial`: a lost worker counts as a failure)."""

    def __init__(self, max_retry: int) -> None:
        self.max_retry = max_retry

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        rdb = getattr(study._storage, "_backend", study._storage)
        if isinstance(rdb, optuna.storages.RDBStorage):
            silent = _heartbeat_age(rdb, trial._trial_id)
            held = f"{trial.user_attrs.get('host', '?')} pid {trial.user_attrs.get('pid', '?')}"
            since = f"no heartbeat for {silent:.0f} s" if silent is not None else "no heartbeat"
            _add_trial_attrs(rdb, trial._trial_id, {FAIL_REASON: f"worker lost ({since}; held by {held})"})
        retry_trial(study, trial, self.max_retry)


STOPS_ATTR = "stopped_runs"
"""Trial system attribute: how many runs of its ``retry_history`` were stopped (SIGTERM) rather than failed."""


def retry_trial(study: optuna.Study, trial: FrozenTrial, max_retries: int, *, stopped: bool = False) -> bool:
    """Queue ``trial`` again as WAITING with the same parameters, as Optuna's ``RetryHeartbeatStaleTrialCallback``
    does (system attributes ``failed_trial``: the first run, ``retry_history``: every earlier run), unless its
    failed runs exceed ``max_retries``. A run ``stopped`` by SIGTERM (preemption, a rolling update, scale-down) is
    no failure of the trial: it is counted apart (:data:`STOPS_ATTR`), never against ``max_retries``. Returns whether
    the trial was queued."""
    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    stops = trial.system_attrs.get(STOPS_ATTR, 0) + int(stopped)
    if len(history) - stops > max_retries:
        return False
    attrs = {**trial.system_attrs, "failed_trial": history[0], "retry_history": history, STOPS_ATTR: stops}
    study.add_trial(
        optuna.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs=trial.user_attrs,
            system_attrs=attrs,
        )
    )
    return True


def _heartbeat_age(rdb: optuna.storages.RDBStorage, trial_id: int) -> float | None:
    """Seconds since the trial's last heartbeat, by the database's clock (as Optuna judges staleness)."""
    import sqlalchemy
    from optuna.storages._rdb.models import TrialHeartbeatModel

    session = rdb.scoped_session()
    try:
        now = session.execute(sqlalchemy.func.now()).scalar()
        beat = session.query(TrialHeartbeatModel.heartbeat).filter(TrialHeartbeatModel.trial_id == trial_id).scalar()
    finally:
        session.close()
    if now is None or beat is None:
        return None
    return (now.replace(tzinfo=None) - beat.replace(tzinfo=None)) / datetime.timedelta(seconds=1)


def _add_trial_attrs(rdb: optuna.storages.RDBStorage, trial_id: int, attrs: dict[str, Any]) -> None:
    """Set user attributes of a finished trial (Optuna's setter refuses finished trials); existing keys are kept
    as they are: a retry of the same callback adds nothing."""
    from optuna.storages._rdb.models import TrialUserAttributeModel
    from sqlalchemy.exc import IntegrityError

    session = rdb.scoped_session()
    try:
        for key, value in attrs.items():
            session.add(TrialUserAttributeModel(trial_id=trial_id, key=key, value_json=json.dumps(value)))
        session.commit()
    except IntegrityError:
        session.rollback()
    finally:
        session.close()


def set_heartbeat(
    storage: optuna.storages.RDBStorage, heartbeat_interval: int, grace_period: int, max_retries: int
) -> None:
    """Give ``storage`` one study's heartbeat settings (what :func:`create_storage` sets), for a process that serves
    studies one after another on one storage; the heartbeat of a trial reads them when the trial starts."""
    storage.heartbeat_interval = heartbeat_interval
    storage.grace_period = grace_period
    storage.heartbeat_stale_trial_callback = LostWorkerCallback(max_retries)


def claim_study_attr(storage: optuna.storages.BaseStorage, study_id: int, key: str, value: Any) -> Any:
    """Store ``value`` as the study system attribute ``key`` unless one is there already; return the one kept.

    On a relational storage this is a plain INSERT that the (study_id, key) unique constraint refuses when another
    process stored the key first, so concurrent callers all end up with the first value (Optuna's own setter
    overwrites); on other storages (in-memory, journal), a read then a write.
    """
    rdb = getattr(storage, "_backend", storage)  # under Optuna's cache wrapper, if any
    if isinstance(rdb, optuna.storages.RDBStorage):
        from optuna.storages._rdb.models import StudySystemAttributeModel
        from sqlalchemy.exc import IntegrityError

        session = rdb.scoped_session()
        try:
            session.add(StudySystemAttributeModel(study_id=study_id, key=key, value_json=json.dumps(value)))
            session.commit()
        except IntegrityError:  # another process stored it first: keep theirs
            session.rollback()
        finally:
            session.close()
    elif key not in storage.get_study_system_attrs(study_id):
        storage.set_study_system_attr(study_id, key, value)
    return storage.get_study_system_attrs(study_id)[key]


PAUSED_ATTR = "paused"
"""Study user attribute set by ``hpo pause`` (true) and ``hpo resume`` (false): no new trial starts while true."""


@contextlib.contextmanager
def _locked_study(storage: optuna.storages.BaseStorage, study_id: int) -> Iterator[Any]:
    """A session whose transaction holds the study's row lock until it commits on leaving the block.

    The lock is a write of the study row (its name, unchanged): PostgreSQL and MySQL lock the row, SQLite takes its
    write lock (it has no row locks and begins a transaction at the first write, so a read first would not do).
    Optuna's own trial creation locks the same row, so it waits too.
    """
    from optuna.storages._rdb import models

    rdb = getattr(storage, "_backend", storage)  # under Optuna's cache wrapper, if any
    session = rdb.scoped_session()
    try:
        study = models.StudyModel
        locked = (
            session.query(study)
            .filter(study.study_id == study_id)
            .update({study.study_name: study.study_name}, synchronize_session=False)
        )
        if not locked:
            raise KeyError(f"no study with id {study_id} (deleted?)")
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


def timed_out(first_start: datetime.datetime | None, timeout: float | None) -> bool:
    """Whether a study whose first trial started at ``first_start`` (naive UTC, as Optuna's RDB storage keeps
    trial times) has spent its time budget of ``timeout`` seconds; never before its first trial starts, nor
    without a timeout. Start times are written by the workers' clocks, so workers on several machines need
    synchronised clocks (NTP); their time zones do not matter."""
    if timeout is None or first_start is None:
        return False
    return (_utc_now() - first_start).total_seconds() >= timeout


def _first_start_column() -> Any:
    """The trials' start time column (naive UTC); Optuna's model exposes it as a local-time property."""
    from optuna.storages._rdb import models

    return models.TrialModel.__table__.c.datetime_start


def first_starts(storage: optuna.storages.BaseStorage, study_id: int | None = None) -> dict[int, datetime.datetime]:
    """When the first trial of each study (or only of ``study_id``) started (naive UTC), by study id; a study
    whose trials never started is absent. One query."""
    from optuna.storages._rdb import models
    from sqlalchemy import func

    rdb = getattr(storage, "_backend", storage)
    trial = models.TrialModel
    session = rdb.scoped_session()
    try:
        rows = session.query(trial.study_id, func.min(_first_start_column()))
        if study_id is not None:
            rows = rows.filter(trial.study_id == study_id)
        out = {sid: start for sid, start in rows.group_by(trial.study_id).all() if start is not None}
        session.commit()
        return out
    finally:
        session.close()


def start_trial(
    storage: optuna.storages.BaseStorage,
    study_id: int,
    *,
    n_trials: int | None,
    max_running: int | None = None,
    create: bool = True,
    timeout: float | None = None,
) -> int | None:
    """Start one trial of the study, or return None: move its oldest WAITING trial to RUNNING, else (``create``)
    create a new RUNNING trial while finished + running + waiting trials stay under ``n_trials``.

    Nothing starts while the study is paused (:data:`PAUSED_ATTR`), once ``n_trials`` trials are finished
    (COMPLETE or PRUNED), once ``timeout`` seconds have passed since its first trial started (:func:`timed_out`),
    or while ``max_running`` of its trials run. On a relational storage the decision and the start are one
    transaction under the study's row lock, so workers racing on any number of nodes never exceed the cap or the
    budget, and none starts a trial after :func:`set_paused` has committed; other storages (in-memory, journal: one
    process) decide through Optuna's API.
    """
    rdb = getattr(storage, "_backend", storage)  # under Optuna's cache wrapper, if any
    if not isinstance(rdb, optuna.storages.RDBStorage):
        return _start_unlocked(storage, study_id, n_trials, max_running, create, timeout)
    from optuna.storages._rdb import models
    from sqlalchemy import func

    trial = models.TrialModel
    with _locked_study(storage, study_id) as session:
        paused = (
            session.query(models.StudyUserAttributeModel.value_json)
            .filter_by(study_id=study_id, key=PAUSED_ATTR)
            .scalar()
        )
        stopped = paused is not None and json.loads(paused)
        if timeout is not None and not stopped:
            first = session.query(func.min(_first_start_column())).filter(trial.study_id == study_id).scalar()
            stopped = timed_out(first, timeout)
        rows = session.query(trial.state, func.count(trial.trial_id)).filter(trial.study_id == study_id)
        counts = dict(rows.group_by(trial.state).all())
        what = _what_to_start(stopped, counts, n_trials, max_running, create)
        if what == "queued":
            queued = (
                session.query(trial)
                .filter(trial.study_id == study_id, trial.state == TrialState.WAITING)
                .order_by(trial.trial_id)
                .with_for_update()
                .first()
            )
            queued.state = TrialState.RUNNING
            queued.datetime_start = datetime.datetime.now()
            trial_id = queued.trial_id
        else:
            trial_id = rdb._get_prepared_new_trial(study_id, None, session).trial_id if what == "new" else None
    if trial_id is not None and storage is not rdb:
        storage.get_all_trials(study_id, deepcopy=False, states=())  # Optuna's cache wrapper learns of the trial
    return trial_id


def _what_to_start(
    stopped: bool, counts: dict[TrialState, int], n_trials: int | None, max_running: int | None, create: bool
) -> str | None:
    """``queued`` (the oldest WAITING trial), ``new`` or None, given the study's trial counts by state; nothing
    when the study is ``stopped`` (paused, or its time budget spent)."""
    finished = counts.get(TrialState.COMPLETE, 0) + counts.get(TrialState.PRUNED, 0)
    running = counts.get(TrialState.RUNNING, 0)
    if stopped or (n_trials is not None and finished >= n_trials):
        return None
    if max_running is not None and running >= max_running:
        return None
    if counts.get(TrialState.WAITING, 0):
        return "queued"
    if not create or (n_trials is not None and finished + running >= n_trials):
        return None
    return "new"


def _start_unlocked(
    storage: optuna.storages.BaseStorage,
    study_id: int,
    n_trials: int | None,
    max_running: int | None,
    create: bool,
    timeout: float | None,
) -> int | None:
    trials = storage.get_all_trials(study_id, deepcopy=False)
    starts = [t.datetime_start.astimezone(datetime.UTC).replace(tzinfo=None) for t in trials if t.datetime_start]
    paused = bool(storage.get_study_user_attrs(study_id).get(PAUSED_ATTR, False))
    stopped = paused or timed_out(min(starts, default=None), timeout)
    what = _what_to_start(stopped, collections.Counter(t.state for t in trials), n_trials, max_running, create)
    if what == "queued":
        for queued in (t for t in trials if t.state == TrialState.WAITING):
            if storage.set_trial_state_values(queued._trial_id, state=TrialState.RUNNING):
                return queued._trial_id
        return None
    return storage.create_new_trial(study_id) if what == "new" else None


def set_paused(storage: optuna.storages.BaseStorage, study_id: int, paused: bool) -> None:
    """Pause or resume the study: under the lock :func:`start_trial` takes, so once this returns no worker starts
    a trial of a paused study. Running trials are not touched."""
    from optuna.storages._rdb import models

    attr = models.StudyUserAttributeModel
    with _locked_study(storage, study_id) as session:
        row = session.query(attr).filter_by(study_id=study_id, key=PAUSED_ATTR).one_or_none()
        if row is None:
            session.add(attr(study_id=study_id, key=PAUSED_ATTR, value_json=json.dumps(paused)))
        else:
            row.value_json = json.dumps(paused)


def trial_counts(storage: optuna.storages.BaseStorage) -> dict[int, dict[TrialState, int]]:
    """Trials by study id and state, every study of the storage in one query."""
    from optuna.storages._rdb import models
    from sqlalchemy import func

    rdb = getattr(storage, "_backend", storage)
    trial = models.TrialModel
    session = rdb.scoped_session()
    try:
        rows = session.query(trial.study_id, trial.state, func.count(trial.trial_id))
        out: dict[int, dict[TrialState, int]] = {}
        for study_id, state, count in rows.group_by(trial.study_id, trial.state).all():
            out.setdefault(study_id, {})[state] = count
        session.commit()
        return out
    finally:
        session.close()


def upgrade_schema(url: str) -> tuple[str, str]:
    """Run Optuna's schema migration on ``url``; returns the (before, after) schema versions."""
    validate_storage_url(url)
    storage = optuna.storages.RDBStorage(
        url, engine_kwargs=engine_kwargs(url, overflow=1), skip_compatibility_check=True
    )
    before = storage.get_current_version()
    storage.upgrade()
    return before, storage.get_current_version()


_NOT_TRANSIENT = re.compile(r"no such table|does not exist|doesn't exist|unknown column|syntax error", re.IGNORECASE)


def driver_error(exc: BaseException) -> BaseException | None:
    """The database driver's error behind ``exc`` (Optuna re-raises them as ``StorageInternalError``), if any."""
    from sqlalchemy.exc import DBAPIError

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, DBAPIError):
            return seen.orig if seen.orig is not None else seen
        seen = seen.__cause__ or seen.__context__
    return None


def is_storage_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a database error worth retrying: a lost connection, a server restarting, a lock
    timeout. Missing tables and bad SQL are not: retrying cannot fix them."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OperationalError | InterfaceError):
            return not _NOT_TRANSIENT.search(str(seen))
        seen = seen.__cause__ or seen.__context__
    return False


def schema_exists(url: str) -> bool:
    """Whether ``url`` holds Optuna's tables (workers never create them: ``hpo create`` / ``hpo db upgrade`` do)."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    if make_url(url).get_backend_name() == "sqlite" and database not in (None, "", ":memory:"):
        if not database.startswith("file:") and not os.path.exists(database):
            return False  # connecting would create an empty file at a mistyped path
    engine = sqlalchemy.create_engine(url, **engine_kwargs(url))
    try:
        return {"studies", "version_info"} <= set(sqlalchemy.inspect(engine).get_table_names())
    finally:
        engine.dispose()
