"""Tasks: the task spec and registry (``TASKS``: metrics, directions, defaults, without torch) and one module per task
(classification, causal LM, synthetic) that says what a trial of that task does.

Imports every other room of ``objectives``; nothing imports a task module except through
``TaskSpec.implementation()``.
"""

from __future__ import annotations

from objectives._lazy import lazy_exports
from objectives.tasks._task import (
    ALL_METRICS,
    ARCHITECTURE_COSTS,
    ARCHITECTURE_PARAMS,
    HIGHER_IS_BETTER,
    METRICS,
    QUALITY_METRICS,
    TASKS,
    VALIDATION_METRICS,
    TaskSpec,
    direction,
    get_task,
)

__getattr__ = lazy_exports(__name__, {"run_synthetic": "._synthetic"})
"""The synthetic task loads torch: imported on first use."""

__all__ = [
    "ALL_METRICS",
    "ARCHITECTURE_COSTS",
    "ARCHITECTURE_PARAMS",
    "HIGHER_IS_BETTER",
    "METRICS",
    "QUALITY_METRICS",
    "TASKS",
    "VALIDATION_METRICS",
    "TaskSpec",
    "direction",
    "get_task",
    "run_synthetic",
]
