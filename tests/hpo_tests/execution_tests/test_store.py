"""The study's artifact store across nodes: ``hpo create`` marks the store, and a worker that looks elsewhere
(another folder, a store it cannot reach) refuses the study in one line, or a pool worker skips it, rather than
train a teacher of its own. Real processes on real SQLite."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from hpo.execution._run import store_config
from hpo.study import STORE_ATTR, STORE_MARKER, load_study, study_store
from objectives import ConfigError
from storage import create_storage
from tests.conftest import tiny_config


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
