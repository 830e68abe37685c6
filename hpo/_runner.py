"""The trial runner: turns an Optuna trial into a training run and records what happened.

Each trial records every metric as a user attribute, plus its seed, host and process; a failure records
``fail_reason`` (``nan``, ``oom`` or the exception) and the worker goes on with the next trial.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch

from hpo._config import Config, apply_params
from hpo._search_space import suggest_params
from objectives import METRICS, NonFiniteLoss, Workload, run_distill, run_finetune

log = logging.getLogger("hpo")

FAIL_REASON = "fail_reason"


def trial_seed(study_seed: int, trial_number: int) -> int:
    """A 31-bit seed derived from the study seed and the trial number (stable across machines and runs)."""
    digest = hashlib.sha256(f"{study_seed}:{trial_number}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError | MemoryError) or "out of memory" in str(exc).lower()


class TrialRunner:
    """The objective passed to ``study.optimize``: one call trains and scores one student."""

    def __init__(self, config: Config, work: Workload, teacher_dir: Path | None) -> None:
        self.config = config
        self.work = work
        self.teacher_dir = teacher_dir

    def _report(self, trial: optuna.Trial) -> Callable[[int, float], None]:
        multi = self.config.is_multi_objective

        def report(step: int, value: float) -> None:
            if multi:  # Optuna rejects trial.report on multi-objective studies; keep the curve anyway
                trial.set_user_attr(f"val_accuracy_step_{step}", value)
                return
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step} with validation accuracy {value:.4f}")

        return report

    def train(self, config: Config, seed: int, report: Callable[[int, float], None] | None) -> dict[str, float]:
        """Run the configured objective with ``config`` (a trial's parameters already applied)."""
        if config.objective == "distill":
            assert self.teacher_dir is not None
            return run_distill(self.work, self.teacher_dir, config.student, config.train, config.distill, seed, report)
        return run_finetune(self.work, config.teacher.model, config.student, config.train, seed, report)

    def __call__(self, trial: optuna.Trial) -> list[float]:
        params = suggest_params(trial, self.config.search_space)
        config = apply_params(self.config, params)
        seed = trial_seed(self.config.seed, trial.number)
        for key, value in {
            "seed": seed,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "device": str(self.work.device),
        }.items():
            trial.set_user_attr(key, value)
        try:
            metrics = self.train(config, seed, self._report(trial))
        except optuna.TrialPruned:
            raise
        except NonFiniteLoss as exc:
            trial.set_user_attr(FAIL_REASON, "nan")
            raise optuna.TrialPruned(str(exc)) from None
        except Exception as exc:
            reason = "oom" if _is_oom(exc) else f"{type(exc).__name__}: {exc}"
            trial.set_user_attr(FAIL_REASON, reason[:1000])
            raise
        finally:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        for key in (*METRICS, "val_loss", "steps"):
            trial.set_user_attr(key, metrics[key])
        return [metrics[m] for m in self.config.metric_names]


def budget_left(study: optuna.Study, n_trials: int | None) -> int | None:
    """Trials still to run for a study budget of ``n_trials`` finished (COMPLETE or PRUNED) trials."""
    if n_trials is None:
        return None
    done = len(
        study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
    )
    return max(0, n_trials - done)


def describe(trial: optuna.trial.FrozenTrial, metric_names: list[str]) -> str:
    """One progress line for a finished trial."""
    attrs = trial.user_attrs
    shown = ", ".join(f"{m}={attrs[m]:.4g}" for m in metric_names if m in attrs)
    if not shown and trial.intermediate_values:
        step = max(trial.intermediate_values)
        shown = f"val accuracy {trial.intermediate_values[step]:.4g} at step {step}"
    params = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() if trial.datetime_complete else 0.0
    reason = f" ({attrs[FAIL_REASON]})" if FAIL_REASON in attrs else ""
    return f"trial {trial.number} {trial.state.name}{reason} in {seconds:.0f}s: {shown or '-'} | {params}"


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def run_trials(
    study: optuna.Study,
    runner: TrialRunner,
    n_trials: int | None,
    timeout: float | None,
    on_trial: Callable[[optuna.trial.FrozenTrial], None],
) -> None:
    """Run trials in this process until the study budget ``n_trials`` is spent or ``timeout`` passes."""
    left = budget_left(study, n_trials)
    if left == 0:
        return
    callbacks = [lambda study, trial: on_trial(trial)]
    if n_trials is not None:
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        callbacks.append(optuna.study.MaxTrialsCallback(n_trials, states=states))
    start = time.monotonic()
    study.optimize(
        runner, n_trials=left, timeout=timeout, catch=(Exception,), callbacks=callbacks, gc_after_trial=False
    )
    log.debug("trials ran for %.0f s", time.monotonic() - start)
