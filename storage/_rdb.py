"""Creating the Optuna study storage for a URL."""

from __future__ import annotations

import optuna

from storage._url import engine_kwargs, validate_storage_url


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
    return optuna.storages.RDBStorage(
        url,
        engine_kwargs=engine_kwargs(url),
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
        heartbeat_stale_trial_callback=(
            optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retries) if heartbeat_interval else None
        ),
        skip_table_creation=not create_tables,
    )


def upgrade_schema(url: str) -> tuple[str, str]:
    """Run Optuna's schema migration on ``url``; returns the (before, after) schema versions."""
    validate_storage_url(url)
    storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url), skip_compatibility_check=True)
    before = storage.get_current_version()
    storage.upgrade()
    return before, storage.get_current_version()


def is_storage_error(exc: BaseException) -> bool:
    """Whether ``exc`` came from the database driver (connection lost, server restarting, ...), directly or
    wrapped (Optuna re-raises driver errors as ``StorageInternalError``)."""
    from sqlalchemy.exc import DBAPIError

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, DBAPIError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
