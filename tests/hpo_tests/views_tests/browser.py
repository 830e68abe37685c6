"""Headless Chromium for the browser tests: the DOM after the page rendered, and screenshots."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--hide-scrollbars",
    "--virtual-time-budget=10000",  # run the page's scripts to completion (virtual time) before dumping
]

OFFLINE = ["--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>"]
"""Every request that is not to this machine goes to a closed port: the page has no network."""


def chromium() -> str:
    """The Chromium binary; CI installs Debian's chromium (.ci/run), so there it must be present."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        import os

        if os.environ.get("CI"):
            pytest.fail("chromium is missing; .ci/run installs it")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


def _run(url: str, extra: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", *extra, url],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def dom(url: str, *, offline: bool = False, timeout: float = 90) -> str:
    """The page's DOM once its scripts have run."""
    result = _run(url, ["--dump-dom", *(OFFLINE if offline else [])], timeout)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def screenshot(url: str, out: Path, *, size: str = "1400,900", offline: bool = False, timeout: float = 90) -> Path:
    """A PNG of the rendered page."""
    result = _run(url, [f"--screenshot={out}", f"--window-size={size}", *(OFFLINE if offline else [])], timeout)
    assert result.returncode == 0 and out.is_file(), result.stderr[-2000:]
    return out
