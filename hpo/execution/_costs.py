"""Cost metrics shared by all workers of a study: one measurement per architecture and hardware, taken with the GPU
idle of the other worker processes on it, and a study's hardware kind.

Latency is an objective, and two processes measuring the same student differ by a few percent on a busy machine
(``bench/latency_stability.py``). Keeping the first measurement in the study, under a key that names the
architecture, the hardware in full (a GPU's name, memory, compute capability, SMs and CUDA version; a CPU's model
and threads), the input and the torch version, makes every trial of that architecture on that hardware report the
same latency, so the Pareto front orders architectures, not measurement noise; the other workers also skip the
measurement.

A measurement kept for the whole study must not be slowed by a sibling: the worker processes training on one GPU
of a node (``hpo worker --gpus --per-gpu K``) share a :class:`DeviceLock`. A trial holds it shared while it trains
and lets a waiting measurement in at each validation; a measurement holds it exclusive, so it runs once every
sibling has reached a validation or ended its trial, and they wait until it is done.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import optuna

from hpo.study import Config
from objectives import ConfigError
from storage import claim_study_attr

_PREFIX = "cost:"

HARDWARE_ATTR = "hardware_kind"
"""Study system attribute: the device kind (``cpu``, ``cuda``) its hardware-dependent objectives are measured on,
claimed by the first worker (:func:`check_hardware`)."""


class DeviceLock:
    """A readers-writer lock of the processes on one device of a node, over two files (``flock``): training holds
    it shared, a measurement exclusive. A measurement first takes the gate, so no trial starts or resumes training
    while it waits (the many readers cannot starve it)."""

    def __init__(self, path: Path) -> None:
        self._main = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        self._gate = os.open(path.with_name(path.name + ".gate"), os.O_RDWR | os.O_CREAT, 0o666)
        self.shared = False

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the device alone: wait for every process training on it to let this one in."""
        self.release()
        fcntl.flock(self._gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(self._main, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._main, fcntl.LOCK_UN)
        finally:
            fcntl.flock(self._gate, fcntl.LOCK_UN)

    def share(self) -> None:
        """Train on the device beside the others (after any measurement waiting at the gate)."""
        if self.shared:
            return
        fcntl.flock(self._gate, fcntl.LOCK_EX)
        fcntl.flock(self._gate, fcntl.LOCK_UN)
        fcntl.flock(self._main, fcntl.LOCK_SH)
        self.shared = True

    def let_in(self) -> None:
        """While training: when a measurement waits, step aside until it is done (one non-blocking check else)."""
        if not self.shared:
            return
        try:
            fcntl.flock(self._gate, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a measurement holds the gate
            self.release()
            self.share()
            return
        fcntl.flock(self._gate, fcntl.LOCK_UN)

    def release(self) -> None:
        if self.shared:
            fcntl.flock(self._main, fcntl.LOCK_UN)
            self.shared = False


_LOCKS: dict[str, DeviceLock] = {}
"""This process's lock of each GPU (one per GPU: two open files of one process would lock each other out)."""


def gpu_lock(device: str, folder: Path | None = None) -> DeviceLock | None:
    """The :class:`DeviceLock` of the GPU ``device`` (a torch device name) under ``folder`` (the node's temporary
    folder), named by the GPU's UUID, so slots that see it under different indices share it; None for a CPU."""
    import torch

    if not device.startswith("cuda"):
        return None
    uuid = torch.cuda.get_device_properties(torch.device(device)).uuid
    path = (folder or Path(tempfile.gettempdir())) / f"hpo-gpu-{uuid}.lock"
    if str(path) not in _LOCKS:
        _LOCKS[str(path)] = DeviceLock(path)
    return _LOCKS[str(path)]


class StudyCosts:
    """A :class:`objectives.CostStore` in the study's system attributes (``cost:<key>``), read through a local copy;
    with the ``lock`` of the GPU the process trains on, measurements run with the GPU idle of its siblings."""

    def __init__(self, study: optuna.Study, lock: DeviceLock | None = None) -> None:
        self._storage = study._storage
        self._study_id = study._study_id
        self._local: dict[str, dict[str, float]] = {}
        self.lock = lock

    def get(self, key: str, /) -> dict[str, float] | None:
        if key not in self._local:
            stored = self._storage.get_study_system_attrs(self._study_id).get(_PREFIX + key)
            if stored is None:
                return None
            self._local[key] = stored
        return self._local[key]

    def setdefault(self, key: str, value: dict[str, float], /) -> dict[str, float]:
        """Store ``value`` unless another worker stored one first; then keep theirs."""
        if key not in self._local:
            self._local[key] = claim_study_attr(self._storage, self._study_id, _PREFIX + key, value)
        return self._local[key]

    def measuring(self) -> contextlib.AbstractContextManager[None]:
        """The block a cost is measured in (:func:`objectives.evaluation.stored_cost`)."""
        return contextlib.nullcontext() if self.lock is None else self.lock.exclusive()

    def training(self) -> None:
        """The trial starts training (its cost is known)."""
        if self.lock is not None:
            self.lock.share()

    def let_in(self) -> None:
        """The trial validates: a measurement waiting for the GPU runs now."""
        if self.lock is not None:
            self.lock.let_in()

    def trained(self) -> None:
        """The trial ended, however."""
        if self.lock is not None:
            self.lock.release()


def check_hardware(study: optuna.Study, config: Config, kind: str) -> None:
    """Refuse a worker on a device of ``kind`` (``cpu``, ``cuda``) other than the one the study's hardware-dependent
    objectives and constraints (:attr:`Config.hardware_metrics`) are measured on, the first worker's, unless the
    study says ``mix_hardware: true``: CPU and GPU latencies in one Pareto front would order hardware, not students."""
    metrics = config.hardware_metrics
    if not metrics or config.mix_hardware:
        return
    first = claim_study_attr(study._storage, study._study_id, HARDWARE_ATTR, kind)
    if first != kind:
        where = "hpo worker --gpus all" if first == "cuda" else "a worker not pinned to a GPU (--gpus none)"
        raise ConfigError(
            "device",
            f"study {config.name!r} measures {', '.join(metrics)} on {first} (its first worker's) and this worker "
            f"trains on {kind}: one objective would mix both; run it on {first} ({where}), or set mix_hardware: "
            "true in the study to allow it",
        )
