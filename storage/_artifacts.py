"""The artifact directory of a study: files computed once per study and shared by every trial and worker.

Writers publish atomically (write to a temporary sibling, then rename) under an exclusive file lock, so a reader
never sees a half-written artifact and two workers never compute the same one twice. The lock is an ``fcntl``
lock: it works across processes on one node and on shared file systems that support POSIX locks (NFSv4).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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

    def exists(self, name: str) -> bool:
        """Whether ``name`` was published completely."""
        return self.entry(name).exists()

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Hold an exclusive lock for producing ``name``; other processes block here until it is released."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / f".{_SAFE_NAME.sub('_', name)}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def staging(self, name: str) -> Iterator[Path]:
        """A fresh temporary path to write ``name`` into; renamed to the final path only if the block succeeds."""
        final = self.entry(name)
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        _remove(tmp)
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            yield tmp
            _remove(final)
            os.replace(tmp, final)
        finally:
            _remove(tmp)

    def write_json(self, name: str, data: Any) -> Path:
        """Publish ``data`` as JSON atomically."""
        with self.staging(name) as tmp:
            tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        return self.entry(name)

    def read_json(self, name: str) -> Any:
        """Read a JSON artifact published by :meth:`write_json`."""
        return json.loads(self.entry(name).read_text())

    def remove(self) -> bool:
        """Delete the study's whole artifact directory (teacher, cached logits, locks); False if there was none."""
        existed = self.path.exists()
        _remove(self.path)
        return existed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
