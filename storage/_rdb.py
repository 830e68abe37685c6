"""Creating the Optuna study storage for a URL."""

from __future__ import annotations

import optuna

from storage._url import engine_kwargs, validate_storage_url


def create_storage(
    url: str, *, heartbeat_interval: int | None = None, grace_period: int | None = None
) -> optuna.storages.RDBStorage:
    """Open (and on first use create the tables of) the Optuna RDB storage at ``url``.

    With ``heartbeat_interval`` set, running trials send heartbeats and a trial whose worker died is marked FAIL
    once ``grace_period`` seconds pass without one.
    """
    validate_storage_url(url)
    return optuna.storages.RDBStorage(
        url,
        engine_kwargs=engine_kwargs(url),
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
    )
