"""The artifact directory of a study: files computed once per study and shared by every trial and worker.

Writers publish atomically (write to a temporary sibling, rename it, then write a completion marker), so a reader
never sees a half-written artifact, even where a directory rename is a copy (FUSE mounts of object stores). Which
process writes is decided by a lease in the study's database (:class:`storage.Leases`), not a file lock: ``flock``
fails on Lustre without ``-o flock`` and excludes nobody on ``localflock``, ``nolock`` or FUSE mounts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from storage._lease import Leases

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class ArtifactDir:
    """Files of one study under ``root/<study name>``."""

    def __init__(self, root: str | os.PathLike[str], study_name: str) -> None:
        self.path = Path(root).expanduser().resolve() / _SAFE_NAME.sub("_", study_name)

    def __repr__(self) -> str:
        return f"ArtifactDir({str(self.path)!r})"

    def entry(self, name: str) -> Path:
        """The final path of the artifact ``name`` (it may not exist yet)."""
        return self.path / _SAFE_NAME.sub("_", name)

    def _marker(self, name: str) -> Path:
        final = self.entry(name)
        return final.with_name(f".{final.name}.complete")

    def exists(self, name: str) -> bool:
        """Whether ``name`` was published completely (its completion marker, written last, is there)."""
        return self._marker(name).exists()

    @contextlib.contextmanager
    def staging(self, name: str) -> Iterator[Path]:
        """A fresh temporary path to write ``name`` into; renamed to the final path, then marked complete, only if
        the block succeeds."""
        final = self.entry(name)
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        _remove(tmp)
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            yield tmp
            _remove(self._marker(name))
            _remove(final)
            os.replace(tmp, final)
            self._marker(name).touch()
        finally:
            _remove(tmp)

    def produce(self, name: str, write: Callable[[Path], None], leases: Leases) -> bool:
        """Publish ``name`` once across every process of the study: ``write(tmp)`` runs in the process that holds
        the lease on ``name`` (renewed while it writes), the others wait until it is published. A holder that dies
        mid-write publishes nothing; once its lease expires a waiting process takes it over and writes it.
        Returns whether this process wrote it."""
        lease = f"artifact:{self.path.name}/{self.entry(name).name}"
        if len(lease) > 191:  # the key's limit on MySQL
            lease = lease[:170] + hashlib.sha256(lease.encode()).hexdigest()[:21]
        while not self.exists(name):
            if leases.take(lease):
                with leases.held(lease):
                    if self.exists(name):  # published between our look and our take
                        return False
                    with self.staging(name) as tmp:
                        write(tmp)
                    return True
            time.sleep(min(1.0, leases.renew_every))
        return False

    def write_json(self, name: str, data: Any) -> Path:
        """Publish ``data`` as JSON atomically."""
        with self.staging(name) as tmp:
            tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        return self.entry(name)

    def read_json(self, name: str) -> Any:
        """Read a JSON artifact published by :meth:`write_json`."""
        return json.loads(self.entry(name).read_text())

    def remove(self) -> bool:
        """Delete the study's whole artifact directory (teacher, cached logits); False if there was none."""
        existed = self.path.exists()
        _remove(self.path)
        return existed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
