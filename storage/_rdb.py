"""Creating the Optuna study storage for a URL."""

from __future__ import annotations

import datetime
import json
import os
import re
import time
import warnings
from typing import Any

import optuna
from optuna.trial import FrozenTrial

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
    times. Workers pass ``create_tables=False``: only ``hpo create`` / ``hpo db upgrade`` change the schema.
    """
    validate_storage_url(url)
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(5):
        try:
            with warnings.catch_warnings():  # heartbeats and their retry callback are experimental since Optuna 2
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs(url),
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                    heartbeat_stale_trial_callback=LostWorkerCallback(max_retries) if heartbeat_interval else None,
                    skip_table_creation=not create_tables,
                )
        except (IntegrityError, ProgrammingError) as exc:
            # Two first-time creators race on CREATE TABLE (PostgreSQL: UniqueViolation on pg_type) or on the
            # version row; the loser finds the tables made once the winner commits.
            if not create_tables or attempt == 4 or not _CREATE_RACE.search(str(exc)):
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


class LostWorkerCallback:
    """Optuna's stale-trial callback, recording why first: ``fail_reason: worker lost (no heartbeat for N s; held
    by HOST pid PID)``, then re-queueing the trial with the same parameters up to ``max_retry`` times
    (``RetryHeartbeatStaleTrialCallback``)."""

    def __init__(self, max_retry: int) -> None:
        self.max_retry = max_retry

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        rdb = getattr(study._storage, "_backend", study._storage)
        if isinstance(rdb, optuna.storages.RDBStorage):
            silent = _heartbeat_age(rdb, trial._trial_id)
            held = f"{trial.user_attrs.get('host', '?')} pid {trial.user_attrs.get('pid', '?')}"
            since = f"no heartbeat for {silent:.0f} s" if silent is not None else "no heartbeat"
            _add_trial_attrs(rdb, trial._trial_id, {FAIL_REASON: f"worker lost ({since}; held by {held})"})
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=self.max_retry)(study, trial)


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


def upgrade_schema(url: str) -> tuple[str, str]:
    """Run Optuna's schema migration on ``url``; returns the (before, after) schema versions."""
    validate_storage_url(url)
    storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url), skip_compatibility_check=True)
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
