"""``hpo status``: the terminal table with an ETA from the trial budget, ``--watch``; quiet runs off a terminal."""

from __future__ import annotations

import datetime
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import yaml

from hpo.views import eta, format_cell
from tests.hpo_tests.execution_tests.test_workers import synthetic


def hpo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hpo._cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


def test_status_shows_best_values_and_an_eta_from_the_budget(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    config = synthetic("eta", n_trials=8, synthetic={"steps": 2, "sleep": 0.2})
    (tmp_path / "eta.yaml").write_text(yaml.safe_dump(config))
    assert hpo("create", "eta.yaml", "--storage", url, cwd=tmp_path).returncode == 0
    worker = hpo("worker", "--storage", url, "--study", "eta", "--n-trials", "3", cwd=tmp_path)
    assert worker.returncode == 0, worker.stderr

    out = hpo("status", "--storage", url, "--study", "eta", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "study 'eta': COMPLETE 3 (budget 8)"
    assert lines[1].startswith("  ETA: ") and lines[1].endswith("trials/min)") and "(5 of 8 trials left at " in lines[1]
    assert lines[2].split() == ["best", "accuracy"]
    study = optuna.load_study(study_name="eta", storage=url)
    best = study.best_trial
    assert lines[4].split() == ["trial", str(best.number), format_cell("accuracy", best.value)]

    # The ETA is the time left at the rate trials have finished since the first one started.
    start = min(t.datetime_start for t in study.trials)
    now = start + datetime.timedelta(seconds=90)  # 3 trials in 90 s: 2 trials/min, 5 left: 2m30s
    assert eta(study, now) == "ETA: 2m30s (5 of 8 trials left at 2 trials/min)"
    study.set_user_attr("n_trials", 3)
    assert eta(study, now) == "budget spent (3 of 3 trials finished)"


def test_watch_refreshes_until_interrupted_and_rejects_a_bad_interval(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    (tmp_path / "w.yaml").write_text(yaml.safe_dump(synthetic("w", n_trials=2)))
    run = hpo("run", "w.yaml", "--storage", url, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    # Not a terminal: no progress bars, only the log lines.
    assert "\r" not in run.stderr and "trials:" not in run.stderr and "[2/2] trial 1 COMPLETE" in run.stderr

    proc = subprocess.Popen(
        [sys.executable, "-m", "hpo._cli", "status", "--storage", url, "--watch", "0.3"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    refreshes = 0
    deadline = time.monotonic() + 60
    assert proc.stdout is not None
    while refreshes < 3 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        refreshes += line.startswith("(refreshed ")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert refreshes == 3 and proc.returncode == 0, err
    assert "\033[2J" not in out  # the screen is cleared only on a terminal

    bad = hpo("status", "--storage", url, "--watch", "0", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip() == "hpo: error: --watch: must be > 0 seconds, got 0.0"
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    none = hpo("status", "--storage", empty, cwd=tmp_path)
    assert none.returncode == 2
    assert none.stderr.strip() == f"hpo: error: --storage: {empty} has no studies; run hpo create or hpo run first"
