"""Tasks: what kind of model a study shrinks (a sentence classifier, a causal language model).

A :class:`TaskSpec` names a task's metrics and its defaults without importing torch (configs validate on it); its
:meth:`TaskSpec.implementation` is the module that does the work, with the functions of :class:`TaskImplementation`,
so the runner, worker, export, full training and report never branch on the task. Adding a task is one
implementation module and one entry in :data:`TASKS`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from objectives._config import ConfigError


class TaskImplementation(Protocol):
    """The functions every task module provides (``objectives.tasks._classification``, ``objectives.tasks._causal_lm``).

    ``work`` is the task's workload: its data split, tokenised once per process, with ``train`` and ``validation``
    (counted in ``unit``), ``fingerprint`` (content and splits), ``n_test`` (size of the held-out split, in the
    spec's ``unit``) and the ``device``."""

    def model_identity(self, name: str) -> str:
        """Which weights the base model ``name`` is (a hash of a directory's weight files, or a hub revision)."""
        ...

    def prepare_workload(self, data: Any, model: str, device: Any = "cpu") -> Any:
        """Load, split and tokenise the data with ``model``'s tokenizer (cached per process)."""
        ...

    def finetune_teacher(self, work: Any, args: Any, seed: int, out_dir: Path) -> dict[str, Any]:
        """Adapt the base model to the task, save it (and its tokenizer) to ``out_dir``, return its validation
        metrics."""
        ...

    def load_teacher(self, path: Path, work: Any) -> Any:
        """The frozen teacher saved at ``path``, loaded once per process and device."""
        ...

    def finetune_student(self, work: Any, base_model: str, *args: Any, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        """The student trained from the base model (or from ``init``, a model given) on the task's own targets:
        (model, metrics)."""
        ...

    def initial_student(self, work: Any, teacher_dir: Path, student: Any, args: Any, seed: int) -> Any:
        """The student ``distill_student`` starts from with ``seed``, before any training."""
        ...

    def distill_student(self, work: Any, teacher_dir: Path, *args: Any, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        """The student distilled from the teacher saved at ``teacher_dir`` (starting from ``init``, a model of
        ``initial_student``, where given): (model, metrics)."""
        ...

    def evaluation_rows(self, data: Any, model: str) -> dict[str, int]:
        """Rows (blocks) one evaluation pass reads of the ``validation`` and ``test`` splits, after the caps of
        ``data``, without loading a model (``hpo export`` estimates a full training's time from them)."""
        ...

    def heldout_metrics(self, model: Any, work: Any, quantize: str = "none") -> dict[str, Any]:
        """Quality on the held-out test split and cost, for full-training reports (never called by a trial); a
        classifier adds ``per_class`` scores, a language model ``samples`` (greedy continuations of fixed
        prompts); of a copy quantized with ``quantize`` (``student.quantize``) where it is not ``none``."""
        ...

    def save_model(self, model: Any, work: Any, out: Path, adapter_only: bool = False) -> None:
        """Write ``model`` and the tokenizer as a Hugging Face directory loadable by the task's Auto class (a LoRA
        adapter merged into the weights); ``adapter_only``: the weights the adapter applies to, and the adapter alone
        in ``out/adapter``."""
        ...


@dataclass(frozen=True)
class TaskSpec:
    """A task's metrics and defaults; :meth:`implementation` does the work."""

    name: str
    """The value of ``task:`` in a config."""
    metrics: tuple[str, ...]
    """Metrics every finished trial records as user attributes (and the teacher baseline too); objectives,
    constraints and ``hpo export --pick`` name these."""
    validation_metrics: tuple[str, ...]
    """Scores reported at every validation of a training run (what pruners see); the first is the task's quality
    metric, the default objective and pruning metric."""
    card_metrics: tuple[str, ...]
    """Columns of the model card's and the report's benchmark tables."""
    module: str
    """The implementation module, imported on first use."""
    pipeline_tag: str = "text-classification"
    """The Hugging Face pipeline a trained model serves (model card metadata)."""
    cost_note: str = ""
    """What the cost metrics measure, in a sentence for the model card and the report."""
    unit: str = "rows"
    """What a held-out split is counted in (texts of a classifier, tokens of a language model)."""
    per_class: bool = False
    """Whether trials and the teacher record scores per class (``per_class``), which the report tables."""
    defaults: dict[str, Any] = field(default_factory=dict)
    """Config values this task changes from the classification defaults, e.g. its default data and teacher."""
    ignores: dict[str, str] = field(default_factory=dict)
    """Config keys (dotted) the task has no use for, each with why and the fix: a study or job of the task refuses
    them set to another value than their default, or searched, and ``hpo export`` leaves them out."""
    formats: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per ``data.format`` other than ``text``, the fields (metrics, ignores, ...) that format replaces
    (:meth:`for_format`); a format the task does not list keeps the task as it is."""

    @property
    def quality(self) -> str:
        return self.validation_metrics[0]

    def for_format(self, name: str) -> TaskSpec:
        """The task with the fields of its ``data.format`` ``name`` (:attr:`formats`) replaced."""
        return replace(self, **self.formats[name]) if name in self.formats else self

    def unknown_metric(self, metric: str, valid: tuple[str, ...]) -> str:
        """Why ``metric`` is not a metric of this task as its data format makes it, in one line with the fix."""
        scored = [name for name, fields in self.formats.items() if metric in fields.get("metrics", ())]
        if scored and metric not in self.metrics:
            return f"is scored only with data.format {' or '.join(scored)}; set data.format or remove it"
        return f"unknown metric; valid: {', '.join(valid)}"

    def implementation(self) -> TaskImplementation:
        return importlib.import_module(self.module)  # type: ignore[return-value]


_COSTS = (
    "latency_ms",
    "latency_ms_p95",
    "speedup",
    "throughput",
    "params",
    "size_mb",
    "train_seconds",
    "peak_memory_mb",
    "gflops",
)

_NO_CLASSES = "a language model predicts the next token and has no labels or classes; remove it"

_LM_DATA = (
    "data.format",
    "data.prompt_column",
    "data.completion_column",
    "data.messages_column",
    "data.max_new_tokens",
    "data.generation_rows",
)
"""Data keys of a causal LM's instruction formats."""

_EXAMPLE_KEYS = {
    key: "it reads prompt-completion or chat data; set data.format or remove it"
    for key in (*_LM_DATA[1:], "distill.on_policy", "distill.gen_temperature")
}
"""The instruction formats' keys, which ``data.format: text`` has no use for."""

_GENERATION = ("exact_match", "rouge_l")
"""Scores of greedy completions of held-out prompts against their references (prompt-completion and chat data)."""

_LM_QUALITY = ("perplexity", "token_accuracy")


def _example_format(name: str) -> dict[str, Any]:
    """The causal-LM task's fields for ``data.format: name`` (prompt-completion or chat): completion perplexity and
    token accuracy plus :data:`_GENERATION`; examples are padded and cut at ``data.max_length``, not packed."""
    unused = ("data.prompt_column", "data.completion_column") if name == "chat" else ("data.messages_column",)
    text_only = "it adds raw text, which data.format text packs; examples distil on their own completions, remove it"
    return {
        "metrics": (*_LM_QUALITY, *_GENERATION, *_COSTS[:3], "prefill_ms", *_COSTS[3:]),
        "validation_metrics": (*_LM_QUALITY, *_GENERATION, "val_loss"),
        "card_metrics": (*_LM_QUALITY, *_GENERATION, "latency_ms", "prefill_ms", "params", "size_mb"),
        "unit": "examples",
        "ignores": {
            **{key: f"it is not read with data.format {name}; remove it" for key in unused},
            "data.label_column": _NO_CLASSES,
            "data.label_names": _NO_CLASSES,
            "data.block_size": "its examples are padded one per sequence, not packed; cut them with data.max_length",
            "train.class_weights": _NO_CLASSES,
            "teacher.train.class_weights": _NO_CLASSES,
            "distill.transfer_files": text_only,
            "distill.transfer_only": text_only,
        },
    }


TASKS: dict[str, TaskSpec] = {
    "classification": TaskSpec(
        name="classification",
        metrics=("accuracy", "f1", *_COSTS),
        validation_metrics=("accuracy", "f1", "val_loss"),
        card_metrics=("accuracy", "f1", "latency_ms", "latency_ms_p95", "throughput", "params", "size_mb"),
        module="objectives.tasks._classification",
        per_class=True,
        ignores={
            **{
                key: "it is for task: causal-lm; a classifier reads texts and labels, remove it"
                for key in (*_LM_DATA, "distill.on_policy", "distill.gen_temperature")
            },
            "data.block_size": "a classifier truncates each text at data.max_length; set that instead",
            "data.max_eval_rows": "it caps a causal LM's evaluation blocks; cap a classifier's with data.max_val_rows",
        },
        cost_note=(
            "Latency: batch 1 at the validation set's mean length, after warm-up, median (p50) and 95th percentile "
            "over repeats until the median is stable; speedup: the teacher's latency over the student's, timed in "
            "interleaved rounds in one process; throughput: examples/s at batch 32."
        ),
    ),
    "causal-lm": TaskSpec(
        name="causal-lm",
        metrics=("perplexity", "token_accuracy", *_COSTS[:3], "prefill_ms", *_COSTS[3:]),
        validation_metrics=("perplexity", "token_accuracy", "val_loss"),
        card_metrics=("perplexity", "token_accuracy", "latency_ms", "prefill_ms", "throughput", "params", "size_mb"),
        module="objectives.tasks._causal_lm",
        pipeline_tag="text-generation",
        cost_note=(
            "Latency: ms per generated token at batch 1 with the KV cache after a fixed prompt, median (p50) and 95th "
            "percentile; speedup: the teacher's per-token latency over the student's, timed in interleaved rounds in one "
            "process; prefill: one forward pass over a 128-token prompt; throughput: generated tokens/s at "
            "batch 8 (greedy)."
        ),
        unit="documents",
        defaults={
            "directions": {"perplexity": "minimize"},
            "data": {"name": "wikitext-2"},
            # a batch's (B, L, V) logits exist at once at validation: 128 blocks of a 49k vocabulary would be GBs
            "teacher": {"model": "smollm2-135m", "train": {"max_steps": 0, "eval_batch_size": 16}},
            "train": {"eval_batch_size": 16},
        },
        ignores={
            **_EXAMPLE_KEYS,
            "data.label_column": _NO_CLASSES,
            "data.label_names": _NO_CLASSES,
            "data.max_length": "its text is packed into data.block_size-token blocks, not truncated; set data.block_size",
            "train.class_weights": _NO_CLASSES,
            "train.group_by_length": "its packed blocks all have one length; remove it",
            "teacher.train.class_weights": _NO_CLASSES,
            "teacher.train.group_by_length": "its packed blocks all have one length; remove it",
        },
        formats={fmt: _example_format(fmt) for fmt in ("prompt-completion", "chat")},
    ),
}
"""Tasks by name; ``classification`` is the default of every config."""

HIGHER_IS_BETTER = frozenset({"accuracy", "f1", "token_accuracy", *_GENERATION, "throughput", "speedup"})
"""Metrics where more is better; for every other metric of any task less is better (``perplexity``, ``val_loss``,
the costs)."""

ARCHITECTURE_COSTS = frozenset(
    {"latency_ms", "latency_ms_p95", "speedup", "prefill_ms", "throughput", "params", "size_mb", "gflops"}
)
"""Costs fixed by the student's architecture alone (measured once per architecture and hardware): no training
setting moves them; ``train_seconds`` and ``peak_memory_mb`` also depend on the batch size and steps."""

ARCHITECTURE_PARAMS = frozenset(
    {
        "student.model",
        "student.num_layers",
        "student.layers",
        "student.init",
        "student.hidden_size",
        "student.intermediate_size",
        "student.num_attention_heads",
        "student.hidden_ratio",
        "student.ffn_ratio",
        "student.heads_ratio",
        "student.quantize",
    }
)
"""Config keys that change a student's architecture (depth, widths, family), the only searched parameters that
can move an :data:`ARCHITECTURE_COSTS` metric; ``student.layer_selection`` and ``calibration_size`` choose which
layers and units are kept, not how many."""

_SPECS = [spec.for_format(name) for spec in TASKS.values() for name in ("text", *spec.formats)]
"""Every task as each of its data formats makes it."""

ALL_METRICS = tuple(dict.fromkeys(m for spec in _SPECS for m in spec.metrics))
"""Every metric of every task and data format, in order of first appearance."""

QUALITY_METRICS = frozenset(m for spec in _SPECS for m in spec.validation_metrics)
"""Every validation score of every task (quality); every other objective is a cost."""


METRICS = TASKS["classification"].metrics
"""Metrics of the classification task (the default): every finished classification trial records them."""

VALIDATION_METRICS = TASKS["classification"].validation_metrics
"""Validation scores of the classification task."""


def get_task(name: str) -> TaskSpec:
    """The task ``name``; a :class:`ConfigError` on ``task`` lists the valid ones."""
    if name not in TASKS:
        raise ConfigError("task", f"unknown task {name!r}; valid: {', '.join(TASKS)}")
    return TASKS[name]


def direction(metric: str) -> str:
    """``maximize`` for metrics of :data:`HIGHER_IS_BETTER`, else ``minimize``."""
    return "maximize" if metric in HIGHER_IS_BETTER else "minimize"
