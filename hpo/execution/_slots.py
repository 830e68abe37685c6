"""``hpo worker`` slots: one process per GPU slot (K per GPU) or N CPU processes, each running the worker loop.

Children get the storage URL without its password through the environment (``HPO_STORAGE``), never on their
command line, where any user could read it with ``ps``; the password reaches each child through a pipe it inherits
(``HPO_STORAGE_PASSWORD_FILE=/dev/fd/N``, read once at its start), so it is in no environment (``/proc/PID/environ``,
``docker inspect``) either.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from objectives import ConfigError
from storage import redact_url

log = logging.getLogger("hpo")


@dataclass(frozen=True)
class Slot:
    """Where one worker process runs: a GPU index (pinned with CUDA_VISIBLE_DEVICES) or the CPU."""

    gpu: int | None
    """The slot's GPU, its first when it has several."""
    threads: int
    group: tuple[int, ...] = ()
    """Every GPU of a slot of several (``train.devices`` > 1: one trial's ranks, rank r on the r-th); empty for a
    slot of one GPU or the CPU."""

    @property
    def gpus(self) -> tuple[int, ...]:
        """The GPUs this slot's process sees (CUDA_VISIBLE_DEVICES), in rank order."""
        return self.group or (() if self.gpu is None else (self.gpu,))


def parse_gpus(value: str, visible: int) -> list[int]:
    """``all`` -> every visible GPU, ``none`` -> [], ``0,1,3`` -> those indices, ``0-3,6`` -> 0, 1, 2, 3, 6
    (checked against ``visible``).

    GPUs asked for where none is visible is an error, never a quiet fall-back to one CPU process: a GPU node whose
    driver or ``CUDA_VISIBLE_DEVICES`` is wrong would otherwise run trials on the CPU for hours."""
    if value == "none":
        return []
    if visible == 0:
        raise ValueError(
            f"--gpus: {value} asks for GPUs but no CUDA device is visible here (check the driver, the CUDA build of "
            "torch and CUDA_VISIBLE_DEVICES); for CPU workers leave --gpus out (or --gpus none) and use --procs N"
        )
    if value == "all":
        return list(range(visible))
    try:
        gpus = [g for part in value.split(",") for g in _indices(part)]
    except ValueError:
        raise ValueError(f"--gpus: expected all, none or indices like 0,1,3 or 0-7, got {value!r}") from None
    if len(set(gpus)) != len(gpus):
        raise ValueError(f"--gpus: {value} lists a GPU twice")
    missing = [g for g in gpus if not 0 <= g < visible]
    if missing:
        raise ValueError(f"--gpus: GPUs {missing} do not exist here ({visible} visible)")
    return gpus


def _indices(part: str) -> list[int]:
    """``3`` -> [3], ``0-3`` -> [0, 1, 2, 3]; ValueError for anything else."""
    first, dash, last = part.partition("-")
    if not dash:
        return [int(part)]
    if int(last) < int(first):
        raise ValueError(part)
    return list(range(int(first), int(last) + 1))


CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
"""The cgroup v2 CPU quota of this container (Docker ``--cpus``, a Kubernetes CPU limit)."""


def usable_cores(cpu_max: Path = CGROUP_CPU_MAX, environ: Mapping[str, str] = os.environ) -> int:
    """The CPU cores this process may use, the default for torch threads: the fewest of

    - its CPU affinity, ``len(os.sched_getaffinity(0))`` (``taskset``, Slurm's and Kubernetes' CPU pinning);
    - the cgroup v2 quota in ``cpu_max`` (``"QUOTA PERIOD"`` in microseconds: ``ceil(QUOTA / PERIOD)`` cores;
      ``"max PERIOD"`` or no file: no quota);
    - ``SLURM_CPUS_PER_TASK`` in ``environ`` (``sbatch --cpus-per-task``).

    ``os.cpu_count()`` counts the node's cores, which a container or a job step may not use: threads past the
    quota are throttled, and several workers on one node oversubscribe it."""
    counts = [len(os.sched_getaffinity(0))]
    if cpu_max.is_file():
        quota, period = cpu_max.read_text().split()
        if quota != "max":
            counts.append(math.ceil(int(quota) / int(period)))
    slurm = environ.get("SLURM_CPUS_PER_TASK")
    if slurm is not None:
        if not slurm.isdigit() or int(slurm) < 1:
            raise ConfigError("SLURM_CPUS_PER_TASK", f"expected a whole number of CPUs >= 1, got {slurm!r}")
        counts.append(int(slurm))
    return max(1, min(counts))


def limit_memory(mib: int) -> None:
    """Cap this process's data memory (heap and private mappings: Linux ``RLIMIT_DATA``) at ``mib`` MiB.

    An allocation past the cap fails where it is made (torch: "can't allocate memory"), so the trial that made it
    ends FAIL with ``fail_reason`` ``oom``, its memory is freed, and the worker goes on to the next trial."""
    import resource

    from objectives.evaluation import process_memory

    used = process_memory("VmData") // 2**20
    if mib <= used:
        raise ValueError(f"--memory-limit: {mib} MiB is not above what the worker already holds ({used} MiB)")
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY and mib * 2**20 > hard:
        raise ValueError(f"--memory-limit: {mib} MiB is above this process's hard limit ({hard // 2**20} MiB)")
    resource.setrlimit(resource.RLIMIT_DATA, (mib * 2**20, hard))
    log.info("memory limit: %d MiB of data per worker process", mib)


def _start_cuda() -> None:
    """Create this process's CUDA context and load cuBLAS (one small matrix product on the GPU)."""
    import torch

    x = torch.ones(8, 8, device="cuda")
    (x @ x).sum().item()


def start_memory(*, cuda: bool, per_gpu: int = 1, mib: int | None = None) -> None:
    """Set up a trial process's memory before its first trial; ``cuda``: it trains on a GPU.

    1. On a GPU, CUDA starts first (:func:`_start_cuda`): the driver and cuBLAS map host memory as they start, and
       under a data cap set before, context creation may fail with "out of memory" (then every trial would end
       ``oom``).
    2. With ``per_gpu`` >= 2 processes on the GPU, this one may hold at most ``1 / per_gpu`` of its memory
       (``torch.cuda.set_per_process_memory_fraction``): a trial that outgrows its share fails OOM itself, rather
       than a co-tenant's trial failing with an OOM recorded against that trial's hyperparameters.
    3. ``mib`` caps data memory (:func:`limit_memory`, ``--memory-limit``), on a GPU with CUDA's own host memory
       already counted in what the process holds. GPU memory is not capped by it (step 2 is the GPU's cap)."""
    if cuda:
        import torch

        _start_cuda()
        if per_gpu > 1:
            torch.cuda.set_per_process_memory_fraction(1 / per_gpu)
            log.info("GPU memory: at most 1/%d of the device for this process (--per-gpu %d)", per_gpu, per_gpu)
    if mib is not None:
        limit_memory(mib)


def plan_slots(gpus: list[int], per_gpu: int, procs: int, cores: int, devices: int = 1) -> list[Slot]:
    """K slots per listed GPU, or ``procs`` CPU slots sharing the cores (so they do not oversubscribe them).

    With ``devices`` > 1 (a study's ``train.devices``, a pool's ``--devices``) each slot is ``devices`` of the
    listed GPUs in their order (``--gpus 0-7``, 4 devices: slots 0-3 and 4-7), one trial at a time on each; the
    list must divide into such groups, and GPUs are not shared (``--per-gpu`` 1). CPU slots are not grouped: a
    trial's ranks are processes of its slot (gloo)."""
    if gpus and devices > 1:
        if per_gpu > 1:
            raise ValueError(
                f"--per-gpu: {per_gpu} processes per GPU cannot share GPUs that train.devices ({devices}) spreads one "
                "trial over; leave --per-gpu out"
            )
        if len(gpus) % devices:
            raise ValueError(
                f"--gpus: {len(gpus)} GPUs do not divide into groups of train.devices ({devices}); list a multiple "
                f"of {devices} GPUs or change train.devices"
            )
        threads = max(1, cores // (len(gpus) // devices))
        groups = [tuple(gpus[i : i + devices]) for i in range(0, len(gpus), devices)]
        return [Slot(group[0], threads, group) for group in groups]
    if gpus:
        return [Slot(gpu, max(1, cores // (len(gpus) * per_gpu))) for gpu in gpus for _ in range(per_gpu)]
    return [Slot(None, max(1, cores // procs)) for _ in range(procs)]


def device_of(gpu: int, visible_devices: str | None) -> str:
    """``CUDA_VISIBLE_DEVICES`` of the slot on GPU index ``gpu``: the ``gpu``-th of this process's
    ``visible_devices`` (Slurm and Kubernetes set them to the GPUs they allotted), else the node's GPU ``gpu``."""
    return visible_devices.split(",")[gpu] if visible_devices else str(gpu)


def _password_pipe(password: str) -> int:
    """The read end of a new pipe that holds ``password`` and is closed for writing (a child reads it to its end)."""
    read, write = os.pipe()
    os.write(write, password.encode())  # a few bytes: far below the pipe's buffer, so this never blocks
    os.close(write)
    return read


def launch(
    slots: list[Slot],
    child_args: list[str],
    storage_url: str,
    visible_devices: str | None = None,
    stop_timeout: float = 120.0,
) -> int:
    """Start one child ``hpo worker`` per slot and wait. SIGTERM / SIGINT are passed on to every child; children
    still alive ``stop_timeout`` seconds later are killed. Returns 0 when every child exited 0. Slots are pinned to
    their GPU with :func:`device_of` this process's ``visible_devices``."""
    url = make_url(storage_url)
    without_password = url._replace(password=None).render_as_string(hide_password=False)
    if redact_url(without_password) != without_password:  # a query value whose key names a secret
        raise ConfigError(
            "--storage",
            f"{redact_url(without_password)}: a secret in the URL's query would reach the worker processes' "
            "environment; put the password in the URL's password part or in HPO_STORAGE_PASSWORD_FILE",
        )
    children = []
    for slot in slots:
        env = {**os.environ, "HPO_STORAGE": without_password}
        args = [*child_args, "--threads", str(slot.threads)]
        if slot.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(device_of(gpu, visible_devices) for gpu in slot.gpus)
            args += ["--slot-gpu", ",".join(map(str, slot.gpus))]
        fds = (_password_pipe(url.password),) if url.password else ()
        if fds:
            env["HPO_STORAGE_PASSWORD_FILE"] = f"/dev/fd/{fds[0]}"
        children.append(subprocess.Popen([sys.executable, "-m", "hpo._cli", "worker", *args], env=env, pass_fds=fds))
        for fd in fds:
            os.close(fd)  # the child holds its own copy
    log.info("started %d worker processes: %s", len(children), ", ".join(str(c.pid) for c in children))

    stopping = {"at": None}

    def forward(signum: int, frame: object) -> None:
        stopping["at"] = stopping["at"] or time.monotonic()
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while any(c.poll() is None for c in children):
        if stopping["at"] is not None and time.monotonic() - stopping["at"] > stop_timeout:
            for child in children:
                if child.poll() is None:
                    log.warning("worker %d did not stop in %.0f s; killing it", child.pid, stop_timeout)
                    child.kill()
        time.sleep(0.2)
    codes = [c.returncode for c in children]
    log.info("worker processes exited with %s", codes)
    return 0 if all(code == 0 for code in codes) else 1
