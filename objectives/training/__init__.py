"""Training: losses (cross-entropy, Hinton KD, per-token KD, layer terms), on-policy batches (GKD), stored teacher logits, the optimiser and
schedule, the training loop, and ``fit`` (the stages of a distillation run).

Imports ``objectives._config``, ``objectives.data``, ``objectives.students`` and ``objectives.evaluation``.
"""

from __future__ import annotations

from objectives._lazy import lazy_exports

_LAZY = {
    "unload_teachers": "._fit",
    "CostHook": "._fit",
    "LogitSource": "._fit",
    "Stage": "._fit",
    "distill_stages": "._fit",
    "fit": "._fit",
    "frozen_teacher": "._fit",
    "RankGroup": "._distributed",
    "current_group": "._distributed",
    "distributed_training": "._distributed",
    "HeadInputs": "._logits",
    "cached_rows": "._logits",
    "lm_head": "._logits",
    "load_logits": "._logits",
    "read_logits": "._logits",
    "teacher_logits": "._logits",
    "LOSSES": "._losses",
    "LayerDistillLoss": "._losses",
    "attention_loss": "._losses",
    "balanced_weights": "._losses",
    "cross_entropy_loss": "._losses",
    "final_normed": "._losses",
    "get_loss": "._losses",
    "hidden_state_loss": "._losses",
    "kd_loss": "._losses",
    "lm_ce_loss": "._losses",
    "lm_kd_loss": "._losses",
    "OnPolicy": "._on_policy",
    "Teachers": "._on_policy",
    "build_optimizer": "._optim",
    "layer_depth": "._optim",
    "param_groups": "._optim",
    "LOG_EVERY": "._train",
    "NonFiniteLoss": "._train",
    "Report": "._train",
    "evaluate": "._train",
    "report_steps": "._train",
    "train": "._train",
}
"""Names whose modules load torch: imported on first use."""

__getattr__ = lazy_exports(__name__, _LAZY)

__all__ = [
    "LOG_EVERY",
    "LOSSES",
    "CostHook",
    "HeadInputs",
    "LayerDistillLoss",
    "LogitSource",
    "NonFiniteLoss",
    "OnPolicy",
    "RankGroup",
    "Report",
    "Stage",
    "Teachers",
    "attention_loss",
    "balanced_weights",
    "build_optimizer",
    "cached_rows",
    "cross_entropy_loss",
    "current_group",
    "distill_stages",
    "distributed_training",
    "evaluate",
    "final_normed",
    "fit",
    "frozen_teacher",
    "get_loss",
    "hidden_state_loss",
    "kd_loss",
    "layer_depth",
    "lm_ce_loss",
    "lm_head",
    "lm_kd_loss",
    "load_logits",
    "param_groups",
    "read_logits",
    "report_steps",
    "teacher_logits",
    "train",
    "unload_teachers",
]
