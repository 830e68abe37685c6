"""The artifact store on a folder and on a real S3-compatible server (moto, on 127.0.0.1): atomic publish with the
completion marker last, downloads into a per-node cache, removal from the store and the cache."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import pytest

from storage import CACHE_ENV, ArtifactDir, Leases, default_cache, store_root


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


@pytest.fixture(params=["folder", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict]:
    """(root, fsspec options) of a shared folder or of a bucket on the moto S3 server."""
    if request.param == "folder":
        return str(tmp_path / "shared"), {}
    bucket = request.getfixturevalue("s3_bucket")
    return f"{bucket}/runs/", {"endpoint_url": request.getfixturevalue("s3_endpoint")}


def _teacher(tmp: Path) -> None:
    tmp.mkdir()
    (tmp / "config.json").write_text('{"layers": 2}')
    (tmp / "sub").mkdir()
    (tmp / "sub" / "weights.bin").write_bytes(b"\x00\x01" * 1000)


def test_publish_read_remove_round_trip(store: tuple[str, dict], tmp_path: Path) -> None:
    root, options = store
    leases = Leases(f"sqlite:///{tmp_path}/db.sqlite", ttl=5, renew_every=1)
    writer = ArtifactDir(root, "study", options=options, cache=tmp_path / "node-a")
    reader = ArtifactDir(root, "study", options=options, cache=tmp_path / "node-b")
    assert writer.location == reader.location == f"{store_root(root)}/study"
    assert writer.produce("teacher", _teacher, leases) is True
    assert writer.produce("logits.pt", lambda tmp: tmp.write_bytes(b"logits"), leases) is True
    calls = []
    assert reader.produce("teacher", calls.append, leases) is False and calls == []  # published: read, not written
    teacher = reader.fetch("teacher")
    assert (teacher / "sub" / "weights.bin").read_bytes() == b"\x00\x01" * 1000
    assert reader.fetch("logits.pt").read_bytes() == b"logits"
    if writer.url is not None:  # each node reads its own local copy, in its own cache
        assert teacher.is_relative_to(tmp_path / "node-b") and writer.entry("teacher").is_relative_to(
            tmp_path / "node-a"
        )
        assert (writer.entry("teacher") / "config.json").read_text() == '{"layers": 2}'
    reader.write_json("store", {"id": "x"})
    assert writer.read_json("store") == {"id": "x"}
    assert writer.remove() is True
    assert not reader.exists("teacher") and not writer.path.exists()
    with pytest.raises(FileNotFoundError):
        ArtifactDir(root, "study", options=options, cache=tmp_path / "node-c").fetch("teacher")
    assert writer.remove() is False


def test_s3_marker_is_written_last(s3_bucket: str, s3_endpoint: str, tmp_path: Path) -> None:
    """An upload cut off after its data but before the marker (the connection drops) publishes nothing: readers
    see no artifact, and the next writer replaces the half upload."""
    options = {"endpoint_url": s3_endpoint}
    writer = ArtifactDir(s3_bucket, "study", options=options, cache=tmp_path / "a")
    put = writer.fs.put

    def put_then_drop(*args: object, **kwargs: object) -> None:
        put(*args, **kwargs)
        raise ConnectionError("connection dropped")

    writer.fs.put = put_then_drop  # the transport fails; the store's own publishing code runs as it is
    with pytest.raises(ConnectionError):
        with writer.staging("teacher") as tmp:
            _teacher(tmp)
    writer.fs.put = put
    reader = ArtifactDir(s3_bucket, "study", options=options, cache=tmp_path / "b")
    assert writer.fs.exists(f"{s3_bucket}/study/teacher/config.json")  # the half upload is there...
    assert not reader.exists("teacher")  # ...and no reader takes it for an artifact
    with pytest.raises(FileNotFoundError):
        reader.fetch("teacher")
    assert not writer.entry("teacher").exists()  # nor does the writer's own cache keep it
    with writer.staging("teacher") as tmp:
        tmp.mkdir()
        (tmp / "config.json").write_text("whole")
    assert writer.fs.find(f"{s3_bucket}/study/teacher") == [
        f"{s3_bucket.removeprefix('s3://')}/study/teacher/config.json"
    ]
    assert (reader.fetch("teacher") / "config.json").read_text() == "whole"


def test_s3_reads_come_from_the_node_cache(s3_bucket: str, s3_endpoint: str, tmp_path: Path) -> None:
    """A published artifact is downloaded once per node: later reads use the local copy, not the store."""
    options = {"endpoint_url": s3_endpoint}
    ArtifactDir(s3_bucket, "study", options=options, cache=tmp_path / "a").write_json("metrics", {"accuracy": 0.5})
    node = ArtifactDir(s3_bucket, "study", options=options, cache=tmp_path / "b")
    path = node.fetch("metrics")
    node.fs.rm(f"{s3_bucket}/study/metrics")  # gone from the store: only the cached copy can answer now
    assert node.fetch("metrics") == path and path.read_text() == '{\n  "accuracy": 0.5\n}'
    # processes of one node fetching at once share one copy, placed by one of them and whole for all
    with ArtifactDir(s3_bucket, "study", options=options, cache=tmp_path / "a").staging("teacher") as tmp:
        _teacher(tmp)
    nodes = [ArtifactDir(s3_bucket, "study", options=options, cache=tmp_path / "c") for _ in range(4)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(lambda artifacts: artifacts.fetch("teacher"), nodes))
    assert len(set(paths)) == 1 and (paths[0] / "sub" / "weights.bin").read_bytes() == b"\x00\x01" * 1000


def test_s3_a_new_publication_replaces_the_cached_copy(s3_bucket: str, s3_endpoint: str, tmp_path: Path) -> None:
    """The cached copy is the publication the store holds now: published again (a study deleted and created anew),
    ``name`` is downloaded again, and a process still reading the old copy keeps reading it whole."""
    options = {"endpoint_url": s3_endpoint}
    writer = ArtifactDir(s3_bucket, "study", options=options, cache=tmp_path / "a")
    node = ArtifactDir(s3_bucket, "study", options=options, cache=tmp_path / "b")
    writer.write_json("logits", [1])
    with node.fetch("logits").open() as held:  # e.g. memory-mapped by a running trial
        writer.write_json("logits", [2])
        assert node.fetch("logits").read_text() == "[\n  2\n]" and held.read() == "[\n  1\n]"
    assert sorted(p.name for p in node.path.iterdir() if not p.name.endswith(".lock")) == [".logits.complete", "logits"]


def test_default_cache_and_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache() == tmp_path / "xdg" / "distill-hpo" / "artifacts"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert default_cache() == tmp_path / "mine"
    monkeypatch.chdir(tmp_path)
    assert store_root("store") == store_root(f"file://{tmp_path}/store") == str(tmp_path / "store")
    assert store_root("s3://bucket/prefix/") == "s3://bucket/prefix"
    # a bucket mounted as a folder (another node's --artifacts PATH) needs none of the URL's options
    assert ArtifactDir("store", "study", options={"endpoint_url": "http://x"}).path == tmp_path / "store" / "study"
