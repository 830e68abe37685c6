"""Leases in the study's database decide which process writes a shared artifact: real processes on real SQLite,
PostgreSQL and MariaDB race, die by kill -9 mid-write, and write for longer than a lease lasts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from storage import ArtifactDir, Leases

# One producer process: publish the artifact "teacher" of study NAME, writing for SECONDS when it holds the lease.
PRODUCER = """
import os, sys, time
from storage import ArtifactDir, Leases
url, root, name, log, seconds, ttl, renew = sys.argv[1:]

def write(tmp):
    tmp.write_text("half")
    with open(log, "a") as f:
        f.write(f"start {os.getpid()} {time.time()}\\n")
    time.sleep(float(seconds))
    tmp.write_text(str(os.getpid()))

wrote = ArtifactDir(root, name).produce("teacher", write, Leases(url, ttl=float(ttl), renew_every=float(renew)))
print("wrote" if wrote else "waited", time.time(), flush=True)
"""


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/s.db"
    return request.getfixturevalue("pg_url" if request.param == "postgresql" else "mysql_url")


def _producer(url: str, root: Path, name: str, log: Path, seconds: float, ttl: float, renew: float) -> subprocess.Popen:
    args = [url, str(root), name, str(log), str(seconds), str(ttl), str(renew)]
    # its own process group, so a test can kill it and all it started, as a node's OOM killer or a scheduler would
    return subprocess.Popen(
        [sys.executable, "-c", PRODUCER, *args], stdout=subprocess.PIPE, text=True, start_new_session=True
    )


def _starts(log: Path) -> list[tuple[int, float]]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [(int(pid), float(at)) for _, pid, at in (line.split() for line in lines)]


def _wait_for_start(log: Path, timeout: float = 60.0) -> tuple[int, float]:
    deadline = time.monotonic() + timeout
    while not _starts(log):
        assert time.monotonic() < deadline, "no producer started writing"
        time.sleep(0.05)
    return _starts(log)[0]


def test_racing_processes_write_once(url: str, tmp_path: Path) -> None:
    name, log = f"race-{uuid.uuid4().hex[:8]}", tmp_path / "log"
    Leases(url).take("warm-up")  # the table exists before the race (its creation race is tested below)
    procs = [_producer(url, tmp_path, name, log, 1.5, 3.0, 0.5) for _ in range(4)]
    results = [p.communicate(timeout=120)[0].split()[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0]
    assert sorted(results) == ["waited", "waited", "waited", "wrote"]
    [(writer, _)] = _starts(log)  # exactly one process wrote
    assert (ArtifactDir(tmp_path, name).entry("teacher")).read_text() == str(writer)
    assert Leases(url).holder(f"artifact:{name}/teacher") is None  # released after publishing


def test_first_users_create_the_lease_table_once(tmp_path: Path) -> None:
    url, log = f"sqlite:///{tmp_path}/fresh.db", tmp_path / "log"
    procs = [_producer(url, tmp_path, "fresh", log, 0.5, 3.0, 0.5) for _ in range(3)]
    assert sorted(p.communicate(timeout=120)[0].split()[0] for p in procs) == ["waited", "waited", "wrote"]
    assert len(_starts(log)) == 1


def test_a_holder_killed_mid_write_is_taken_over_after_its_lease_expires(url: str, tmp_path: Path) -> None:
    name, log, ttl = f"kill-{uuid.uuid4().hex[:8]}", tmp_path / "log", 3.0
    holder = _producer(url, tmp_path, name, log, 600, ttl, 0.5)
    holder_pid, _ = _wait_for_start(log)
    owner = Leases(url).holder(f"artifact:{name}/teacher")
    assert owner is not None and f":{holder_pid}:" in owner
    time.sleep(1.0)  # renewed at least once
    os.killpg(holder.pid, signal.SIGKILL)
    killed_at = time.time()
    holder.wait(10)
    heir = _producer(url, tmp_path, name, log, 0.2, ttl, 0.5)
    assert heir.communicate(timeout=120)[0].split()[0] == "wrote"
    (_, _), (heir_pid, took_at) = _starts(log)
    artifacts = ArtifactDir(tmp_path, name)
    assert artifacts.entry("teacher").read_text() == str(heir_pid)
    # not before the dead holder's lease ran out: its last renewal was at most 0.5 s before the kill
    assert took_at - killed_at >= ttl - 0.5 - 0.2
    assert list(artifacts.path.glob(f".teacher.tmp-{holder_pid}"))  # the killed holder's half write stays aside


def test_renewal_keeps_a_long_writes_lease(url: str, tmp_path: Path) -> None:
    name, log, ttl = f"long-{uuid.uuid4().hex[:8]}", tmp_path / "log", 1.5
    writer = _producer(url, tmp_path, name, log, 4 * ttl, ttl, 0.3)  # writes for four lease lifetimes
    writer_pid, started = _wait_for_start(log)
    waiter = _producer(url, tmp_path, name, log, 0.1, ttl, 0.3)
    out, _ = waiter.communicate(timeout=120)
    assert writer.communicate(timeout=120)[0].split()[0] == "wrote"
    assert out.split()[0] == "waited" and float(out.split()[1]) >= started + 4 * ttl  # waited for the whole write
    assert [pid for pid, _ in _starts(log)] == [writer_pid]
    assert ArtifactDir(tmp_path, name).entry("teacher").read_text() == str(writer_pid)


def test_take_renew_release(url: str) -> None:
    name = f"unit-{uuid.uuid4().hex[:8]}"
    mine, theirs = Leases(url, ttl=1.0, renew_every=0.2), Leases(url, ttl=1.0, renew_every=0.2)
    assert mine.take(name) and mine.take(name)  # taken, and ours to take again
    assert not theirs.take(name) and not theirs.renew(name)
    time.sleep(1.2)
    assert theirs.take(name)  # expired: taken over
    assert not mine.renew(name) and mine.holder(name) == theirs.owner  # the old holder learns it lost it
    theirs.release(name)
    assert mine.holder(name) is None and mine.take(name)
    mine.release(name)
    with pytest.raises(ValueError, match="renew_every"):
        Leases(url, ttl=1.0, renew_every=1.0)
