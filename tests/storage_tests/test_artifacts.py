import multiprocessing
import time
from pathlib import Path

import pytest

from storage import ArtifactDir


def test_staging_publishes_only_on_success(tmp_path: Path) -> None:
    artifacts = ArtifactDir(tmp_path, "my study/1")
    assert artifacts.path.name == "my_study_1"
    with pytest.raises(RuntimeError), artifacts.staging("teacher") as tmp:
        tmp.mkdir()
        (tmp / "weights").write_text("half")
        raise RuntimeError("killed mid-write")
    assert not artifacts.exists("teacher")
    assert list(artifacts.path.iterdir()) == []
    with artifacts.staging("teacher") as tmp:
        tmp.mkdir()
        (tmp / "weights").write_text("whole")
    assert (artifacts.entry("teacher") / "weights").read_text() == "whole"
    artifacts.write_json("metrics", {"accuracy": 0.8})
    assert artifacts.read_json("metrics") == {"accuracy": 0.8}


def _produce(root: str, log: str) -> None:
    artifacts = ArtifactDir(root, "s")
    with artifacts.lock("teacher"):
        if not artifacts.exists("teacher"):
            with open(log, "a") as handle:
                handle.write("computed\n")
            time.sleep(0.5)
            artifacts.write_json("teacher", {"ok": True})


def test_lock_makes_concurrent_processes_compute_once(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_produce, args=(str(tmp_path), str(log))) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert log.read_text() == "computed\n"
    assert ArtifactDir(tmp_path, "s").read_json("teacher") == {"ok": True}
