"""``hpo dashboard`` on a study from a real short run, loaded in headless Chromium; progress bars of that run."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_bert, tiny_config
from tests.hpo_tests.execution_tests.test_workers import synthetic
from tests.hpo_tests.views_tests import browser
from tests.hpo_tests.views_tests.test_report import PNG_MAGIC, multi_objective


def in_terminal(args: list[str], cwd: Path, timeout: float = 300) -> tuple[int, str]:
    """Run a command with stdout and stderr on a pseudo-terminal 120 columns wide; returns its exit code and
    everything it wrote."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(args, cwd=cwd, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=30), b"".join(chunks).decode(errors="replace")


def hpo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hpo._cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, str]:
    """A SQLite storage with a study from a real short run (MiniLM teacher and two distilled students, run on a
    terminal) and a multi-objective synthetic study with a crashed trial; returns (url, dir, terminal output)."""
    tmp = tmp_path_factory.mktemp("dashboard")
    url = f"sqlite:///{tmp / 'studies.db'}"
    (tmp / "real.yaml").write_text(yaml.safe_dump(tiny_config("real")))
    code, output = in_terminal([sys.executable, "-m", "hpo._cli", "run", "real.yaml", "--storage", url], tmp)
    assert code == 0, output[-3000:]
    (tmp / "pareto.yaml").write_text(yaml.safe_dump(multi_objective()))
    result = hpo("run", "pareto.yaml", "--storage", url, cwd=tmp)
    assert result.returncode == 0, result.stderr
    return url, tmp, output


def test_a_run_on_a_terminal_shows_trials_of_the_budget_and_training_steps(studies: tuple[str, Path, str]) -> None:
    _, _, output = studies
    lines = re.split(r"[\r\n]+", output)
    assert any(re.match(r"trials: +100%\|.*\| 2/2 ", line) for line in lines)
    assert any(re.match(r"teacher: +100%\|.*\| 4/4 .*loss=\d\.\d{4}, val_acc=\d\.\d{4}\]", line) for line in lines)
    for number in (0, 1):
        steps = [line for line in lines if line.startswith(f"trial {number}: ")]
        assert any(re.search(r"\| 4/4 .*loss=\d\.\d{4}, val_acc=\d\.\d{4}\]", line) for line in steps), steps
    # Log lines print above the bars, whole.
    assert re.search(r"INFO \[2/2\] trial 1 COMPLETE in \d+s: accuracy=", output)


@pytest.fixture
def dashboard(studies: tuple[str, Path, str]) -> Iterator[tuple[str, str]]:
    """``hpo dashboard --port 0`` on the studies; yields (base URL, what it printed)."""
    url, tmp, _ = studies
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpo._cli", "dashboard", "--storage", url, "--port", "0"],
        cwd=tmp,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    printed = proc.stdout.readline() + proc.stdout.readline()
    match = re.search(r"http://127\.0\.0\.1:(\d+)/dashboard", printed)
    assert match, printed + proc.stderr.read() if proc.poll() is not None else printed
    base = f"http://127.0.0.1:{match.group(1)}"
    try:
        yield base, printed
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0


def get(url: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, response.read()


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on ``port`` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(socket.inet_ntoa(struct.pack("<I", int(address, 16))))
    return found


def test_dashboard_shows_the_real_study_its_trials_metrics_and_config(
    studies: tuple[str, Path, str], dashboard: tuple[str, str], tmp_path: Path
) -> None:
    base, printed = dashboard
    assert "bound to this machine only" in printed
    assert listening_addresses(int(base.rsplit(":", 1)[1])) == {"127.0.0.1"}
    assert get(f"{base}/api/meta")[0] == 200
    assert get(f"{base}/static/bundle.js")[0] == 200
    ids = {s["study_name"]: s["study_id"] for s in json.loads(get(f"{base}/api/studies")[1])["study_summaries"]}
    real, pareto = ids["real"], ids["pareto"]
    # Each trial's per-class scores reach the dashboard as a user attribute (JSON, by class name).
    detail = json.loads(get(f"{base}/api/studies/{real}")[1])
    for trial in detail["trials"]:
        attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
        assert list(json.loads(attrs["per_class"])) == ["negative", "positive"]

    # The study page renders its plots (plotly draws SVG) with the objective named.
    page = browser.dom(f"{base}/dashboard/studies/{real}")
    assert page.count("js-plotly-plot") >= 2 and 'class="main-svg"' in page
    assert "accuracy" in page and "Objective 0" not in page

    # The trial list lists both trials; the trial view shows every metric the trial recorded.
    trials = browser.dom(f"{base}/dashboard/studies/{real}/trials")
    assert {"Trial 0", "Trial 1"} <= set(re.findall(r"Trial \d+", trials))
    for attr in ("accuracy", "f1", "latency_ms", "latency_ms_p95", "throughput", "size_mb", "params", "host"):
        assert re.search(rf">{attr} [^<]+</p>", trials), attr  # the user attribute and its value
    assert re.search(r">per_class [^<]*negative[^<]*recall[^<]+</p>", trials)  # each class's scores, by name

    # The config is on the study's note.
    note = browser.dom(f"{base}/dashboard/studies/{real}/note")
    assert "Study config (written by hpo dashboard)" in note and "distill.temperature" in note
    assert re.search(rf"Teacher <code[^>]*>{re.escape(tiny_bert())}</code>: accuracy \d\.\d+", note)

    # Multi-objective: both axes named by their metric; a failed trial shows its fail reason.
    front = browser.dom(f"{base}/dashboard/studies/{pareto}")
    assert "Pareto Front" in front and "latency_ms" in front and "Objective 0" not in front
    failed = browser.dom(f"{base}/dashboard/studies/{pareto}/trials?numbers=2")
    assert ">fail_reason RuntimeError: synthetic crash in trial 2</p>" in failed

    shot = browser.screenshot(f"{base}/dashboard/studies/{real}", tmp_path / "dashboard.png")
    assert shot.read_bytes().startswith(PNG_MAGIC) and shot.stat().st_size > 20_000


def test_dashboard_on_postgresql_hides_the_password_and_says_when_it_is_exposed(tmp_path: Path, pg_url: str) -> None:
    name = f"dash-{uuid.uuid4().hex[:8]}"
    secret = "s3cret-pw"
    # Trust authentication ignores the password, so a URL carrying one still connects.
    with_password = pg_url.replace("://postgres@", f"://postgres:{secret}@")
    assert secret in with_password
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(synthetic(name, n_trials=2)))
    assert hpo("run", "s.yaml", "--storage", with_password, cwd=tmp_path).returncode == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpo._cli", "dashboard", "--storage", with_password, "--host", "0.0.0.0", "--port", "0"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    printed = proc.stdout.readline() + proc.stdout.readline()
    try:
        match = re.search(r"http://0\.0\.0\.0:(\d+)/dashboard", printed)
        assert match, printed
        assert "reachable from the network" in printed and "***" in printed
        assert listening_addresses(int(match.group(1))) == {"0.0.0.0"}
        assert get(f"http://127.0.0.1:{match.group(1)}/api/meta")[0] == 200
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert secret not in printed + out + err


def test_a_port_in_use_is_one_line_naming_the_flag(studies: tuple[str, Path, str]) -> None:
    url, tmp, _ = studies
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = hpo("dashboard", "--storage", url, "--port", str(port), cwd=tmp)
    assert result.returncode == 2
    assert result.stderr.strip() == f"hpo: error: --port: port {port} on 127.0.0.1 is in use; pick another with --port"
