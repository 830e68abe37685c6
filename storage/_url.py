"""Storage URLs: choosing one, hiding its password, and engine options per database."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

DEFAULT_STORAGE_URL = "sqlite:///hpo.db"
"""The embedded default: a SQLite file in the working directory."""

# user:password@ with or without a scheme in front; over-redacting free text is the safe side.
_URL_PASSWORD = re.compile(r"(?P<head>(?:[a-zA-Z][\w+.-]*://)?[^:/@\s]*:)(?P<password>[^@\s]*)(?P<tail>@)")


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
        make_url(url)
    except ArgumentError as exc:
        raise ValueError(
            f"storage: {redact_url(url)!r} is not a database URL; use e.g. sqlite:///hpo.db or "
            "postgresql+psycopg://user@host:5432/db"
        ) from exc


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``; safe to log."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return _URL_PASSWORD.sub(r"\g<head>***\g<tail>", url)
    if parsed.password is None:
        return url
    return parsed.render_as_string(hide_password=True)


def redact_text(text: str) -> str:
    """Replace the password of every URL inside free ``text`` (e.g. an exception message) by ``***``."""
    return _URL_PASSWORD.sub(r"\g<head>***\g<tail>", text)


def engine_kwargs(url: str) -> dict[str, Any]:
    """SQLAlchemy engine options suited to the database behind ``url``.

    SQLite: a long busy timeout, so several local worker processes wait for the write lock instead of failing.
    Server databases: ``pool_pre_ping`` so a connection dropped by a database restart is replaced, not used.
    """
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True, "pool_recycle": 3600}
