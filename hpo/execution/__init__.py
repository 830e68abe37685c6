"""Running trials: ``hpo run`` and ``hpo create``, the trial runner, the worker loop of one study, pool workers that
serve every study, worker slots (one process per GPU), the teacher and its logit cache, and cost metrics kept in the
study.

Imports ``hpo.study``, ``hpo.views`` (progress bars, results tables), ``objectives`` and ``storage``.
"""

from __future__ import annotations

from hpo.execution._pool import Pool, rank, serve
from hpo.execution._slots import (
    Slot,
    device_of,
    launch,
    limit_memory,
    parse_gpus,
    plan_slots,
    start_memory,
    usable_cores,
)
from hpo.execution._worker import Budget, Retry, StopFlag, StorageUnavailable, TooManyFailures, Worker
from objectives import lazy_exports

_LAZY = {
    "create": "._run",
    "node_slots": "._run",
    "prepare_runner": "._run",
    "resolve_device": "._run",
    "run": "._run",
    "run_slot": "._run",
    "study_devices": "._run",
    "TrialRunner": "._runner",
    "trial_seed": "._runner",
    "warn_never_predicted": "._runner",
    "LogitCache": "._teacher",
    "ensure_teacher": "._teacher",
}
"""Names whose modules load torch: imported on first use."""

__getattr__ = lazy_exports(__name__, _LAZY)

__all__ = [
    "Budget",
    "LogitCache",
    "Pool",
    "Retry",
    "Slot",
    "StopFlag",
    "StorageUnavailable",
    "TooManyFailures",
    "TrialRunner",
    "Worker",
    "create",
    "device_of",
    "ensure_teacher",
    "launch",
    "limit_memory",
    "node_slots",
    "parse_gpus",
    "plan_slots",
    "prepare_runner",
    "rank",
    "resolve_device",
    "run",
    "run_slot",
    "serve",
    "start_memory",
    "study_devices",
    "trial_seed",
    "usable_cores",
    "warn_never_predicted",
]
