"""Measuring a model: quality metrics (accuracy, macro-F1, per-class scores, perplexity, exact match and ROUGE-L of
generated completions), costs (latency, throughput,
size, FLOPs, peak memory, generation speed) and the store that measures each cost once per architecture.

Imports ``objectives._config``, ``objectives.data`` and ``objectives.students``.
"""

from __future__ import annotations

from objectives._lazy import lazy_exports
from objectives.evaluation._scores import accuracy, macro_f1, never_predicted, per_class

_LAZY = {
    "CompletionEvaluation": "._generation",
    "completion_evaluate": "._generation",
    "exact_match": "._generation",
    "completions": "._generation",
    "rouge_l": "._generation",
    "LMEvaluation": "._metrics",
    "cost_hardware": "._costs",
    "COST_THREADS": "._costs",
    "CostStore": "._costs",
    "stored_cost": "._costs",
    "PeakMemory": "._metrics",
    "decode_round": "._metrics",
    "decode_steps": "._metrics",
    "forward_round": "._metrics",
    "generation_costs": "._metrics",
    "interleaved_speedup": "._metrics",
    "paired_speedup": "._metrics",
    "gflops": "._metrics",
    "latency_ms": "._metrics",
    "lm_evaluate": "._metrics",
    "process_memory": "._metrics",
    "report_evaluation": "._metrics",
    "size_mb": "._metrics",
    "speedup_clock": "._metrics",
    "throughput": "._metrics",
    "torch_threads": "._metrics",
}
"""Names whose modules load torch: imported on first use."""

__getattr__ = lazy_exports(__name__, _LAZY)

__all__ = [
    "COST_THREADS",
    "CompletionEvaluation",
    "CostStore",
    "LMEvaluation",
    "PeakMemory",
    "accuracy",
    "completion_evaluate",
    "completions",
    "cost_hardware",
    "decode_round",
    "decode_steps",
    "exact_match",
    "forward_round",
    "generation_costs",
    "gflops",
    "interleaved_speedup",
    "latency_ms",
    "lm_evaluate",
    "macro_f1",
    "never_predicted",
    "paired_speedup",
    "per_class",
    "process_memory",
    "report_evaluation",
    "rouge_l",
    "size_mb",
    "speedup_clock",
    "stored_cost",
    "throughput",
    "torch_threads",
]
