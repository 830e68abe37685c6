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
from objectives._corpus import CORPORA, Blocks, Corpus, load_corpus, pack
from objectives._data import DATASETS, Encoded, Rows, Task, forget_encoded, load_rows, load_task, open_data
from objectives._decoders import (
    CAUSAL_LMS,
    cut_decoder,
    decoder_layers,
    lm_identity,
    load_causal_lm,
    load_lm_tokenizer,
    resolve_lm,
    scratch_decoder,
)
from objectives._models import (
    MODELS,
    build_student,
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
    "read_logits": "objectives._logits",
    "LMEvaluation": "objectives._metrics",
    "lm_evaluate": "objectives._metrics",
    "generation_costs": "objectives._metrics",
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
    "CAUSAL_LMS",
    "CORPORA",
    "DATASETS",
    "HIGHER_IS_BETTER",
    "METRICS",
    "MODELS",
    "QUALITY_METRICS",
    "TASKS",
    "VALIDATION_METRICS",
    "Blocks",
    "ConfigError",
    "Corpus",
    "CostStore",
    "DataArgs",
    "DistillArgs",
    "Encoded",
    "Importance",
    "LMEvaluation",
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
    "build_student",
    "compress_logits",
    "cost_hardware",
    "cut_decoder",
    "decoder_layers",
    "direction",
    "distill_student",
    "finetune_student",
    "finetune_teacher",
    "forget_encoded",
    "generation_costs",
    "get_task",
    "heldout_metrics",
    "lm_evaluate",
    "lm_identity",
    "load_causal_lm",
    "load_classifier",
    "load_corpus",
    "load_lm_tokenizer",
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
    "pack",
    "per_class",
    "prepare_workload",
    "prune_widths",
    "read_logits",
    "report_steps",
    "resolve_lm",
    "resolve_model",
    "run_synthetic",
    "scratch_decoder",
    "student_layers",
    "teacher_logits",
    "unload_teachers",
    "weights_hash",
]
