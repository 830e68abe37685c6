"""The artifact store of a study: files computed once per study and shared by every trial, worker and node.

The store is a local or shared-filesystem folder, or an object-store URL (``s3://bucket/prefix``, ``gs://...``, any
fsspec protocol; fsspec is imported only for URLs). Callers always get local paths (a teacher folder is loaded with
``from_pretrained``, logits are memory-mapped): an artifact of a remote store is downloaded once per publication
into a per-node cache folder (:func:`default_cache`), by one process of the node at a time, and read from there.

Writers publish atomically: write to a temporary local path, move it to the final path (a folder: rename; a remote
store: upload), then write a completion marker, last. A reader looks only for the marker, so it never sees a
half-written artifact, even where a directory rename is a copy (FUSE mounts of object stores) or an upload is many
requests. Which process writes is decided by a lease in the study's database (:class:`storage.Leases`), not a file
lock: ``flock`` fails on Lustre without ``-o flock`` and excludes nobody on ``localflock``, ``nolock`` or FUSE mounts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from storage._lease import Leases

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")

CACHE_ENV = "HPO_ARTIFACTS_CACHE"
"""Environment variable naming this node's cache folder of remote artifacts (default: :func:`default_cache`)."""


def store_protocol(root: str) -> str | None:
    """The fsspec protocol of an object-store URL (``s3`` of ``s3://bucket/x``); None for a path (or ``file://``)."""
    match = _URL.match(root)
    protocol = match.group(1).lower() if match else None
    return None if protocol in (None, "file", "local") else protocol


def store_root(root: str | os.PathLike[str]) -> str:
    """``root`` as every node names it: a URL without its trailing slash, a path absolute (from this process's
    working directory; ``file://`` dropped)."""
    text = os.fspath(root)
    if store_protocol(text):
        return text.rstrip("/")
    text = re.sub(r"^(file|local)://", "", text)
    return os.path.abspath(os.path.expanduser(text))


def default_cache() -> Path:
    """This node's cache of remote artifacts: ``HPO_ARTIFACTS_CACHE``, else ``$XDG_CACHE_HOME/distill-hpo/artifacts``,
    else ``~/.cache/distill-hpo/artifacts``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return base / "distill-hpo" / "artifacts"


class ArtifactDir:
    """Files of one study under ``root/<study name>``; ``root`` a folder or an object-store URL.

    ``options`` are passed to fsspec for a URL (e.g. ``endpoint_url``; ignored for a folder); credentials come from
    where the filesystem's library looks (``AWS_*`` variables, ``~/.aws``, instance roles). ``cache`` is this node's
    cache of remote artifacts (default :func:`default_cache`).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        study_name: str,
        *,
        options: dict[str, Any] | None = None,
        cache: str | os.PathLike[str] | None = None,
    ) -> None:
        self.root = store_root(root)
        name = _SAFE_NAME.sub("_", study_name)
        protocol = store_protocol(self.root)
        if protocol is None:  # ``options`` are for a URL: the same bucket mounted as a folder needs none
            self.url: str | None = None
            self.path = Path(self.root).resolve() / name
            return
        import fsspec

        self.fs = fsspec.filesystem(protocol, **(options or {}))
        self.url = f"{self.root}/{name}"
        digest = hashlib.sha256(self.root.encode()).hexdigest()[:12]
        self.path = Path(cache or default_cache()).expanduser().resolve() / digest / name
        """The local copy: downloaded artifacts, read from here."""

    @property
    def location(self) -> str:
        """Where the study's artifacts live, as every node names it (the URL of a remote store)."""
        return self.url or str(self.path)

    def __repr__(self) -> str:
        return f"ArtifactDir({self.location!r})"

    def entry(self, name: str) -> Path:
        """The local path of the artifact ``name`` (it may not exist yet; for a remote store, see :meth:`fetch`)."""
        return self.path / _SAFE_NAME.sub("_", name)

    def _remote(self, name: str) -> str:
        return f"{self.url}/{self.entry(name).name}"

    def _marker(self, name: str) -> Path:
        final = self.entry(name)
        return final.with_name(f".{final.name}.complete")

    def _remote_marker(self, name: str) -> str:
        return f"{self.url}/{self._marker(name).name}"

    def exists(self, name: str) -> bool:
        """Whether ``name`` was published completely (its completion marker, written last, is there)."""
        if self.url is None:
            return self._marker(name).exists()
        self.fs.invalidate_cache()  # another node may have published it since this process last listed
        return self.fs.exists(self._remote_marker(name))

    @contextlib.contextmanager
    def staging(self, name: str) -> Iterator[Path]:
        """A fresh local temporary path to write ``name`` into; published (moved or uploaded to the final path,
        then marked complete) only if the block succeeds."""
        final = self.entry(name)
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        _remove(tmp)
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            yield tmp
            if self.url is None:
                _remove(self._marker(name))
                _remove(final)
                os.replace(tmp, final)
                self._marker(name).touch()
            else:
                published = self._upload(name, tmp)
                with self._cache_lock(name):
                    self._place(name, tmp, published)
        finally:
            _remove(tmp)

    def _upload(self, name: str, tmp: Path) -> str:
        """Upload ``tmp`` as ``name``: the marker and any half upload of a killed writer removed first, the marker
        written last, holding a random id of this publication (returned)."""
        remote, marker = self._remote(name), self._remote_marker(name)
        self.fs.invalidate_cache()
        for old in (marker, remote):
            if self.fs.exists(old):
                self.fs.rm(old, recursive=True)
        if tmp.is_dir():
            self.fs.put(str(tmp), remote, recursive=True)
        else:
            self.fs.put_file(str(tmp), remote)
        published = uuid.uuid4().hex
        self.fs.pipe_file(marker, published.encode())
        return published

    @contextlib.contextmanager
    def _cache_lock(self, name: str) -> Iterator[None]:
        """This node's processes update the cached copy of ``name`` one at a time: a lock file in the cache, which
        is node-local (where its filesystem has no locks, they go unlocked; each copy is still placed by a rename)."""
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / f".{self.entry(name).name}.lock", "a") as handle:
            with contextlib.suppress(OSError):  # ENOLCK, ENOSYS
                fcntl.flock(handle, fcntl.LOCK_EX)
            yield  # closing the file releases the lock

    def _place(self, name: str, tmp: Path, published: str) -> None:
        """Make the complete local copy ``tmp`` of publication ``published`` the cached ``name``. An older copy is
        unlinked, not overwritten: a process that opened it (memory-mapped logits) keeps reading it whole."""
        final = self.entry(name)
        self._marker(name).unlink(missing_ok=True)
        if final.exists() or final.is_symlink():
            old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(final, old)
            _remove(old)
        os.replace(tmp, final)
        self._marker(name).write_text(published)

    def fetch(self, name: str) -> Path:
        """The local path of the published artifact ``name``. From a remote store it is downloaded into this node's
        cache, once per publication: the cached copy keeps the id its publication's marker holds, and is
        downloaded again only if the store holds another. Raises FileNotFoundError if ``name`` is unpublished."""
        final = self.entry(name)
        if self.url is None:
            if not self._marker(name).exists():
                raise FileNotFoundError(f"{final} is not published")
            return final
        try:
            published = self.fs.cat_file(self._remote_marker(name)).decode()
        except FileNotFoundError:
            raise FileNotFoundError(f"{self._remote(name)} is not published") from None
        with self._cache_lock(name):
            if self._cached(name) == published:
                return final
            remote = self._remote(name)
            tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
            _remove(tmp)
            try:
                if self.fs.isdir(remote):
                    self.fs.get(remote, str(tmp), recursive=True)
                else:
                    self.fs.get_file(remote, str(tmp))
                self._place(name, tmp, published)
            finally:
                _remove(tmp)
        return final

    def _cached(self, name: str) -> str | None:
        """The publication id of this node's cached copy of ``name``; None without one."""
        try:
            return self._marker(name).read_text()
        except FileNotFoundError:
            return None

    def produce(self, name: str, write: Callable[[Path], None], leases: Leases) -> bool:
        """Publish ``name`` once across every process and node of the study: ``write(tmp)`` runs in the process
        that holds the lease on ``name`` (renewed while it writes), the others wait until it is published, then
        read it (:meth:`fetch`). A holder that dies mid-write publishes nothing; once its lease expires a waiting
        process takes it over and writes it. Returns whether this process wrote it."""
        lease = f"artifact:{self.path.name}/{self.entry(name).name}"
        if len(lease) > 191:  # the key's limit on MySQL
            lease = lease[:170] + hashlib.sha256(lease.encode()).hexdigest()[:21]
        while not self.exists(name):
            if leases.take(lease):
                with leases.held(lease):
                    if not self.exists(name):  # else published between our look and our take
                        with self.staging(name) as tmp:
                            write(tmp)
                        return True
                break
            time.sleep(min(1.0, leases.renew_every))
        self.fetch(name)
        return False

    def write_json(self, name: str, data: Any) -> None:
        """Publish ``data`` as JSON atomically."""
        with self.staging(name) as tmp:
            tmp.write_text(json.dumps(data, indent=2, sort_keys=True))

    def read_json(self, name: str) -> Any:
        """Read a JSON artifact published by :meth:`write_json`, from the store itself (never a cached copy)."""
        if self.url is None:
            return json.loads(self.entry(name).read_text())
        return json.loads(self.fs.cat_file(self._remote(name)))

    def remove(self) -> bool:
        """Delete the study's artifacts (teacher, cached logits): in the store and in this node's cache; False if
        there were none."""
        existed = self.path.exists()
        if self.url is not None:
            self.fs.invalidate_cache()
            if self.fs.exists(self.url):
                self.fs.rm(self.url, recursive=True)
                existed = True
        _remove(self.path)
        return existed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
