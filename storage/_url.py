"""Storage URLs: choosing one, hiding its password, and engine options per database."""

from __future__ import annotations

import os
import re
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

DEFAULT_STORAGE_URL = "sqlite:///hpo.db"
"""The embedded default: a SQLite file in the working directory."""

# user:password@ with or without a scheme in front (but never the ``//`` of ``scheme://user@``, which has no
# password); over-redacting free text is the safe side.
_URL_PASSWORD = re.compile(r"(?P<head>(?:[a-zA-Z][\w+.-]*://)?[^:/@\s]*:)(?P<password>(?!//)[^@\s]*)(?P<tail>@)")

SECRET_KEY = re.compile(r"pass|pwd|secret|token", re.IGNORECASE)
"""A URL query key naming a secret (``password``, ``passwd``, ``sslpassword``, ``client_secret``, ``token``, ...)."""

# key=value (in a query string, or a libpq "key=value key=value" string) whose key names a secret; the value runs
# to the next separator, quote or space.
_QUERY_SECRET = re.compile(
    r"(?P<head>(?:^|[?&;\s])[^=&;\s]*(?:pass|pwd|secret|token)[^=&;\s]*=)(?P<value>[^&;\s'\"]*)", re.I
)

_DRIVERS = {
    "mysql": "mysql+pymysql:// with pip install 'distill-hpo[mysql]'",
    "mariadb": "mysql+pymysql:// with pip install 'distill-hpo[mysql]'",
    "postgresql": "postgresql+psycopg:// with pip install 'distill-hpo[postgres]'",
}


def resolve_storage_url(flag: str | None, env: str | None, config: str | None) -> str:
    """Return the storage URL by precedence: ``--storage`` flag, ``HPO_STORAGE``, the config, the default."""
    for candidate in (flag, env, config):
        if candidate:
            validate_storage_url(candidate)
            return candidate
    return DEFAULT_STORAGE_URL


def validate_storage_url(url: str) -> None:
    """Raise ``ValueError`` naming the problem when ``url`` is not a database URL SQLAlchemy understands."""
    try:
        parsed = make_url(url)
        dialect = parsed.get_dialect()
    except (ArgumentError, ValueError) as exc:
        raise ValueError(
            f"storage: {redact_url(url)!r} is not a database URL; use e.g. sqlite:///hpo.db or "
            "postgresql+psycopg://user@host:5432/db"
        ) from exc
    except ImportError as exc:  # an unknown dialect (``NoSuchModuleError``) or its module
        raise ValueError(f"storage: {redact_url(url)!r}: unknown database ({exc})") from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        use = _DRIVERS.get(parsed.get_backend_name(), "a driver SQLAlchemy supports for it")
        raise ValueError(
            f"storage: {parsed.drivername}:// needs the database driver {exc.name or exc}, which is not installed; "
            f"use {use}"
        ) from None


def redact_url(url: str) -> str:
    """Return ``url`` with its password, and every query value whose key names a secret, replaced by ``***``;
    safe to log."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return redact_text(url)
    secrets = {key: "***" for key in parsed.query if SECRET_KEY.search(key)}
    if parsed.password is None and not secrets:
        return url
    # render_as_string percent-encodes the query; the stars are put back as they read.
    shown = parsed.update_query_dict(secrets).render_as_string(hide_password=True)
    return shown.replace("%2A%2A%2A", "***")


def redact_text(text: str) -> str:
    """Replace the password of every URL inside free ``text`` (e.g. an exception message), and every
    ``?key=value`` whose key names a secret, by ``***``."""
    text = _URL_PASSWORD.sub(r"\g<head>***\g<tail>", text)
    return _QUERY_SECRET.sub(r"\g<head>***", text)


POOL_SIZE_ENV = "HPO_DB_POOL_SIZE"
"""Environment variable: database connections one process may hold (default 1)."""


def pool_size() -> int:
    """The connections one process may hold on a server database: ``HPO_DB_POOL_SIZE``, default 1.

    One is enough for a worker: Optuna's heartbeat thread and the trial's own calls take turns on it (each holds it
    for one short transaction), so N worker processes need N connections, not 2N. Raises ``ValueError`` naming the
    variable when it is not an integer >= 1."""
    value = os.environ.get(POOL_SIZE_ENV, "1")
    try:
        size = int(value)
    except ValueError:
        size = 0
    if size < 1:
        raise ValueError(f"{POOL_SIZE_ENV}: must be an integer >= 1 (connections per process), got {value!r}")
    return size


def engine_kwargs(url: str, overflow: int = 0) -> dict[str, Any]:
    """SQLAlchemy engine options suited to the database behind ``url``.

    SQLite: a long busy timeout, so several local worker processes wait for the write lock instead of failing.
    Server databases: at most :func:`pool_size` connections per process, plus ``overflow`` opened for a moment and
    closed after (0 for workers: a thread that finds the connection busy waits for it instead of opening another),
    so the database's ``max_connections`` bounds the number of workers predictably; ``pool_pre_ping`` so a connection dropped by a database restart is replaced,
    not used. PostgreSQL connections carry the process id as ``application_name`` (seen in ``pg_stat_activity``).
    """
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        return {"connect_args": {"timeout": 60}}
    options: dict[str, Any] = {
        "pool_pre_ping": True,
        "pool_recycle": 3600,
        "pool_size": pool_size(),
        "max_overflow": overflow,
    }
    if backend == "postgresql":
        # pg_stat_activity names each process's connections (who holds how many).
        options["connect_args"] = {"application_name": f"hpo pid {os.getpid()}"}
        if make_url(url).get_driver_name() == "psycopg":
            # psycopg 3 prepares a statement it has run 5 times, on the server connection it ran on; behind
            # PgBouncer in transaction mode the next run lands on another and fails. Optuna's queries are cheap to
            # plan, so none is prepared: the same URL works direct and through PgBouncer.
            options["connect_args"]["prepare_threshold"] = None
    return options
