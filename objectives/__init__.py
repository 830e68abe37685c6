"""What a trial does: data, models, losses, the training loop and metrics. Never imports ``hpo``.

Config classes and registries import without torch; the training entry points load torch on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from objectives._config import (
    ConfigError,
    DataArgs,
    DistillArgs,
    StudentArgs,
    SyntheticArgs,
    TeacherArgs,
    TrainArgs,
)
from objectives._data import DATASETS, Encoded, Rows, Task, forget_encoded, load_rows, load_task, open_data
from objectives._models import (
    MODELS,
    build_student,
    kept_layers,
    load_classifier,
    model_identity,
    name_labels,
    resolve_model,
    student_layers,
    weights_hash,
)
from objectives._task import (
    ALL_METRICS,
    HIGHER_IS_BETTER,
    METRICS,
    QUALITY_METRICS,
    TASKS,
    VALIDATION_METRICS,
    TaskSpec,
    direction,
    get_task,
)

_LAZY = {
    "CostStore": "objectives._costs",
    "Workload": "objectives._classification",
    "finetune_teacher": "objectives._classification",
    "measure_cost": "objectives._classification",
    "prepare_workload": "objectives._classification",
    "student_workload": "objectives._classification",
    "LayerDistillLoss": "objectives._losses",
    "attention_loss": "objectives._losses",
    "hidden_state_loss": "objectives._losses",
    "NonFiniteLoss": "objectives._train",
    "Report": "objectives._train",
    "report_steps": "objectives._train",
    "run_synthetic": "objectives._synthetic",
    "distill_student": "objectives._classification",
    "finetune_student": "objectives._classification",
    "load_teacher": "objectives._classification",
    "unload_teachers": "objectives._fit",
    "heldout_metrics": "objectives._classification",
    "never_predicted": "objectives._metrics",
    "per_class": "objectives._metrics",
    "cost_hardware": "objectives._costs",
    "teacher_logits": "objectives._train",
    "LogitSource": "objectives._fit",
    "TopKLogits": "objectives._logits",
    "compress_logits": "objectives._logits",
    "load_logits": "objectives._logits",
    "Importance": "objectives._pruning",
    "measure_importance": "objectives._pruning",
    "prune_widths": "objectives._pruning",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'objectives' has no attribute {name!r}")


__all__ = [
    "ALL_METRICS",
    "DATASETS",
    "HIGHER_IS_BETTER",
    "METRICS",
    "MODELS",
    "QUALITY_METRICS",
    "TASKS",
    "VALIDATION_METRICS",
    "ConfigError",
    "CostStore",
    "DataArgs",
    "DistillArgs",
    "Encoded",
    "Importance",
    "LayerDistillLoss",
    "LogitSource",
    "NonFiniteLoss",
    "Report",
    "Rows",
    "StudentArgs",
    "SyntheticArgs",
    "Task",
    "TaskSpec",
    "TeacherArgs",
    "TopKLogits",
    "TrainArgs",
    "Workload",
    "attention_loss",
    "build_student",
    "compress_logits",
    "cost_hardware",
    "direction",
    "distill_student",
    "finetune_student",
    "finetune_teacher",
    "forget_encoded",
    "get_task",
    "heldout_metrics",
    "hidden_state_loss",
    "kept_layers",
    "load_classifier",
    "load_logits",
    "load_rows",
    "load_task",
    "load_teacher",
    "measure_cost",
    "measure_importance",
    "model_identity",
    "name_labels",
    "never_predicted",
    "open_data",
    "per_class",
    "prepare_workload",
    "prune_widths",
    "report_steps",
    "resolve_model",
    "run_synthetic",
    "student_layers",
    "student_workload",
    "teacher_logits",
    "unload_teachers",
    "weights_hash",
]
