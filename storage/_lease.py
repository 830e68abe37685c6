"""Leases in the study's database: which process produces a shared artifact, without file locks.

A lease is a row of ``hpo_leases(name, owner, expires_at)`` in the study's own database. Taking it is one atomic
statement: an INSERT for the first taker (the primary key refuses a second), else a compare-and-set
``UPDATE ... WHERE name = :name AND (expires_at < now OR owner = :me)``. Its holder renews it from a thread while it
works; a holder killed mid-work stops renewing, and once its lease expires another process takes it over. Time is
the database's clock, so nodes whose clocks disagree still agree on expiry.

File locks need none of this, but ``flock`` fails with ENOSYS on Lustre mounted without ``-o flock``, and excludes
nobody across nodes on ``localflock``, ``nolock`` NFS or FUSE mounts; every worker already reaches the database.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator

import optuna
import sqlalchemy
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from storage._url import redact_text

log = logging.getLogger("hpo")

_METADATA = sqlalchemy.MetaData()
LEASES = sqlalchemy.Table(
    "hpo_leases",
    _METADATA,
    sqlalchemy.Column("name", sqlalchemy.String(191), primary_key=True),  # 191: MySQL's utf8mb4 key limit
    sqlalchemy.Column("owner", sqlalchemy.String(255), nullable=False),
    sqlalchemy.Column("expires_at", sqlalchemy.BigInteger, nullable=False),  # ms since the epoch, database clock
)


_NOW = {  # the database's clock to the millisecond (CURRENT_TIMESTAMP has whole seconds on SQLite and MySQL)
    "sqlite": sqlalchemy.func.strftime("%Y-%m-%d %H:%M:%f", "now"),
    "postgresql": sqlalchemy.func.clock_timestamp(),
    "mysql": sqlalchemy.func.now(6),
    "mariadb": sqlalchemy.func.now(6),
}


def lease_owner() -> str:
    """``host:pid:random``: unique to this process, readable in the table."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Leases:
    """The leases of one database (an Optuna ``RDBStorage``, or a database URL).

    A lease lasts ``ttl`` seconds from its last renewal; :meth:`held` renews it every ``renew_every`` seconds.
    """

    def __init__(self, database: optuna.storages.BaseStorage | str, ttl: float = 60.0, renew_every: float = 10.0):
        if renew_every >= ttl:
            raise ValueError(f"leases: renew_every ({renew_every} s) must be below ttl ({ttl} s)")
        if isinstance(database, str):
            self.engine = sqlalchemy.create_engine(database)
        else:
            rdb = getattr(database, "_backend", database)  # under Optuna's cache wrapper, if any
            if not isinstance(rdb, optuna.storages.RDBStorage):
                raise TypeError(f"leases need a relational study storage, not {type(rdb).__name__}")
            self.engine = rdb.engine
        self.ttl = ttl
        self.renew_every = renew_every
        self.owner = lease_owner()
        self._created = False

    def _table(self) -> sqlalchemy.Table:
        if not self._created:
            try:
                _METADATA.create_all(self.engine, checkfirst=True)
            except (IntegrityError, OperationalError, ProgrammingError) as exc:
                # two first users race on CREATE TABLE; the loser finds it made
                if "hpo_leases" not in sqlalchemy.inspect(self.engine).get_table_names():
                    raise exc
            self._created = True
        return LEASES

    def _expiry(self, conn: sqlalchemy.Connection) -> tuple[int, int]:
        """(now, now + ttl) in ms by the database's clock."""
        now = conn.execute(sqlalchemy.select(_NOW[conn.dialect.name])).scalar_one()
        if isinstance(now, str):  # SQLite: 'YYYY-MM-DD HH:MM:SS.SSS' in UTC
            now = datetime.datetime.fromisoformat(now)
        if now.tzinfo is not None:
            now = now.astimezone(datetime.UTC).replace(tzinfo=None)
        ms = int((now - datetime.datetime(1970, 1, 1)) / datetime.timedelta(milliseconds=1))
        return ms, ms + int(self.ttl * 1000)

    def take(self, name: str) -> bool:
        """Take the lease ``name`` if it is free, expired or already ours; False while another process holds it."""
        table = self._table()
        try:
            with self.engine.begin() as conn:
                _, expires = self._expiry(conn)
                conn.execute(table.insert().values(name=name, owner=self.owner, expires_at=expires))
            return True
        except IntegrityError:
            pass  # it exists: take it over only if it expired (its holder died) or is ours
        with self.engine.begin() as conn:
            now, expires = self._expiry(conn)
            taken = conn.execute(
                table.update()
                .where(table.c.name == name, (table.c.expires_at < now) | (table.c.owner == self.owner))
                .values(owner=self.owner, expires_at=expires)
            ).rowcount
        return taken == 1

    def renew(self, name: str) -> bool:
        """Extend our lease ``name`` by ``ttl``; False if it is no longer ours (it expired and was taken over)."""
        table = self._table()
        with self.engine.begin() as conn:
            _, expires = self._expiry(conn)
            renewed = conn.execute(
                table.update().where(table.c.name == name, table.c.owner == self.owner).values(expires_at=expires)
            ).rowcount
        return renewed == 1

    def release(self, name: str) -> None:
        """Give up our lease ``name`` (nothing if it is not ours)."""
        table = self._table()
        with self.engine.begin() as conn:
            conn.execute(table.delete().where(table.c.name == name, table.c.owner == self.owner))

    def holder(self, name: str) -> str | None:
        """The owner of lease ``name``, expired or not; None when nobody holds it."""
        table = self._table()
        with self.engine.connect() as conn:
            return conn.execute(sqlalchemy.select(table.c.owner).where(table.c.name == name)).scalar_one_or_none()

    @contextlib.contextmanager
    def held(self, name: str) -> Iterator[None]:
        """Keep our (taken) lease ``name`` renewed while the block runs, then release it."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.renew_every):
                try:
                    if not self.renew(name):
                        log.warning("lease %s expired and was taken over while this process held it", name)
                        return
                except Exception as exc:  # a database blip: the next beat tries again before the lease expires
                    log.warning("renewing lease %s failed: %s", name, redact_text(str(exc).splitlines()[0]))

        thread = threading.Thread(target=beat, name=f"lease {name}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            try:
                self.release(name)
            except Exception as exc:  # the work is done; the lease expires by itself
                log.warning("releasing lease %s failed: %s", name, redact_text(str(exc).splitlines()[0]))
