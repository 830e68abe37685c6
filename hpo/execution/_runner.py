"""The trial runner: turns an Optuna trial into a training run and records what happened.

Each trial records every metric as a user attribute, plus its seed, host, GPU and process; a failure records
``fail_reason`` (``nan``, ``oom`` or the exception) and the worker goes on with the next trial.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import socket
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch

from hpo.execution._costs import StudyCosts, gpu_lock
from hpo.execution._distributed import train_distributed
from hpo.study import (
    CURVE_PREFIX,
    TIMING_ATTRS,
    TRAINING_ATTRS,
    Config,
    ParetoRungPruner,
    apply_params,
    make_pruner,
    suggest_params,
)
from hpo.views import format_params
from objectives import (
    CostStore,
    LogitSource,
    NonFiniteLoss,
    Report,
    current_group,
    never_predicted,
    run_synthetic,
)
from storage import FAIL_REASON, is_storage_error, redact_text

log = logging.getLogger("hpo")

PER_CLASS_ATTR = "per_class"
"""User attribute of a finished trial (and key of the teacher's metrics): validation precision, recall, F1, support
and predicted count of each class, by class name."""


def warn_never_predicted(what: str, scores: dict[str, dict[str, float]]) -> list[str]:
    """Log a warning naming the classes ``what`` (a model) never predicts on validation; returns them."""
    missing = never_predicted(scores)
    if missing:
        shown = ", ".join(f"{name!r} ({scores[name]['support']:.0f} rows)" for name in missing)
        log.warning(
            "%s never predicts class %s on validation: accuracy hides it, read f1 (macro) and the per-class "
            "scores; train.class_weights: balanced may help",
            what,
            shown,
        )
    return missing


def trial_seed(study_seed: int, trial_number: int) -> int:
    """A 31-bit seed derived from the study seed and the trial number (stable across machines and runs)."""
    digest = hashlib.sha256(f"{study_seed}:{trial_number}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


OOM_MESSAGES = ("out of memory", "can't allocate memory", "_alloc_failed", "_allocation_failed")
"""Lower-cased parts of an error message that mean memory ran out: "CUDA error: out of memory", a refused CPU
allocation, the libraries' ``CUBLAS_STATUS_ALLOC_FAILED`` (a cuBLAS handle or workspace; cuSOLVER and cuSPARSE alike),
``CUDNN_STATUS_ALLOC_FAILED`` and cuDNN 9's ``CUDNN_STATUS_INTERNAL_ERROR_{HOST,DEVICE}_ALLOCATION_FAILED``."""


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory error (CUDA OOM, MemoryError, or a message of :data:`OOM_MESSAGES`)."""
    message = str(exc).lower()
    return isinstance(exc, torch.OutOfMemoryError | MemoryError) or any(part in message for part in OOM_MESSAGES)


def drop_frames(exc: BaseException | None) -> None:
    """Clear the local variables of the finished frames ``exc`` and the exceptions it chains to passed through (its
    traceback keeps the lines, so it is still logged whole). An exception in flight holds every frame it left, and
    with them a trial's model, optimiser and activations: memory can only be freed once they are dropped."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)  # skips the frames still running (this runner's)
        exc = exc.__cause__ or exc.__context__


class TrialRunner:
    """The objective of a study: one call trains and scores one student.

    ``work`` (the task's tokenised data) is needed by the real objectives, ``teacher_dir`` by ``distill``; ``attrs`` are
    recorded on every trial (e.g. the GPU of the worker slot).
    """

    def __init__(
        self,
        config: Config,
        work: Any = None,
        teacher_dir: Path | None = None,
        attrs: dict[str, Any] | None = None,
        logits: LogitSource | None = None,
    ) -> None:
        self.config = config
        self.work = work
        self.teacher_dir = teacher_dir
        self.logits = logits
        self.attrs = {"host": socket.gethostname(), "pid": os.getpid(), **(attrs or {})}
        pruner = make_pruner(config.pruner.name, config.pruner.options, len(config.directions))
        self.pareto = pruner if isinstance(pruner, ParetoRungPruner) else None
        self.constraints = config.parsed_constraints()
        self._study_costs: StudyCosts | None = None

    def _report(self, trial: optuna.Trial, costs: StudyCosts) -> Report:
        """The training loop's report callback: records the pruning metric's curve and asks the pruner.

        A single-objective study reports the value to Optuna, negated when the metric's direction differs from the
        study's (Optuna's pruners rank intermediate values in the study's direction); the Pareto-rung pruner gets
        it signed so that higher is better. A run's final validation is recorded but never pruned: a trial that
        trained its whole budget is COMPLETE."""
        metric, direction = self.config.pruning
        multi = self.config.is_multi_objective
        study_direction = "maximize" if multi else next(iter(self.config.directions.values()))
        sign = 1.0 if direction == study_direction else -1.0
        better = 1.0 if direction == "maximize" else -1.0

        def report(step: int, scores: dict[str, float], final: bool) -> None:
            costs.let_in()  # a cost measurement waiting for this GPU runs now
            value = scores[metric]
            if multi:  # Optuna rejects trial.report on multi-objective studies: keep the curve ourselves
                trial.set_user_attr(f"{CURVE_PREFIX}{step}", value)
                if final or self.pareto is None:
                    return
                if self.pareto.should_prune(trial.study, trial, step, better * value, self.config.directions):
                    raise optuna.TrialPruned(f"dominated at step {step} (validation {metric} {value:.4f})")
                return
            trial.report(sign * value, step)
            if not final and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step} with validation {metric} {value:.4f}")

        return report

    def _record(self, trial: optuna.Trial, metrics: dict[str, float]) -> None:
        """Store ``metrics`` as user attributes and set every constraint they decide (each only once)."""
        for key, value in metrics.items():
            trial.set_user_attr(key, value)
        for constraint in self.constraints:
            if constraint.metric in metrics and constraint.metric not in self._constrained:
                trial.set_constraint(constraint.metric, constraint.violation(metrics[constraint.metric]))
                self._constrained.add(constraint.metric)

    def train(
        self,
        config: Config,
        params: dict[str, Any],
        seed: int,
        trial_number: int,
        report: Report | None = None,
        on_cost: Callable[[dict[str, float]], None] | None = None,
        costs: CostStore | None = None,
    ) -> dict[str, float]:
        """Run the configured objective with ``config`` (the trial's ``params`` already applied); cost metrics are
        kept in ``costs`` (by default this process's own store). A trial on several devices (``train.devices``)
        runs with this process as rank 0 (``hpo.execution._distributed``)."""
        if config.train.devices > 1 and current_group() is None:
            return train_distributed(self, config, params, seed, trial_number, report, on_cost, costs)
        if config.objective == "synthetic":
            space = config.search_space
            normalised = {name: space[name].normalise(value) for name, value in params.items()}
            return run_synthetic(normalised, config.synthetic, trial_number, seed, report, on_cost)
        assert self.work is not None
        task = config.task_spec.implementation()
        if config.objective == "distill":
            assert self.teacher_dir is not None
            logits = self.logits if self._cached(config) else None
            args = (config.student, config.train, config.distill, seed, report, on_cost, logits)
            return task.distill_student(self.work, self.teacher_dir, *args, costs=costs)[1]
        args = (config.student, config.train, seed, report, on_cost)
        return task.finetune_student(self.work, config.teacher.model, *args, costs=costs)[1]

    def _cached(self, config: Config) -> bool:
        """Whether a distillation trial reads the teacher's cached logits: the cache is on and there is one, and no
        layer term (``distill.hidden_weight``, ``attention_weight``) needs the live teacher's hidden states."""
        return (
            config.distill.cache_teacher_logits and not config.distill.needs_teacher_states and self.logits is not None
        )

    def _costs(self, study: optuna.Study) -> StudyCosts:
        """The study's shared cost store (one per runner: a runner serves one study), with the lock of the GPU the
        trials run on (the synthetic objective touches no device)."""
        if self._study_costs is None:
            real = self.config.objective != "synthetic"
            self._study_costs = StudyCosts(study, gpu_lock(self.attrs.get("device", "cpu")) if real else None)
        return self._study_costs

    def __call__(self, trial: optuna.Trial) -> list[float]:
        self._constrained: set[str] = set()  # constraints this trial has set (Optuna keeps the first value)
        params = suggest_params(trial, self.config.search_space)
        seed = trial_seed(self.config.seed, trial.number)
        trial.set_user_attr("seed", seed)
        for key, value in self.attrs.items():
            trial.set_user_attr(key, value)
        costs = self._costs(trial.study)

        def on_cost(cost: dict[str, float]) -> None:
            self._record(trial, cost)
            costs.training()  # from here the trial trains, beside the other processes on its GPU

        try:
            config = apply_params(self.config, params)
            if config.objective == "distill":  # which teacher path the trial used (a searched weight may change it)
                trial.set_user_attr("teacher_logits", "cache" if self._cached(config) else "live")
            metrics = self.train(
                config,
                params,
                seed,
                trial.number,
                self._report(trial, costs),
                on_cost,
                costs,
            )
        except optuna.TrialPruned:
            raise
        except NonFiniteLoss as exc:
            trial.set_user_attr(FAIL_REASON, "nan")
            raise optuna.TrialPruned(str(exc)) from None
        except Exception as exc:
            if is_storage_error(exc):
                raise  # the database is away: nothing can be recorded now; the worker retries
            reason = "oom" if is_oom(exc) else redact_text(f"{type(exc).__name__}: {exc}")[:1000]
            trial.set_user_attr(FAIL_REASON, reason)
            raise
        finally:
            costs.trained()
            drop_frames(sys.exc_info()[1])  # a failed or pruned trial's model is held by the exception's frames
            gc.collect()  # free the trial's model and optimiser before the next one
            # What survives is long-lived (libraries, the study, a teacher): frozen, later collections skip it, so
            # this one costs what the trial allocated, not the ~0.25 s a full pass over torch and transformers takes.
            gc.freeze()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        untimed = {"speedup"} if self.config.teacher.strategy == "fsdp" else set()  # no one device holds the teacher
        kept = {
            key: metrics[key] for key in (*self.config.task_spec.metrics, "val_loss", "steps") if key not in untimed
        }
        extra = (*TIMING_ATTRS, *TRAINING_ATTRS)
        self._record(trial, {**kept, **{key: metrics[key] for key in extra if key in metrics}})
        if PER_CLASS_ATTR in metrics:  # the real objectives (the synthetic one has no classes)
            trial.set_user_attr(PER_CLASS_ATTR, metrics[PER_CLASS_ATTR])
            warn_never_predicted(f"trial {trial.number}", metrics[PER_CLASS_ATTR])
        if self.constraints:
            trial.set_user_attr("feasible", all(c.violation(metrics[c.metric]) <= 0 for c in self.constraints))
        return [metrics[m] for m in self.config.metric_names]


def describe(trial: optuna.trial.FrozenTrial, metric_names: list[str]) -> str:
    """One progress line for a finished trial."""
    attrs = trial.user_attrs
    shown = ", ".join(f"{m}={attrs[m]:.4g}" for m in metric_names if m in attrs)
    if not shown and trial.intermediate_values:
        step = max(trial.intermediate_values)
        shown = f"validation score {trial.intermediate_values[step]:.4g} at step {step}"
    params = format_params(trial.params)
    seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() if trial.datetime_complete else 0.0
    reason = f" ({attrs[FAIL_REASON]})" if FAIL_REASON in attrs else ""
    return f"trial {trial.number} {trial.state.name}{reason} in {seconds:.0f}s: {shown or '-'} | {params}"
