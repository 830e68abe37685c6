"""Pool workers: ``hpo worker`` without ``--study`` serves every study of a storage, the way a job queue serves jobs.

The pool only decides which study next. Before each trial it surveys the storage (two queries) and tries the
studies that have budget left and are not paused, best first: highest ``priority``; among equals the one with the
fewest running trials (workers are shared fairly), then the one this process served last (no needless switch).
Each study's trial is started and run by that study's :class:`~hpo.execution._worker.Worker`, as in a single-study worker
(start under the study's lock, so ``max_parallel``, the budget and a pause hold across the pool; heartbeat,
retries, SIGTERM, OOM, database backoff), with the study's own config, heartbeat settings, seed and teacher.

A study this process cannot run (its sampler needs a package missing from this image, its stored config does not
parse here, or its artifact store is not where this process looks: ``--artifacts``) is skipped, with one warning a
minute naming the reason; other workers may run it, and ``--until-idle`` leaves once nothing this process can run
remains.

A study's workload (tokenised data, teacher logits) is prepared when the pool first runs one of its trials (under
that trial's heartbeat) and kept for the last ``keep`` studies served; when the pool switches studies it unloads the
teachers it holds and returns cached GPU memory, so the next study has the GPU to itself.
"""

from __future__ import annotations

import functools
import gc
import logging
import math
import random
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

import optuna

from hpo.execution._worker import Retry, StopFlag, TooManyFailures, Worker
from hpo.study import Config, Standing, load_study, study_store, survey
from objectives import ConfigError, forget_encoded
from storage import (
    FAIL_REASON,
    create_storage,
    is_storage_error,
    redact_url,
    set_heartbeat,
)

if TYPE_CHECKING:  # the training side (torch) loads only in a worker, not for hpo status / pause
    from hpo.execution._runner import TrialRunner

log = logging.getLogger("hpo")


def rank(studies: list[Standing], last: int | None = None) -> list[Standing]:
    """The studies a pool worker may start a trial of, best first: highest priority, then fewest running trials,
    then ``last`` (the study id it served last), then at random (workers starting together spread out).

    Studies at their ``max_parallel`` or with their whole budget in flight stay in the list: trying them is what
    finds their stale trials (workers killed mid-trial) and re-queues them."""
    candidates = [s for s in studies if not s.done and not s.paused]
    return sorted(candidates, key=lambda s: (-s.config.priority, s.running, s.study_id != last, random.random()))


def free_accelerator_memory() -> None:
    """Unload the teachers this process holds and return PyTorch's cached GPU memory to the device."""
    import torch

    from objectives import unload_teachers

    unload_teachers()
    gc.unfreeze()  # the teachers were frozen with the long-lived objects after a trial (TrialRunner)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Pool:
    """One pool worker process: serves the studies of ``storage`` until stopped, or until none has budget left
    (``until_idle``), ``max_trials`` trials, or ``timeout`` seconds."""

    def __init__(
        self,
        storage: optuna.storages.RDBStorage,
        *,
        keep: int = 2,
        poll: float = 5.0,
        until_idle: bool = False,
        stop: StopFlag | None = None,
        gpu: int | str | None = None,
        max_trials: int | None = None,
        timeout: float | None = None,
        artifacts: str | None = None,
    ) -> None:
        self.storage = storage
        self.artifacts = artifacts
        """Where this process reaches the studies' artifact store, when not at their stored ``artifacts_dir``."""
        self.keep = keep
        self.poll = poll
        self.until_idle = until_idle
        self.stop = stop or StopFlag()
        self.gpu = gpu
        self.max_trials = max_trials
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.retry = Retry()
        self.configs: dict[int, Config] = {}
        self.workers: dict[int, Worker] = {}
        self.runners: OrderedDict[int, TrialRunner] = OrderedDict()
        """Prepared workloads of the last ``keep`` studies served, least recently used first."""
        self.given_up: set[int] = set()
        self.unrunnable: dict[int, str] = {}
        """Studies this process cannot run, by id: why (a missing package, a config that does not parse here)."""
        self._warned: dict[int, float] = {}
        """When each unrunnable study was last warned about (``time.monotonic()``)."""
        self.current: int | None = None
        """The study whose trial ran last in this process."""
        self.ran = 0

    def _done(self) -> bool:
        return (
            self.stop.requested
            or (self.max_trials is not None and self.ran >= self.max_trials)
            or (self.deadline is not None and time.monotonic() >= self.deadline)
        )

    def run(self) -> int:
        """The pool loop; returns the number of trials this process ran."""
        idle = False
        while not self._done():
            unreadable: dict[int, tuple[str, str]] = {}
            studies = self.retry(survey, self.storage, self.configs, unreadable, what="surveying the studies")
            self._forget_deleted({s.study_id for s in studies} | set(unreadable))
            for study_id, (name, reason) in unreadable.items():
                self._skip(study_id, name, f"its stored config is not valid here ({reason})")
            for s in studies:
                if s.study_id in self.unrunnable:
                    self._skip(s.study_id, s.name, self.unrunnable[s.study_id])
            if self._serve(studies):
                idle = False
                continue
            if self.until_idle and all(s.done or s.study_id in self.given_up | set(self.unrunnable) for s in studies):
                log.info("no study has budget left; leaving (--until-idle)")
                break
            if not idle:
                log.info("nothing to start; looking again every %g s", self.poll)
                idle = True
            self.stop.event.wait(self.poll)
        return self.ran

    def _serve(self, studies: list[Standing]) -> bool:
        """Start and run one trial of the best study that has one to start; False when none has."""
        skipped = self.given_up | set(self.unrunnable)
        for standing in rank([s for s in studies if s.study_id not in skipped], self.current):
            w = standing.config.worker
            set_heartbeat(self.storage, w.heartbeat_interval, w.grace_period, w.max_retries)
            try:
                worker = self._worker(standing)
                worker.budget.n_trials = standing.config.n_trials
                worker.budget.timeout = standing.config.timeout
                worker.budget.max_parallel = standing.config.max_parallel
                started = worker.step()
            except TooManyFailures as exc:
                log.error("study %r: %s; this worker leaves it", standing.name, exc)
                self.given_up.add(standing.study_id)
                return True
            except KeyError:  # deleted since the survey; the next survey forgets it
                log.info("study %r is gone", standing.name)
                continue
            except ConfigError as exc:
                if exc.key == "--study":  # no study of that name: deleted since the survey
                    log.info("study %r is gone", standing.name)
                else:  # e.g. sampler.name: qmc needs scipy
                    self._skip(standing.study_id, standing.name, f"it cannot run in this worker: {exc}")
                continue
            if started:
                self.ran += 1
                return True
        return False

    def _skip(self, study_id: int, name: str, reason: str) -> None:
        """Leave a study this process cannot run to other workers, warning once a minute."""
        self.unrunnable[study_id] = reason
        if time.monotonic() - self._warned.get(study_id, -math.inf) >= 60:
            log.warning("study %r: %s; this worker skips it", name, reason)
            self._warned[study_id] = time.monotonic()

    def _worker(self, standing: Standing) -> Worker:
        """The worker loop of a study (cheap: no model or data until it runs a trial)."""
        from hpo.execution._costs import check_hardware
        from hpo.execution._run import process_salt, resolve_device, slot_config, store_config, study_worker

        worker = self.workers.get(standing.study_id)
        if worker is None:
            study, _ = self.retry(load_study, self.storage, standing.name, process_salt(), what="loading the study")
            config = store_config(standing.config, self.artifacts)
            check_hardware(study, config, resolve_device(slot_config(config, self.gpu).device).type)
            if config.objective == "distill":  # a store that is not the study's: skipped, never a private teacher
                study_store(config, study.user_attrs)
            objective = functools.partial(self._objective, standing.study_id, study, config)
            worker = study_worker(study, standing.config, objective, stop=self.stop, label=f"{standing.name} ")
            self.workers[standing.study_id] = worker
        return worker

    def _objective(self, study_id: int, study: optuna.Study, config: Config, trial: optuna.Trial) -> list[float]:
        from hpo.execution._run import prepare_runner, slot_config

        if self.current != study_id:
            if self.current is not None:
                free_accelerator_memory()
            log.info("serving study %r (priority %d)", study.study_name, config.priority)
            self.current = study_id
        runner = self.runners.get(study_id)
        if runner is None:
            try:
                slot = slot_config(config, self.gpu)
                runner = prepare_runner(slot, study, self.gpu)
            except Exception as exc:
                if not is_storage_error(exc):
                    trial.set_user_attr(FAIL_REASON, f"preparing the study: {type(exc).__name__}: {exc}"[:1000])
                raise
            self.runners[study_id] = runner
            while len(self.runners) > self.keep:
                self._drop_runner(next(iter(self.runners)))
        self.runners.move_to_end(study_id)
        return runner(trial)

    def _drop_runner(self, study_id: int) -> None:
        runner = self.runners.pop(study_id)
        if runner.work is not None:
            forget_encoded(runner.work.train, runner.work.validation)
        gc.unfreeze()  # its objects were frozen with the long-lived ones after a trial (TrialRunner)
        gc.collect()

    def _forget_deleted(self, present: set[int]) -> None:
        """Drop what this process keeps for studies deleted from the storage."""
        for study_id in set(self.workers) - present:
            del self.workers[study_id]
            if study_id in self.runners:
                self._drop_runner(study_id)
        for study_id in set(self.configs) - present:
            del self.configs[study_id]
        for study_id in set(self.unrunnable) - present:
            del self.unrunnable[study_id]
            self._warned.pop(study_id, None)


def serve(
    url: str,
    *,
    gpu: int | str | None,
    threads: int,
    keep: int,
    poll: float,
    until_idle: bool,
    max_trials: int | None,
    timeout: float | None,
    stop: StopFlag,
    artifacts: str | None = None,
) -> int:
    """One pool worker slot (``hpo worker`` without ``--study``); ``artifacts`` as :class:`Pool`'s. Returns trials
    run."""
    import torch

    from hpo.execution._run import require_schema

    torch.set_num_threads(threads)
    require_schema(url)
    storage = Retry()(create_storage, url, create_tables=False, what=f"connecting to {redact_url(url)}")
    pool = Pool(
        storage,
        keep=keep,
        poll=poll,
        until_idle=until_idle,
        stop=stop,
        gpu=gpu,
        max_trials=max_trials,
        timeout=timeout,
        artifacts=artifacts,
    )
    try:
        return pool.run()
    finally:
        storage.remove_session()
        storage.engine.dispose()
