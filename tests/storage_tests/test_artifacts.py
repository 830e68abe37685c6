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
    (artifacts.path / "teacher").mkdir()  # a directory without its completion marker: a copy cut off mid-way
    assert not artifacts.exists("teacher")
    with artifacts.staging("teacher") as tmp:
        tmp.mkdir()
        (tmp / "weights").write_text("whole")
    assert (artifacts.entry("teacher") / "weights").read_text() == "whole"
    artifacts.write_json("metrics", {"accuracy": 0.8})
    assert artifacts.read_json("metrics") == {"accuracy": 0.8}
