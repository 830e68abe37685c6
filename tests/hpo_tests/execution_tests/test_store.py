"""The study's artifact store across nodes: ``hpo create`` marks the store, and a worker that looks elsewhere
(another folder, a store it cannot reach) refuses the study in one line, or a pool worker skips it, rather than
train a teacher of its own. Real processes on real SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import yaml

from hpo import config_from_dict
from hpo._cli import main
from hpo._training import store_teacher
from hpo.execution._run import store_config
from hpo.study import STORE_ATTR, STORE_MARKER, load_job, load_study, open_study, study_store
from objectives import ConfigError
from storage import create_storage
from tests.conftest import S3_ENV, sentiment_csv, tiny_bert, tiny_config


def hpo(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("HPO_STORAGE", "HPO_ARTIFACTS_DIR")}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "hpo._cli", *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=300
    )


def test_a_worker_at_another_store_refuses_the_study(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(tiny_config("marked", artifacts_dir="store")))
    created = hpo("create", str(config), "--storage", url, cwd=tmp_path)
    assert created.returncode == 0, created.stderr[-2000:]
    study, stored = load_study(create_storage(url), "marked")
    assert stored.artifacts_dir == str(tmp_path / "store")  # absolute, from the creator's directory
    mark = study.user_attrs[STORE_ATTR]
    assert mark["root"] == stored.artifacts_dir
    assert (tmp_path / "store" / "marked" / STORE_MARKER).is_file()

    elsewhere = tmp_path / "elsewhere"
    for flags, env in ((["--artifacts", str(elsewhere)], None), ([], {"HPO_ARTIFACTS_DIR": str(elsewhere)})):
        worker = hpo("worker", "--storage", url, "--study", "marked", *flags, cwd=tmp_path, env=env)
        assert worker.returncode == 2, worker.stderr[-2000:]
        lines = worker.stderr.strip().splitlines()
        assert len(lines) == 1, worker.stderr[-2000:]
        assert lines[0].startswith(f"hpo: error: artifacts_dir: {elsewhere}/marked is not the artifact store")
        assert "--artifacts PATH or HPO_ARTIFACTS_DIR" in lines[0] and str(tmp_path / "store") in lines[0]
    assert not any(elsewhere.rglob("teacher-*"))  # no private teacher
    pool = hpo("worker", "--storage", url, "--until-idle", "--poll", "0.2", "--artifacts", str(elsewhere), cwd=tmp_path)
    assert pool.returncode == 0, pool.stderr[-2000:]
    assert "study 'marked': it cannot run in this worker: artifacts_dir:" in pool.stderr
    assert "this worker skips it" in pool.stderr and "no study has budget left" in pool.stderr
    assert not optuna.load_study(study_name="marked", storage=url).trials

    # The same store under another mount path is the study's store.
    shutil.copytree(tmp_path / "store", tmp_path / "mount")
    assert (
        study_store(store_config(stored, str(tmp_path / "mount")), study.user_attrs).path == tmp_path / "mount/marked"
    )
    with pytest.raises(ConfigError, match="is not the artifact store") as refused:
        study_store(store_config(stored, str(tmp_path / "store-of-another")), study.user_attrs)
    assert refused.value.key == "artifacts_dir"


def _node(tmp_path: Path, name: str) -> tuple[Path, dict[str, str]]:
    """A "node": a working directory, HOME and artifact cache of its own; it shares only the database and the store."""
    home = tmp_path / name
    (home / "work").mkdir(parents=True, exist_ok=True)
    return home / "work", {"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")}


@pytest.mark.slow
@pytest.mark.parametrize("store", ["shared-folder", "s3"])
def test_nodes_share_one_teacher_and_train_finds_it_in_the_store(
    store: str, tmp_path: Path, pg_url: str, request
) -> None:
    """Two worker nodes (separate processes, working directories, HOME and caches; the same PostgreSQL database and
    artifact store) run one trial each: the teacher is trained once, by one of them, and both distil from it. A
    third node exports the best trial and trains it from the exported job (``hpo train`` as a process of its own on
    S3; on the folder, mounted under another path, its teacher lookup in this process): it finds the teacher in the
    store and fine-tunes none; a store out of reach is one error naming artifacts_dir and --artifacts."""
    url, study = pg_url, f"nodes-{uuid.uuid4().hex[:8]}"  # the real PostgreSQL every node reaches
    data = sentiment_csv(tmp_path / "reviews.csv")
    if store == "s3":
        root, options = (
            f"{request.getfixturevalue('s3_bucket')}/runs",
            {"endpoint_url": request.getfixturevalue("s3_endpoint")},
        )
    else:
        root, options = str(tmp_path / "shared"), {}
    config = tiny_config(
        study,
        n_trials=2,
        artifacts_dir=root,
        artifacts_options=options,
        data={"name": data, "max_train_rows": 48, "max_val_rows": 24, "max_length": 16},
        teacher={"model": tiny_bert(), "train": {"max_steps": 2, "batch_size": 16, "eval_every": 2}},
        train={"max_steps": 2, "batch_size": 16, "eval_every": 2},
    )
    first, first_env = _node(tmp_path, "node-a")
    (first / "study.yaml").write_text(yaml.safe_dump(config))
    created = hpo("create", "study.yaml", "--storage", url, cwd=first, env=first_env)
    assert created.returncode == 0, created.stderr[-2000:]

    nodes = [_node(tmp_path, name) for name in ("node-a", "node-b")]
    flags = [[], []]
    if store == "shared-folder":  # node b has the store mounted under another path
        (tmp_path / "node-b" / "mnt").symlink_to(tmp_path / "shared")
        flags[1] = ["--artifacts", str(tmp_path / "node-b" / "mnt")]
    environ = {k: v for k, v in os.environ.items() if k not in ("HPO_STORAGE", "HPO_ARTIFACTS_DIR")}
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "hpo._cli", "worker", "--storage", url, "--study", study, "--n-trials", "1", *f],
            cwd=cwd,
            env={**environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for (cwd, env), f in zip(nodes, flags, strict=True)
    ]
    logs = [w.communicate(timeout=300)[1] for w in workers]
    for worker, log in zip(workers, logs, strict=True):
        assert worker.returncode == 0, log[-3000:]
        assert "ran 1 trials" in log and "teacher: validation" in log  # each node ran a trial with the teacher
    assert sum(log.count("fine-tuning the teacher") for log in logs) == 1  # trained once, by one node
    trials = optuna.load_study(study_name=study, storage=url).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert sorted(t.user_attrs["pid"] for t in trials) == sorted(w.pid for w in workers)  # one trial per node
    if store == "s3":  # each node read the teacher from a copy in its own cache
        for name in ("node-a", "node-b"):
            assert list((tmp_path / name / ".cache" / "distill-hpo" / "artifacts").glob(f"*/{study}/teacher-*"))
        assert not (first / "hpo-artifacts").exists()

    third, third_env = _node(tmp_path, "node-c")
    exported = main(["export", "--storage", url, "--study", study, "--out", str(third / "job.yaml"),
                     "--objective", "accuracy", "--steps-factor", "1"])  # fmt: skip
    assert exported == 0
    job = yaml.safe_load((third / "job.yaml").read_text())
    assert job["teacher_path"] is None and job["artifacts_dir"] == root
    assert job["teacher_entry"].startswith("teacher-") and job["artifacts_options"] == options
    if store == "shared-folder":  # hpo train on a shared folder: test_export's round trip; here its teacher lookup
        loaded = load_job(third / "job.yaml")
        mounted = store_teacher(loaded, str(tmp_path / "node-b" / "mnt"))  # the store under this node's path
        assert mounted == tmp_path / "shared" / study / job["teacher_entry"] and mounted.is_dir()  # through it
        with pytest.raises(ConfigError, match="--artifacts PATH") as lost:
            store_teacher(loaded, str(tmp_path / "nowhere"))
        assert lost.value.key == "artifacts_dir" and "is not in" in str(lost.value)
        optuna.delete_study(study_name=study, storage=url)
        return
    trained = hpo("train", "job.yaml", "--out", "model", cwd=third, env=third_env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert f"teacher {job['teacher_entry']} from the study's store" in trained.stderr
    assert "fine-tuning the teacher" not in trained.stderr and not (third / "model" / "teacher").exists()
    assert json.loads((third / "model" / "metrics.json").read_text())["test"]["teacher"]["accuracy"] >= 0
    assert list((tmp_path / "node-c" / ".cache" / "distill-hpo" / "artifacts").glob(f"*/{study}/teacher-*"))
    optuna.delete_study(study_name=study, storage=url)


def test_a_store_out_of_reach_is_one_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """An object store that does not answer (nothing listens at its endpoint) is refused in one error naming the
    store, artifacts_dir and --artifacts, before any data or model loads."""
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    closed = {"endpoint_url": "http://127.0.0.1:9", "config_kwargs": {"retries": {"max_attempts": 1}}}
    config = config_from_dict(tiny_config("far", artifacts_dir="s3://bucket/hpo", artifacts_options=closed))
    with pytest.raises(ConfigError) as refused:
        study_store(config, {STORE_ATTR: {"root": "s3://bucket/hpo", "id": "x"}})
    assert refused.value.key == "artifacts_dir" and "\n" not in str(refused.value)
    assert str(refused.value).startswith(
        "artifacts_dir: cannot reach s3://bucket/hpo/far, the artifact store of study 'far'"
    )
    assert "--artifacts PATH or HPO_ARTIFACTS_DIR" in str(refused.value)


def test_local_data_and_model_paths_are_stored_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Like artifacts_dir, a local data file and model folder named relative to the creator's directory are stored
    absolute, so a worker started elsewhere reads the same ones; built-in names stay names."""
    monkeypatch.chdir(tmp_path)
    sentiment_csv(tmp_path / "reviews.csv")
    (tmp_path / "my-teacher").mkdir()
    raw = {
        "name": "paths",
        "objective": "synthetic",
        "sampler": {"name": "random"},
        "data": {"name": "reviews.csv"},
        "teacher": {"model": "my-teacher"},
        "search_space": {"train.lr": {"type": "float", "low": 1e-5, "high": 1e-3}},
    }
    stored = open_study(config_from_dict(raw), f"sqlite:///{tmp_path}/s.db").user_attrs["config"]
    assert stored["data"]["name"] == str(tmp_path / "reviews.csv")
    assert stored["teacher"]["model"] == str(tmp_path / "my-teacher")
    assert stored["artifacts_dir"] == str(tmp_path / "hpo-artifacts")
    builtin = open_study(
        config_from_dict({**raw, "name": "named", "data": {}, "teacher": {}}), f"sqlite:///{tmp_path}/s.db"
    )
    assert (builtin.user_attrs["config"]["data"]["name"], builtin.user_attrs["config"]["teacher"]["model"]) == (
        "rt-snippets",
        "minilm-l6",
    )
    assert STORE_ATTR not in builtin.user_attrs and not (tmp_path / "hpo-artifacts").exists()  # nothing to store


@pytest.mark.slow
def test_a_node_killed_while_training_the_teacher_is_taken_over_by_the_other(tmp_path: Path, pg_url: str) -> None:
    """Node a takes the teacher's lease and starts fine-tuning it; kill -9 of its process group mid-training leaves
    half a teacher unpublished; node b, waiting on the lease, takes it over once it expires (the study's
    worker.grace_period), trains the teacher, publishes it and runs the trial with it."""
    url, study_name = pg_url, f"takeover-{uuid.uuid4().hex[:8]}"  # the real PostgreSQL every node reaches
    config = tiny_config(
        study_name,
        n_trials=1,
        artifacts_dir=str(tmp_path / "shared"),
        teacher={"model": tiny_bert(), "train": {"max_steps": 100, "batch_size": 16, "eval_every": 100}},
        train={"max_steps": 2, "batch_size": 16, "eval_every": 2},
        worker={"heartbeat_interval": 1, "grace_period": 4},
    )
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(config))
    created = hpo("create", "study.yaml", "--storage", url, cwd=tmp_path)
    assert created.returncode == 0, created.stderr[-2000:]
    environ = {k: v for k, v in os.environ.items() if k not in ("HPO_STORAGE", "HPO_ARTIFACTS_DIR")}

    def start(name: str) -> tuple[subprocess.Popen, Path]:
        cwd, env = _node(tmp_path, name)
        log = cwd / "worker.log"
        command = [sys.executable, "-m", "hpo._cli", "worker", "--storage", url, "--study", study_name]
        with log.open("w") as handle:
            proc = subprocess.Popen(
                command, cwd=cwd, env={**environ, **env}, stdout=subprocess.DEVNULL, stderr=handle,
                start_new_session=True,
            )  # fmt: skip
        return proc, log

    a, a_log = start("node-a")
    deadline = time.monotonic() + 240
    while "fine-tuning the teacher" not in a_log.read_text():
        assert a.poll() is None and time.monotonic() < deadline, a_log.read_text()[-2000:]
        time.sleep(0.2)
    b, b_log = start("node-b")  # waits on a's lease
    time.sleep(2)
    os.killpg(a.pid, signal.SIGKILL)
    a.wait()
    assert "teacher: validation" not in a_log.read_text()  # killed mid-training: a published no teacher
    assert b.wait(timeout=600) == 0, b_log.read_text()[-3000:]
    study = optuna.load_study(study_name=study_name, storage=url)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] and study.trials[0].user_attrs["pid"] == b.pid
    assert "fine-tuning the teacher" in b_log.read_text()  # b trained it after a died
    store = tmp_path / "shared" / study_name
    published = [p for p in store.glob("teacher-*") if p.is_dir()]
    assert len(published) == 1 and (published[0] / "config.json").is_file()
    assert study.user_attrs["teacher"]["path"] == str(published[0])
    optuna.delete_study(study_name=study_name, storage=url)
