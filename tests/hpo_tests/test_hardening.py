"""Hardening of the service (issue 11): atomic study creation, no password in any output, one line per bad input,
safe artifacts and outputs. Real processes on real SQLite and PostgreSQL; nothing here trains a model."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import psycopg
import pytest
import torch
import yaml
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from hpo import config_from_dict
from hpo._cli import main
from hpo.execution import LogitCache
from hpo.study import CLAIM_ATTR, CONFIG_ATTR, load_study, open_study
from objectives import METRICS
from objectives.data import Encoded
from storage import ArtifactDir, Leases, create_storage
from tests.conftest import tiny_config


def hpo(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    environ = {**os.environ}
    environ.pop("HPO_STORAGE", None)
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "hpo._cli", *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=timeout
    )


def one_line_error(result: subprocess.CompletedProcess, start: str) -> None:
    """Exit 2, exactly one line on stderr, starting with ``hpo: error: START``; no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"hpo: error: {start}"), result.stderr[-2000:]


def synthetic(name: str, **overrides: object) -> dict:
    config = {
        "name": name,
        "objective": "synthetic",
        "n_trials": 2,
        "sampler": {"name": "random"},
        "pruner": {"name": "none"},
        "synthetic": {"steps": 2},
        "worker": {"heartbeat_interval": 1, "grace_period": 3, "storage_retries": 2},
        "search_space": {"train.lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}},
    }
    config.update(overrides)
    return config


def write(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.contextmanager
def fresh_database(pg_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database (unique name) beside ``pg_url``'s, dropped afterwards."""
    admin = make_url(pg_url)
    name = f"hpo_t_{uuid.uuid4().hex[:12]}"
    conninfo = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# 1. Creating a study is atomic ------------------------------------------------------------------------------------

GRID = {
    "train.lr": {"type": "categorical", "choices": [1e-4, 3e-4, 1e-3]},
    "distill.temperature": {"type": "categorical", "choices": [2.0, 4.0]},
}


@pytest.mark.slow
def test_concurrent_creators_queue_the_grid_once_on_a_fresh_postgresql_database(tmp_path: Path, pg_url: str) -> None:
    for round_ in range(5):  # same config in rounds 0, 2, 4; seeds 0 and 7 in rounds 1, 3
        same = round_ % 2 == 0
        name = f"race-{uuid.uuid4().hex[:8]}"
        paths = [
            write(
                tmp_path / f"{side}{round_}.yaml", synthetic(name, sampler={"name": "grid"}, search_space=GRID, seed=s)
            )
            for side, s in (("a", 0), ("b", 0 if same else 7))
        ]
        with fresh_database(pg_url) as url:  # both creators also race on creating the tables
            env = {**os.environ, "HPO_STORAGE": url}
            procs = [
                subprocess.Popen(
                    [sys.executable, "-m", "hpo._cli", "create", str(path)],
                    cwd=tmp_path,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for path in paths
            ]
            results = [(p.wait(120), *p.communicate()) for p in procs]
            for code, out, err in results:
                assert "Traceback" not in err, err
                if code == 0:
                    assert f"study {name!r} ready" in out and "6 queued trials" in out, out + err
                else:
                    errors = [line for line in err.splitlines() if " INFO " not in line]  # INFO: the study's URL
                    assert len(errors) == 1 and "exists with another config (seed: " in errors[0], err
            assert sorted(code for code, _, _ in results) == ([0, 0] if same else [0, 2]), results
            study = optuna.load_study(study_name=name, storage=url)
            trials = study.get_trials(deepcopy=False)
            assert len(trials) == 6 and all(t.state == TrialState.WAITING for t in trials)
            points = {tuple(sorted(t.system_attrs["fixed_params"].items())) for t in trials}
            assert len(points) == 6  # every grid point queued, none twice
            stored = study.user_attrs[CONFIG_ATTR]
            assert (
                stored == study._storage.get_study_system_attrs(study._study_id)[CLAIM_ATTR]["config"]
            )  # one stored config: the winner's


# 2. No password in any output -------------------------------------------------------------------------------------

SECRET = "Hunter2pw"


@pytest.mark.slow  # a minute of real processes; CI runs it
def test_no_command_prints_the_password_on_success_or_failure(tmp_path: Path, pg_url: str) -> None:
    # The password in the query string (trust authentication ignores it, so these succeed); on failure in both places.
    name = f"pw-{uuid.uuid4().hex[:8]}"
    config = write(tmp_path / "s.yaml", synthetic(name))
    good = f"{pg_url}?password={SECRET}&sslpassword={SECRET}"
    down = f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:9/test?password={SECRET}&sslpassword={SECRET}"
    outputs = []
    for args in (
        ("create", str(config)),
        ("run", str(config)),
        ("worker", "--study", name, "--n-trials", "1"),
        ("status",),
        ("status", "--study", "no-such-study"),
        ("export", "--study", name, "--list"),
        ("db", "upgrade"),
    ):
        ok = hpo(*args, "--storage", good, cwd=tmp_path)
        assert ok.returncode in (0, 2), ok.stderr[-2000:]
        outputs.append(ok.stdout + ok.stderr)
        if args[0] in ("create", "run", "status"):
            failed = hpo(*args, cwd=tmp_path, env={"HPO_STORAGE": down})
            assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr[-2000:]
            outputs.append(failed.stdout + failed.stderr)
    assert any("retry 1/1" in text for text in outputs)  # the retry warnings were printed, and redacted
    assert any("***" in text for text in outputs)
    for text in outputs:
        assert SECRET not in text, text
    dashboard = subprocess.Popen(
        [sys.executable, "-m", "hpo._cli", "dashboard", "--storage", good, "--port", "0"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert dashboard.stdout is not None
    banner = dashboard.stdout.readline() + dashboard.stdout.readline()
    dashboard.send_signal(signal.SIGINT)
    out, err = dashboard.communicate(timeout=30)
    assert "optuna-dashboard on postgresql+psycopg://" in banner and SECRET not in banner + out + err
    study = optuna.load_study(study_name=name, storage=pg_url)
    assert SECRET not in json.dumps([study.user_attrs, study._storage.get_study_system_attrs(study._study_id)])
    optuna.delete_study(study_name=name, storage=pg_url)


@contextlib.contextmanager
def database_with_password(backend: str, pg_url: str, mysql_url: str, password: str) -> Iterator[str]:
    """A fresh database and its URL without ``password``, which logs in with it. MariaDB: a new user who logs in
    with that password only (so a worker that runs trials got it); PostgreSQL (trust authentication here): the
    password is not checked."""
    if backend == "postgresql":
        with fresh_database(pg_url) as url:
            yield url
        return
    import pymysql

    name = f"hpo_t_{uuid.uuid4().hex[:12]}"
    admin = make_url(mysql_url)
    conn = pymysql.connect(host=admin.host, port=admin.port or 3306, user=admin.username, autocommit=True)
    try:
        with conn.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{name}`")
            cursor.execute(f"CREATE USER '{name}'@'%' IDENTIFIED BY '{password}'")  # letters and digits only
            cursor.execute(f"GRANT ALL ON `{name}`.* TO '{name}'@'%'")
        yield admin.set(username=name, database=name).render_as_string(hide_password=False)
    finally:
        with conn.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
            cursor.execute(f"DROP USER IF EXISTS '{name}'@'%'")
        conn.close()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
def test_worker_processes_get_the_password_through_a_pipe_not_their_environment(
    tmp_path: Path, pg_url: str, mysql_url: str, backend: str
) -> None:
    password = f"Pw{uuid.uuid4().hex[:12]}"
    with database_with_password(backend, pg_url, mysql_url, password) as url:
        secret = tmp_path / "db_password"
        secret.write_text(password + "\n")
        secret.chmod(0o600)
        env = {"HPO_STORAGE": url, "HPO_STORAGE_PASSWORD_FILE": str(secret)}  # as in docker-compose.yml
        config = write(tmp_path / "s.yaml", synthetic("piped", n_trials=4, synthetic={"steps": 2, "sleep": 1.0}))
        assert hpo("create", str(config), cwd=tmp_path, env=env).returncode == 0
        pool = subprocess.Popen(
            [sys.executable, "-m", "hpo._cli", "worker", "--procs", "2", "--until-idle", "--poll", "0.5"],
            cwd=tmp_path,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        seen: dict[int, tuple[bytes, bytes]] = {}
        while pool.poll() is None:  # read every child's environment and command line while it runs
            with contextlib.suppress(FileNotFoundError):
                for pid in Path(f"/proc/{pool.pid}/task/{pool.pid}/children").read_text().split():
                    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                        proc = Path("/proc", pid)
                        seen[int(pid)] = ((proc / "environ").read_bytes(), (proc / "cmdline").read_bytes())
            time.sleep(0.05)
        out, err = pool.communicate()
        assert pool.returncode == 0, err[-3000:]
        assert len(seen) == 2 and all(environ for environ, _ in seen.values())
        for environ, cmdline in seen.values():
            assert password.encode() not in environ + cmdline
            variables = dict(line.split(b"=", 1) for line in environ.split(b"\0") if b"=" in line)
            assert variables[b"HPO_STORAGE"] == url.encode()
            assert variables[b"HPO_STORAGE_PASSWORD_FILE"].startswith(b"/dev/fd/")
        with_password = make_url(url).set(password=password).render_as_string(hide_password=False)
        states = [t.state for t in optuna.load_study(study_name="piped", storage=with_password).trials]
        assert states == [TrialState.COMPLETE] * 4  # on MariaDB: the children logged in with the piped password
        assert password not in out + err


def test_a_failed_trial_keeps_no_password_in_its_fail_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hpo.execution import TrialRunner

    config = config_from_dict(synthetic("leak"))
    study = open_study(config, f"sqlite:///{tmp_path}/s.db")
    runner = TrialRunner(config)

    def unreachable(*args: object) -> None:
        raise RuntimeError(f"cannot load postgresql://u:{SECRET}@db/x?sslpassword={SECRET} (host=db password={SECRET})")

    monkeypatch.setattr(runner, "train", unreachable)
    study.optimize(runner, n_trials=1, catch=(RuntimeError,))
    reason = study.trials[0].user_attrs["fail_reason"]
    assert reason.startswith("RuntimeError: cannot load postgresql://u:***@db/x?sslpassword=***")
    assert SECRET not in reason


# 3. Every bad input: one line, exit 2, nothing left behind -----------------------------------------------------


def test_a_config_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(yaml.safe_dump(synthetic("caf")).encode() + b"# caf\xe9\n")
    one_line_error(hpo("validate", str(path), cwd=tmp_path), f"CONFIG: {path} is not UTF-8 text")


def test_a_huge_grid_is_refused_by_count_before_anything_is_written(tmp_path: Path) -> None:
    space = {
        "train.max_steps": {"type": "int", "low": 1, "high": 2_000_000},
        "train.batch_size": {"type": "int", "low": 1, "high": 1_000_000},
    }
    path = write(tmp_path / "g.yaml", synthetic("huge", sampler={"name": "grid"}, search_space=space))
    result = hpo("create", str(path), "--storage", f"sqlite:///{tmp_path}/g.db", cwd=tmp_path)
    one_line_error(result, "search_space.train.max_steps: the grid has 2,000,000,000,000 points")
    assert "limit of 100,000" in result.stderr and not (tmp_path / "g.db").exists()


def test_a_url_whose_driver_is_missing_names_the_extra(tmp_path: Path) -> None:
    pytest.importorskip("sqlalchemy")
    try:
        import MySQLdb  # noqa: F401 - the default mysql:// driver (mysqlclient); the project installs PyMySQL
    except ImportError:
        pass
    else:
        pytest.skip("mysqlclient is installed here")
    result = hpo("status", "--storage", "mysql://root@127.0.0.1:3306/test", cwd=tmp_path)
    one_line_error(result, "--storage: mysql:// needs the database driver MySQLdb, which is not installed")
    assert "mysql+pymysql://" in result.stderr and "distill-hpo[mysql]" in result.stderr


@pytest.mark.parametrize("name", ["x" * 600, "..", ".", "a/b", ".hidden", "tab\tname", "ünïcode"])
def test_a_bad_study_name_is_refused_before_the_database(tmp_path: Path, pg_url: str, name: str) -> None:
    path = write(tmp_path / "n.yaml", synthetic(name))
    one_line_error(hpo("create", str(path), "--storage", pg_url, cwd=tmp_path), "name: must be 1-128 letters")
    assert not (tmp_path / "hpo-artifacts").exists()


def test_export_list_and_status_on_an_empty_database_or_a_missing_sqlite_file(tmp_path: Path, pg_url: str) -> None:
    missing = f"sqlite:///{tmp_path}/typo.db"
    with fresh_database(pg_url) as empty:
        for url in (missing, empty):
            for args in (("export", "--study", "x", "--list"), ("status",)):
                one_line_error(hpo(*args, "--storage", url, cwd=tmp_path), f"--storage: {url} has no studies")
    assert not (tmp_path / "typo.db").exists()  # no empty file at a mistyped path


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"seed": -1}, "seed: must be in [0, 2**32), got -1"),
        ({"seed": 2**32}, "seed: must be in [0, 2**32)"),
        ({"train": {"lr": float("inf")}}, "train.lr: must be a finite number, got inf"),
        ({"timeout": float("nan")}, "timeout: must be a finite number, got nan"),
        ({"train": {"lr": 10**400}}, "train.lr: must be a finite number, got an integer of 401 digits"),
        ({"train": {"max_steps": float("inf")}}, "train.max_steps: must be a finite number, got inf"),
        ({"sampler": {"name": "tpe", "options": {"prior_weight": float("-inf")}}}, "sampler.options.prior_weight:"),
        ({"sampler": {"name": "tpe", "options": {"consider_endpoints": "no"}}}, "sampler.options.consider_endpoints:"),
        ({"sampler": {"name": "tpe", "options": {"n_startup_trials": 2.5}}}, "sampler.options.n_startup_trials:"),
        ({"pruner": {"name": "median", "options": {"n_warmup_steps": "5"}}}, "pruner.options.n_warmup_steps:"),
    ],
)
def test_bad_numbers_and_option_types_are_one_line_naming_the_key(tmp_path: Path, overrides: dict, error: str) -> None:
    path = write(tmp_path / "c.yaml", synthetic("numbers", **overrides))
    one_line_error(hpo("validate", str(path), cwd=tmp_path), error)


def test_a_yaml_alias_bomb_is_refused_after_loading(tmp_path: Path) -> None:
    levels = ["a: &a {x: 1, y: 2, z: 3, w: 4, v: 5, u: 6, t: 7, s: 8, r: 9}"]
    for i in range(1, 10):
        refs = ", ".join(f"k{j}: *{chr(96 + i)}" for j in range(9))
        levels.append(f"{chr(97 + i)}: &{chr(97 + i)} {{{refs}}}")
    body = yaml.safe_dump(synthetic("bomb", sampler={"name": "cmaes"}))
    text = "\n".join(["_bomb:", *(f"  {line}" for line in levels), body])
    text = text.replace("sampler:\n  name: cmaes", "sampler:\n  name: cmaes\n  options:\n    x0: *j")
    (tmp_path / "b.yaml").write_text(text)
    assert "x0: *j" in text  # 9^10 values behind a few lines
    result = hpo("validate", str(tmp_path / "b.yaml"), cwd=tmp_path, timeout=60)
    one_line_error(result, "CONFIG: holds more than 100,000 values")


# 4. Safe artifacts and outputs ------------------------------------------------------------------------------------


class _Planted:
    """Unpickling this creates a file: the artifact directory must never run it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def test_cached_logits_are_never_unpickled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # an environment that re-opens plain pickle loads
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    cache = LogitCache(ArtifactDir(tmp_path / "artifacts", "s"), teacher, Leases(f"sqlite:///{tmp_path}/leases.db"))
    data = Encoded(input_ids=[[101, 7, 102]], labels=[0], pad_token_id=0)
    marker = tmp_path / "pwned"
    # what someone with write access to the artifact directory could plant
    with cache.artifacts.staging(cache.entry("train", data)) as planted:
        torch.save(_Planted(marker), planted)
    with pytest.raises(Exception, match="Weights only load failed"):
        cache("train", data, torch.nn.Identity())
    assert not marker.exists()


def test_a_relative_artifacts_dir_is_stored_absolute(tmp_path: Path) -> None:
    (tmp_path / "here").mkdir()
    (tmp_path / "elsewhere").mkdir()
    url = f"sqlite:///{tmp_path}/s.db"
    config = write(tmp_path / "r.yaml", synthetic("rel", artifacts_dir="arts"))
    assert hpo("create", str(config), "--storage", url, cwd=tmp_path / "here").returncode == 0
    _, stored = load_study(create_storage(url, create_tables=False), "rel")
    assert stored.artifacts_dir == str(tmp_path / "here" / "arts")
    again = hpo("create", str(config), "--storage", url, cwd=tmp_path / "here")
    assert again.returncode == 0, again.stderr  # the same directory: the same config
    other = hpo("create", str(config), "--storage", url, cwd=tmp_path / "elsewhere")  # another teacher directory
    assert other.returncode == 2 and "Traceback" not in other.stderr
    last = other.stderr.strip().splitlines()[-1]
    assert last.startswith("hpo: error: name: study 'rel' exists with another config (artifacts_dir: ")


def test_train_refuses_a_non_empty_out_dir_without_overwrite(tmp_path: Path) -> None:
    from hpo.study import TrainJob, dump_job

    job = tmp_path / "job.yaml"
    job.write_text(dump_job(TrainJob(name="m")))
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = hpo("train", str(job), "--out", str(out), cwd=tmp_path)
    one_line_error(result, f"--out: {out} exists and is not an empty directory; pass --overwrite")
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


def test_export_refuses_to_replace_a_file_without_force_and_writes_whole(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/e.db"
    layers = {"student.num_layers": {"type": "int", "low": 1, "high": 2}}  # a finetune study searches no distill.*
    config = config_from_dict({**tiny_config("exp"), "objective": "finetune", "search_space": layers})
    study = open_study(config, url)
    for accuracy in (0.7, 0.8):
        study.add_trial(
            optuna.trial.create_trial(
                value=accuracy,
                params={"student.num_layers": 1},
                distributions={"student.num_layers": optuna.distributions.IntDistribution(1, 2)},
                user_attrs={**dict.fromkeys(METRICS, 1.0), "accuracy": accuracy, "steps": 4},
            )
        )
    out = tmp_path / "job.yaml"
    out.write_text("my notes\n")
    args = ("export", "--storage", url, "--study", "exp", "--objective", "accuracy", "--out", str(out))
    one_line_error(hpo(*args, cwd=tmp_path), f"--out: {out} exists; pass --force to replace it")
    assert out.read_text() == "my notes\n"
    forced = hpo(*args, "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    written = yaml.safe_load(out.read_text())
    assert written["source"]["trial"] == 1 and "distill" not in written  # a finetune job has no distill keys
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.db", "job.yaml"]  # no temporary file left


def _get(port: int, host_header: str, method: str = "GET", path: str = "/api/studies") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=b"{}" if method == "POST" else None, headers={"Host": host_header})
        return conn.getresponse().status
    finally:
        conn.close()


def _dashboard(cwd: Path, url: str, *flags: str) -> subprocess.Popen[str]:
    """``hpo dashboard`` on ``url`` at a free port, its banner on stdout."""
    return subprocess.Popen(
        [sys.executable, "-m", "hpo._cli", "dashboard", "--storage", url, "--port", "0", *flags],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_dashboard_refuses_foreign_host_headers(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/d.db"
    assert (
        hpo("run", str(write(tmp_path / "d.yaml", synthetic("dash"))), "--storage", url, cwd=tmp_path).returncode == 0
    )
    proc = _dashboard(tmp_path, url)
    assert proc.stdout is not None
    try:
        match = re.search(r":(\d+)/dashboard", proc.stdout.readline() + proc.stdout.readline())
        assert match
        port = int(match.group(1))
        for name in ("127.0.0.1", "localhost", "[::1]"):
            assert _get(port, f"{name}:{port}") == 200
        assert _get(port, f"evil.example:{port}") == 403  # a rebinding page's requests name its own host
        assert _get(port, "evil.example", "POST", "/api/studies") == 403  # the write API too
        assert _get(port, f"127.0.0.1.evil.example:{port}") == 403
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert len(optuna.get_all_study_summaries(url)) == 1  # nothing was created by the refused POST


def test_a_dashboard_on_0_0_0_0_answers_only_loopback_and_allowed_host_names(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/d.db"
    assert (
        hpo("run", str(write(tmp_path / "d.yaml", synthetic("open"))), "--storage", url, cwd=tmp_path).returncode == 0
    )
    bad = hpo("dashboard", "--storage", url, "--host", "0.0.0.0", "--allow-host", "http://x.example:80", cwd=tmp_path)
    one_line_error(bad, "--allow-host: expected a host name or address like dashboard.example.org")
    allow = ["--allow-host", "hpo-dashboard", "--allow-host", "Dashboard.Team.example"]
    proc = _dashboard(tmp_path, url, "--host", "0.0.0.0", *allow)
    assert proc.stdout is not None
    try:
        banner = "".join(proc.stdout.readline() for _ in range(3))
        match = re.search(r":(\d+)/dashboard", banner)
        assert match, banner
        assert "hpo-dashboard, Dashboard.Team.example only" in banner
        port = int(match.group(1))
        for name in ("127.0.0.1", "localhost", "hpo-dashboard", "dashboard.team.example"):
            assert _get(port, f"{name}:{port}") == 200, name
        assert _get(port, f"evil.example:{port}") == 403  # open to the network, still not to rebinding pages
        assert _get(port, "evil.example", "POST", "/api/studies") == 403
        assert _get(port, f"0.0.0.0:{port}") == 403  # the bind address is not a name anyone is reached by
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert len(optuna.get_all_study_summaries(url)) == 1  # nothing was created by the refused POST


# #16 point 5: only user errors are one bare line ------------------------------------------------------------------


def test_an_unexpected_exception_names_its_type_and_points_to_verbose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "v.yaml", synthetic("bug"))

    def bug(config: object) -> None:
        raise KeyError("teacher")  # a bug inside the code, not a user error

    monkeypatch.setattr("hpo.study.validate_search", bug)
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert err == "hpo: error: unexpected KeyError: 'teacher' (run with -v for the traceback)\n"
    assert main(["-v", "validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and 'raise KeyError("teacher")' in err
    assert err.strip().splitlines()[-1] == "hpo: error: unexpected KeyError: 'teacher'"
    # The same through a real process.
    code = (
        "import sys, hpo.study as s\n"
        "def bug(config): raise KeyError('teacher')\n"
        "s.validate_search = bug\n"
        "from hpo._cli import main\n"
        f"sys.exit(main(['validate', {str(path)!r}]))\n"
    )
    real = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert real.returncode == 1
    assert real.stderr == "hpo: error: unexpected KeyError: 'teacher' (run with -v for the traceback)\n"


def test_a_failed_trial_logs_its_traceback_at_warning_and_keeps_the_type(tmp_path: Path) -> None:
    config = write(tmp_path / "c.yaml", synthetic("crash", n_trials=2, synthetic={"steps": 2, "crash_trials": [1]}))
    url = f"sqlite:///{tmp_path}/c.db"
    result = hpo("run", str(config), "--storage", url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    warning = result.stderr[result.stderr.index("WARNING trial 1 failed; the worker goes on") :]
    assert warning.splitlines()[1] == "Traceback (most recent call last):"
    assert "RuntimeError: synthetic crash in trial 1" in warning
    failed = optuna.load_study(study_name="crash", storage=url).trials[1]
    assert failed.user_attrs["fail_reason"] == "RuntimeError: synthetic crash in trial 1"
