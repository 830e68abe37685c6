"""Running trials in this process: ``hpo run`` (create or load, then work) and one ``hpo worker`` slot."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import optuna
import torch

from hpo.execution._costs import check_hardware
from hpo.execution._runner import TrialRunner, describe, warn_never_predicted
from hpo.execution._slots import Slot, launch, plan_slots, usable_cores
from hpo.execution._teacher import LogitCache, ensure_teacher, study_leases
from hpo.execution._worker import Budget, Retry, StopFlag, Worker
from hpo.study import Config, is_grid, load_study, open_study, study_store
from hpo.views import Progress, results_table, state_counts
from objectives import ConfigError
from storage import create_storage, redact_url, schema_exists, store_root

log = logging.getLogger("hpo")


def resolve_device(name: str) -> torch.device:
    """``auto`` is the first visible CUDA device when there is one, else the CPU (``hpo run``, ``hpo train``: one
    process, which has the GPU to itself). Worker slots resolve ``auto`` first (:func:`slot_config`)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def slot_gpus(gpu: int | str | None) -> int:
    """How many GPUs a slot has: ``gpu`` is its GPU index, its GPUs as ``"4,5,6,7"``, or None (not pinned)."""
    return 0 if gpu is None else len(str(gpu).split(","))


def slot_config(config: Config, gpu: int | str | None) -> Config:
    """``config`` as a worker slot runs it. A slot pinned to a GPU (``hpo worker --gpus``; CUDA_VISIBLE_DEVICES
    shows it that GPU alone, as ``cuda:0``) runs there whatever the study's ``device``; a slot of several GPUs
    (``"4,5,6,7"``: CUDA_VISIBLE_DEVICES shows them as ``cuda:0``..``cuda:3``) runs a study whose
    ``train.devices`` is their number, rank r on ``cuda:r``, and refuses any other. A slot not pinned
    (``--gpus none``, ``--procs N``, a pool worker without ``--gpus``) runs ``device: auto`` on the CPU: resolved
    to CUDA, every such process would land on GPU 0, unplanned and unrecorded. An explicit ``device`` is kept."""
    if gpu is not None and config.train.devices != slot_gpus(gpu):
        raise ConfigError(
            "train.devices",
            f"study {config.name!r} trains each trial on {config.train.devices} GPUs and this worker's slots have "
            f"{slot_gpus(gpu)} (GPUs {gpu}); serve it with hpo worker --gpus ... --devices {config.train.devices}",
        )
    if gpu is None and config.device != "auto":
        return config
    placed = copy.copy(config)
    placed.device = "cuda:0" if gpu is not None else "cpu"
    if gpu is None and torch.cuda.is_available():
        log.info(
            "device auto: this worker is not pinned to a GPU, so it trains on the CPU (hpo worker --gpus all "
            "runs a process per GPU)"
        )
    return placed


def placement(device: torch.device, gpu: int | str | None) -> dict[str, Any]:
    """What every trial records of where it ran: ``device`` (as torch names it in this process) and ``gpu``: the
    slot's GPU index when pinned (``hpo worker --gpus``; ``"4,5,6,7"`` for a slot of several), the CUDA device's
    index in an unpinned process on a GPU, else ``"cpu"``."""
    if device.type != "cuda":
        return {"device": str(device), "gpu": "cpu"}
    if gpu is None:
        gpu = device.index if device.index is not None else torch.cuda.current_device()
    return {"device": str(device), "gpu": gpu}


def store_config(config: Config, artifacts: str | None) -> Config:
    """``config`` as a process that reaches the study's artifact store at ``artifacts`` runs it (``hpo worker
    --artifacts``, ``HPO_ARTIFACTS_DIR``: the same store mounted under another path); ``config`` itself without."""
    if not artifacts:
        return config
    moved = copy.copy(config)
    moved.artifacts_dir = store_root(artifacts)
    return moved


def prepare_runner(config: Config, study: optuna.Study, gpu: int | str | None = None) -> TrialRunner:
    """The trial runner of ``config``: data tokenised once for this process, the teacher trained once per study.
    Every trial records the device it runs on (:func:`placement`; ``gpu`` is the slot's GPU when pinned)."""
    device = resolve_device(config.device)
    check_hardware(study, config, device.type)
    attrs = placement(device, gpu)
    if config.objective == "synthetic":
        return TrialRunner(config, attrs=attrs)
    # the store is checked first: a process that cannot reach the study's teacher must not train its own
    artifacts = study_store(config, study.user_attrs) if config.objective == "distill" else None
    work = config.task_spec.implementation().prepare_workload(config.data, config.teacher.model, device)
    log.info(
        "data %s: %d train / %d validation %s (test split of %d %s held out), device %s",
        config.data.name,
        len(work.train),
        len(work.validation),
        work.unit,
        work.n_test,
        config.task_spec.unit,
        device,
    )
    if artifacts is None:
        return TrialRunner(config, work, None, attrs)
    leases = study_leases(config, study)
    teacher_dir, teacher = ensure_teacher(config, work, artifacts, study, leases)
    scores = ", ".join(f"{m} {teacher[m]:.4f}" for m in config.task_spec.validation_metrics[:2])
    log.info("teacher: validation %s (%s)", scores, teacher_dir)
    warn_never_predicted("the teacher", teacher.get("per_class") or {})
    return TrialRunner(
        config,
        work,
        teacher_dir,
        attrs,
        LogitCache(artifacts, teacher_dir, leases, config.train.eval_batch_size),
    )


def _storage(url: str, config: Config, *, create_tables: bool) -> optuna.storages.RDBStorage:
    w = config.worker
    return Retry(w.storage_retries)(
        create_storage,
        url,
        heartbeat_interval=w.heartbeat_interval,
        grace_period=w.grace_period,
        max_retries=w.max_retries,
        create_tables=create_tables,
        what=f"connecting to {redact_url(url)}",
    )


def study_worker(
    study: optuna.Study,
    config: Config,
    objective: Callable[[optuna.Trial], list[float]],
    *,
    max_trials: int | None = None,
    timeout: float | None = None,
    stop: StopFlag | None = None,
    bars: Progress | None = None,
    label: str = "",
) -> Worker:
    """The worker loop of ``study`` in this process, following its config's budget and worker settings.

    With ``bars``, progress bars follow the study's finished trials and each trial's training steps; ``label``
    starts each progress log line (a pool worker names the study).
    """
    budget = Budget(
        n_trials=config.n_trials,
        timeout=config.timeout,
        grid=is_grid(config),
        max_parallel=config.max_parallel,
        max_trials=max_trials,
        deadline=None if timeout is None else time.monotonic() + timeout,
        max_consecutive_failures=config.worker.max_consecutive_failures,
    )

    def progress(trial: optuna.trial.FrozenTrial) -> None:
        finished = study._storage.get_n_trials(
            study._study_id, (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        )
        log.info("%s[%s/%s] %s", label, finished, config.n_trials or "-", describe(trial, config.metric_names))
        if bars is not None:
            bars.finished(finished)

    def shown(trial: optuna.Trial) -> list[float]:
        if bars is None:
            return objective(trial)
        with bars.training(f"trial {trial.number}"):
            return objective(trial)

    w = config.worker
    return Worker(
        study,
        shown,
        budget,
        max_retries=w.max_retries,
        retry=Retry(w.storage_retries),
        stop=stop,
        on_trial=progress,
        poll=min(1.0, w.heartbeat_interval),
        idle_limit=w.grace_period + 3 * w.heartbeat_interval,
        max_seconds=None if config.train.max_minutes is None else 60 * config.train.max_minutes,
    )


def work(study: optuna.Study, config: Config, runner: TrialRunner, **kw: Any) -> int:
    """Run trials of ``study`` in this process until its budget is spent; returns how many this process ran.
    Keywords as :func:`study_worker`."""
    return study_worker(study, config, runner, **kw).run()


def create(config: Config, url: str) -> optuna.Study:
    """``hpo create``: the study with its config stored (idempotent for the same config)."""
    log.info("study %r on %s", config.name, redact_url(url))
    return open_study(config, _storage(url, config, create_tables=True))


def _bars(study: optuna.Study, config: Config, show: bool) -> Progress | None:
    if not show:
        return None
    finished = study._storage.get_n_trials(
        study._study_id, (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    )
    return Progress(config.n_trials, finished)


def _prepare_and_work(
    study: optuna.Study, config: Config, bars: Progress | None, gpu: int | str | None = None, **kw: Any
) -> int:
    try:
        with bars.training("teacher") if bars is not None else contextlib.nullcontext():
            runner = prepare_runner(config, study, gpu)
        return work(study, config, runner, bars=bars, **kw)
    finally:
        if bars is not None:
            bars.close()


def node_slots(config: Config, threads: int) -> list[Slot]:
    """The slots ``hpo run`` starts for a study whose trials take several GPUs (``train.devices`` > 1, ``device``
    ``auto`` or ``cuda``) on a node with GPUs for two trials or more: the visible GPUs in groups of
    ``train.devices``, one worker process each (8 GPUs, 4 devices: two trials at a time). Empty otherwise: the
    study runs in this process (one trial at a time, its ranks on ``cuda:0``..)."""
    devices = config.train.devices
    if devices == 1 or config.device not in ("auto", "cuda") or not torch.cuda.is_available():
        return []
    visible = torch.cuda.device_count()
    if visible // devices < 2:
        return []
    if visible % devices:
        log.info("%d of %d GPUs idle: train.devices %d groups the rest", visible % devices, visible, devices)
    return plan_slots(list(range(visible - visible % devices)), 1, 1, threads, devices)


def run(
    config: Config,
    url: str,
    threads: int | None = None,
    stop: StopFlag | None = None,
    progress: bool = False,
    memory_limit: int | None = None,
) -> str:
    """``hpo run``: create or load the study, run its remaining budget here, return the results table.

    ``progress`` shows progress bars (for a terminal). A study whose trials take several GPUs runs one worker
    process per group of them (:func:`node_slots`), as ``hpo worker --gpus all`` would, each capped at
    ``memory_limit`` MiB of data (``--memory-limit``; this process caps itself otherwise, before calling)."""
    # A fixed thread count keeps latency measurements comparable between trials.
    torch.set_num_threads(threads or usable_cores())
    study = create(config, url)
    slots = node_slots(config, threads or usable_cores())
    if slots:
        log.info("%d trials at a time, each on %d GPUs", len(slots), config.train.devices)
        cap = [] if memory_limit is None else ["--memory-limit", str(memory_limit)]
        launch(slots, ["--study", config.name, *cap], url, os.environ.get("CUDA_VISIBLE_DEVICES"))
    elif _prepare_and_work(study, config, _bars(study, config, progress), stop=stop) == 0:
        log.info(
            "study budget (n_trials %s, timeout %s s) already spent; showing results", config.n_trials, config.timeout
        )
    return f"study {config.name!r}: {state_counts(study)}\n\n{results_table(study, metrics=config.task_spec.metrics)}"


def study_devices(url: str, name: str) -> int:
    """The ``train.devices`` of study ``name``'s stored config (how ``hpo worker --study`` groups its GPUs)."""
    require_schema(url)
    bootstrap = Config(name=name)
    storage = _storage(url, bootstrap, create_tables=False)
    try:
        _, config = Retry(bootstrap.worker.storage_retries)(load_study, storage, name, what="loading the study")
    finally:
        storage.engine.dispose()
    return config.train.devices


def require_schema(url: str) -> None:
    """Workers never create tables: refuse a storage without them, naming the command that creates them."""
    if not Retry()(schema_exists, url, what=f"connecting to {redact_url(url)}"):
        raise ConfigError(
            "--storage", f"{redact_url(url)} has no study tables; run hpo create (or hpo db upgrade) first"
        )


def process_salt() -> str:
    """Seeds this process's samplers apart from other workers': seeded alike, they would propose the same
    parameters."""
    return f"{socket.gethostname()}:{os.getpid()}"


def run_slot(
    url: str,
    study_name: str,
    *,
    gpu: int | str | None,
    threads: int,
    max_trials: int | None,
    timeout: float | None,
    stop: StopFlag,
    progress: bool = False,
    artifacts: str | None = None,
) -> int:
    """One ``hpo worker`` slot: load the study's stored config, then work. Returns trials run.

    ``progress`` shows progress bars (for a terminal); ``artifacts`` is where this process reaches the study's
    artifact store, when not at the stored ``artifacts_dir``."""
    torch.set_num_threads(threads)
    bootstrap = Config(name=study_name)
    require_schema(url)
    # The stored config carries the study's heartbeat and retry settings, so read it first, then reconnect with them.
    plain = _storage(url, bootstrap, create_tables=False)
    _, config = Retry(bootstrap.worker.storage_retries)(load_study, plain, study_name, what="loading the study")
    plain.engine.dispose()
    study, _ = Retry(config.worker.storage_retries)(
        load_study, _storage(url, config, create_tables=False), study_name, process_salt(), what="loading the study"
    )
    ran = _prepare_and_work(
        study,
        slot_config(store_config(config, artifacts), gpu),
        _bars(study, config, progress),
        gpu,
        max_trials=max_trials,
        timeout=timeout,
        stop=stop,
    )
    study._storage.remove_session()
    return ran
