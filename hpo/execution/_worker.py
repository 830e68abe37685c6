"""The worker loop: claim or create a trial, run it under a heartbeat, record it; survive faults.

Many workers (processes, GPUs, nodes) run this loop against one study in one database:

- Trials queued as WAITING (grid points, retries of trials lost to a crashed or stopped worker) are claimed first,
  else a trial is created. Starting a trial is one transaction under the study's row lock
  (``storage.start_trial``), so each queued trial is run by exactly one worker, the budget and the study's
  ``max_parallel`` hold across workers, and nothing starts while the study is paused. A grid study never creates
  trials beyond its queue, so every grid point runs exactly once.
- Running trials send heartbeats; a trial whose worker was killed is found stale by the next worker that looks,
  marked FAIL and re-queued with the same parameters, up to ``max_retries`` times (``storage.retry_trial``).
- SIGTERM / Ctrl-C: the running trial is interrupted, marked FAIL with ``fail_reason = worker stopped`` and
  re-queued, and the loop ends. A stop is no failure of the trial: however often preemptions or rolling updates
  stop it, it is re-queued, and never counts against ``max_retries``.
- A trial running past ``train.max_minutes`` is interrupted (SIGALRM), marked FAIL with ``fail_reason = timeout``
  (not retried: its parameters are what made it slow), and the worker goes on. A trial hung in a call that no
  signal interrupts is recorded the same way ``kill_grace`` seconds later by a watchdog thread, which then restarts
  the worker process in place (``StopFlag.restart``: the same command line, the same process id).
- Database errors (a restart, a dropped connection) are retried with exponential backoff; a finished trial's
  result is held until the database takes it. After ``storage_retries`` failures the worker gives up with one line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any, TypeVar

import optuna
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.trial import TrialState

from storage import (
    FAIL_REASON,
    driver_error,
    first_starts,
    is_storage_error,
    redact_text,
    retry_trial,
    start_trial,
    timed_out,
)

log = logging.getLogger("hpo")
T = TypeVar("T")

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class WorkerStopped(KeyboardInterrupt):
    """SIGTERM or Ctrl-C asked the worker to stop (a KeyboardInterrupt, so no ``except Exception`` swallows it)."""


class TrialTimeout(KeyboardInterrupt):
    """The trial ran past its time limit (a KeyboardInterrupt, so no ``except Exception`` in a trial swallows it)."""


class StorageUnavailable(RuntimeError):
    """The database stayed unreachable through every retry."""


class TooManyFailures(RuntimeError):
    """Trial after trial failed: the worker stops instead of burning through the queue."""


class StopFlag:
    """Set by SIGTERM / SIGINT. While a trial runs, the signal also interrupts it by raising WorkerStopped."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.in_trial = False
        self.restart: Callable[[], None] | None = None
        """Replaces this process with a fresh one (the CLI sets it: the same command line); a worker whose trial
        hung past its time limit calls it, or exits when it is None."""

    @property
    def requested(self) -> bool:
        return self.event.is_set()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        log.info("received %s: stopping after this trial is recorded", signal.Signals(signum).name)
        self.event.set()
        if self.in_trial:
            raise WorkerStopped(signal.Signals(signum).name)

    def install(self) -> None:
        """Handle SIGTERM and SIGINT in this (main) thread."""
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)


@dataclass
class Retry:
    """Exponential backoff for database calls: 0.5 s doubling up to 30 s, ``attempts`` tries in all."""

    attempts: int = 8
    first_delay: float = 0.5
    max_delay: float = 30.0

    def __call__(self, fn: Callable[..., T], *args: Any, what: str = "database call", **kwargs: Any) -> T:
        delay = self.first_delay
        for attempt in range(1, self.attempts + 1):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if not is_storage_error(exc):
                    raise
                first_line = error_line(exc)
                if attempt == self.attempts:
                    raise StorageUnavailable(
                        f"{what}: the database did not answer after {self.attempts} tries: {first_line}"
                    ) from None
                log.warning(
                    "%s failed (%s); retry %d/%d in %.1f s", what, first_line, attempt, self.attempts - 1, delay
                )
                time.sleep(delay)
                delay = min(delay * 2, self.max_delay)
        raise AssertionError("unreachable")


def error_line(exc: BaseException) -> str:
    """The first line of the driver's message behind ``exc`` (not Optuna's wrapper), password redacted."""
    root = driver_error(exc) or exc
    text = str(root).strip()
    return redact_text(text.splitlines()[0] if text else type(root).__name__)


def requeue(study: optuna.Study, trial_id: int, max_retries: int, stopped: bool) -> None:
    """Queue a failed or ``stopped`` trial again with the same parameters (:func:`storage.retry_trial`)."""
    retry_trial(study, study._storage.get_trial(trial_id), max_retries, stopped=stopped)


def _tell(study: optuna.Study, trial: optuna.Trial, state: TrialState, values: list[float] | None) -> None:
    """Record the outcome; a retry after a commit whose answer was lost finds the trial finished and stops."""
    try:
        if state == TrialState.COMPLETE:
            study.tell(trial, values, skip_if_finished=True)
        else:
            study.tell(trial, state=state, skip_if_finished=True)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass


@dataclass
class Budget:
    """When a worker stops taking trials."""

    n_trials: int | None
    """Finished (COMPLETE or PRUNED) trials the study wants; None for no limit."""
    grid: bool = False
    """Only run queued trials (grid points); never create new ones."""
    max_parallel: int | None = None
    """Running trials of the study at most, across every worker; None for no limit."""
    timeout: float | None = None
    """The study's time budget: no trial starts once this many seconds have passed since the study's first trial
    started (by the start time stored with that trial, so every worker, started whenever, agrees)."""
    max_trials: int | None = None
    """Trials this worker runs at most."""
    deadline: float | None = None
    """``time.monotonic()`` after which this worker starts no new trial (``hpo worker --timeout``)."""
    max_consecutive_failures: int = 10
    """Give up after this many FAIL trials in a row."""


class Worker:
    """Runs trials of one study until the budget (trials or time) is spent, the deadline passes, or it is
    stopped."""

    def __init__(
        self,
        study: optuna.Study,
        objective: Callable[[optuna.Trial], list[float]],
        budget: Budget,
        *,
        max_retries: int,
        retry: Retry,
        stop: StopFlag | None = None,
        on_trial: Callable[[optuna.trial.FrozenTrial], None] | None = None,
        poll: float = 1.0,
        idle_limit: float = 120.0,
        max_seconds: float | None = None,
        kill_grace: float = 10.0,
    ) -> None:
        self.study = study
        self.objective = objective
        self.budget = budget
        self.max_retries = max_retries
        self.retry = retry
        self.stop = stop or StopFlag()
        self.on_trial = on_trial or (lambda trial: None)
        self.poll = poll
        self.idle_limit = idle_limit
        self.max_seconds = max_seconds
        self.kill_grace = kill_grace
        self.ran = 0
        self.failures = 0

    def _count(self, states: tuple[TrialState, ...]) -> int:
        return self.retry(self.study._storage.get_n_trials, self.study._study_id, states, what="counting trials")

    def _next_trial(self) -> int | None:
        """A trial id to run now: a claimed queued trial or a new one; None when there is none to run (budget spent
        or all in flight, the study paused, or ``max_parallel`` of its trials running)."""
        with warnings.catch_warnings():  # fail_stale_trials is marked experimental since Optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry(optuna.storages.fail_stale_trials, self.study, what="checking for stale trials")
        b = self.budget
        return self.retry(
            start_trial,
            self.study._storage,
            self.study._study_id,
            n_trials=b.n_trials,
            max_running=b.max_parallel,
            create=not b.grid,
            timeout=b.timeout,
            what="starting a trial",
        )

    def _timed_out(self) -> bool:
        """Whether the study's time budget (``Budget.timeout``) is spent."""
        if self.budget.timeout is None:
            return False
        starts = self.retry(first_starts, self.study._storage, self.study._study_id, what="reading the study start")
        return timed_out(starts.get(self.study._study_id), self.budget.timeout)

    def _done(self) -> bool:
        b = self.budget
        return (
            self.stop.requested
            or (b.max_trials is not None and self.ran >= b.max_trials)
            or (b.deadline is not None and time.monotonic() >= b.deadline)
        )

    def step(self) -> bool:
        """Start one trial and run it to its end; False when there is none to start now."""
        trial_id = self._next_trial()
        if trial_id is None:
            return False
        self._run_one(trial_id)
        return True

    def run(self) -> int:
        """The loop. Returns the number of trials this worker ran."""
        idle_since = None
        while not self._done():
            if self.step():
                idle_since = None
                continue
            # Nothing to claim or create: finished, unless trials still run elsewhere. Those may end FAIL (a worker
            # crashed) and come back as retries, so wait for them, for a bounded time without progress (but without
            # a limit while they fill the study's max_parallel: this worker waits for a free slot). Once the study's
            # time is up no retry would start either.
            if self._timed_out():
                log.info(
                    "the study's timeout of %g s since its first trial has passed; no new trial starts",
                    self.budget.timeout,
                )
                break
            running = self._count((TrialState.RUNNING,))
            if running == 0 and self._count((TrialState.WAITING,)) == 0:
                break
            if self.budget.max_parallel is not None and running >= self.budget.max_parallel:
                idle_since = None
            else:
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > self.idle_limit:
                    log.warning(
                        "%d trials still RUNNING elsewhere after %.0f s; leaving them", running, self.idle_limit
                    )
                    break
            self.stop.event.wait(self.poll)
        return self.ran

    @contextlib.contextmanager
    def _time_limit(self, trial: optuna.Trial) -> Iterator[None]:
        """Interrupt the trial with :class:`TrialTimeout` after ``max_seconds`` (SIGALRM, in this main thread); if it
        is still running ``kill_grace`` seconds later (hung in a call that no signal interrupts), a watchdog thread
        records the timeout and restarts the process."""
        if self.max_seconds is None:
            yield
            return

        def interrupt(signum: int, frame: FrameType | None) -> None:
            if self.stop.in_trial:  # not once the trial's outcome is being recorded
                raise TrialTimeout(f"past {self.max_seconds:.0f} s")

        def watchdog(ended: threading.Event) -> None:
            if not ended.wait(self.max_seconds + self.kill_grace):
                self._restart_hung(trial)

        previous = signal.signal(signal.SIGALRM, interrupt)
        ended = threading.Event()
        threading.Thread(target=watchdog, args=(ended,), name="trial watchdog", daemon=True).start()
        signal.setitimer(signal.ITIMER_REAL, self.max_seconds)
        try:
            yield
        finally:
            ended.set()
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    def _restart_hung(self, trial: optuna.Trial) -> None:
        """From the watchdog thread: the main thread is stuck in the trial. Record it as a timeout, then replace
        the process (``StopFlag.restart``), or exit it: nothing else ends a call that ignores signals."""
        log.error(
            "trial %d is hung past its %.0f s limit and did not stop %.0f s later; restarting this worker",
            trial.number,
            self.max_seconds,
            self.kill_grace,
        )
        self.retry(trial.set_user_attr, FAIL_REASON, "timeout", what="recording the timeout")
        self.retry(_tell, self.study, trial, TrialState.FAIL, None, what=f"recording trial {trial.number}")
        for handler in logging.getLogger().handlers + log.handlers:
            handler.flush()
        if self.stop.restart is not None:
            self.stop.restart()
        os._exit(3)

    def _run_one(self, trial_id: int) -> None:
        trial = optuna.Trial(self.study, trial_id)
        state, values, requeue_it, storage_exc, stopped = TrialState.FAIL, None, False, None, False
        with get_heartbeat_thread(trial_id, self.study._storage), self._time_limit(trial):
            self.stop.in_trial = True
            try:
                if self.stop.requested:  # the signal came between claiming and starting
                    raise WorkerStopped("stop requested")
                values = self.objective(trial)
                state = TrialState.COMPLETE
            except optuna.TrialPruned:
                state = TrialState.PRUNED
            except TrialTimeout:
                log.warning("trial %d ran past its %.0f s limit; the worker goes on", trial.number, self.max_seconds)
                self.retry(trial.set_user_attr, FAIL_REASON, "timeout", what="recording the timeout")
            except WorkerStopped:
                requeue_it = stopped = True
                self.retry(trial.set_user_attr, FAIL_REASON, "worker stopped", what="recording the stop")
            except Exception as exc:
                if self.stop.requested:  # the stop interrupted a database call, whose driver re-raised it wrapped
                    requeue_it = stopped = True
                    self.retry(trial.set_user_attr, FAIL_REASON, "worker stopped", what="recording the stop")
                elif is_storage_error(exc):
                    storage_exc, requeue_it = exc, True
                else:
                    log.warning("trial %d failed; the worker goes on", trial.number, exc_info=True)
            finally:
                self.stop.in_trial = False
        if storage_exc is not None:
            reason = f"storage error: {error_line(storage_exc)}"[:1000]
            self.retry(trial.set_user_attr, FAIL_REASON, reason, what="recording the storage error")
        self.retry(_tell, self.study, trial, state, values, what=f"recording trial {trial.number}")
        if requeue_it:
            what = f"re-queueing trial {trial.number}"
            self.retry(requeue, self.study, trial_id, self.max_retries, stopped, what=what)
        self.ran += 1
        frozen = self.retry(self.study._storage.get_trial, trial_id, what="reading the trial")
        self.on_trial(frozen)
        self.failures = self.failures + 1 if state == TrialState.FAIL and not requeue_it else 0
        if self.failures >= self.budget.max_consecutive_failures:
            reason = frozen.user_attrs.get(FAIL_REASON, "see the log")
            raise TooManyFailures(f"{self.failures} trials failed in a row; the last: {reason}")
