"""What one trial does: fine-tune or distil a student, then measure its quality and cost.

Nothing here knows about Optuna: the caller passes a ``report`` callback (which may raise to prune) and gets a
plain dict of metrics back.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch

from objectives._config import DataArgs, DistillArgs, StudentArgs, TeacherArgs, TrainArgs
from objectives._data import Encoded, Rows, Task, collate, encode, open_data
from objectives._logits import TopKLogits
from objectives._losses import balanced_weights, get_loss
from objectives._metrics import (
    PeakMemory,
    gflops,
    hardware,
    latency_ms,
    per_class,
    size_mb,
    throughput,
    torch_threads,
)
from objectives._models import (
    build_student,
    count_parameters,
    load_classifier,
    load_tokenizer,
    name_labels,
    num_layers,
    quiet_transformers,
)
from objectives._train import Report, evaluate, train


@dataclass
class Workload:
    """The tokenised train and validation splits of a study, shared by all its trials in a process."""

    task: Task
    tokenizer: Any
    train: Encoded
    validation: Encoded
    device: torch.device

    @property
    def num_labels(self) -> int:
        return self.task.num_labels

    def class_weights(self, args: TrainArgs) -> dict[str, torch.Tensor]:
        """The ``weight`` option of the labels' cross-entropy for ``args.class_weights`` (none: no option)."""
        if args.class_weights == "none":
            return {}
        return {"weight": balanced_weights(self.train.labels, self.num_labels).to(self.device)}


def prepare_workload(data: DataArgs, model: str, device: str | torch.device = "cpu") -> Workload:
    """Load and split the data and tokenise train/validation with ``model``'s tokenizer (cached per process)."""
    task = open_data(data)
    tokenizer = load_tokenizer(model)
    train_enc = encode(tokenizer, task.train(), data.max_length, key=(task.fingerprint, "train"))
    val_enc = encode(tokenizer, task.validation(), data.max_length, key=(task.fingerprint, "validation"))
    return Workload(task, tokenizer, train_enc, val_enc, torch.device(device))


class CostStore(Protocol):
    """Where measured costs are kept, by a key naming the architecture, hardware and input: a dict per process
    by default; a study passes one shared by all its workers, so every trial of an architecture on the same
    hardware reports the same latency, whichever worker ran it and when."""

    def get(self, key: str, /) -> dict[str, float] | None: ...

    def setdefault(self, key: str, value: dict[str, float], /) -> dict[str, float]:
        """Keep ``value`` unless the key already has one (another worker measured first); return the kept one."""
        ...


_COSTS: dict[str, dict[str, float]] = {}


def _architecture(model: torch.nn.Module) -> str:
    """What a forward pass computes: the model config without dropout (off at inference) and label names."""
    config = {
        k: v
        for k, v in model.config.to_dict().items()
        if "dropout" not in k and k not in ("id2label", "label2id", "_name_or_path", "transformers_version")
    }
    dtype = next(model.parameters()).dtype
    return json.dumps({**config, "dtype": str(dtype), "params": count_parameters(model)}, sort_keys=True, default=str)


COST_THREADS = 1
"""Torch threads for cost measurements on the CPU, whatever the worker trains with: workers started with different
``--threads`` then report comparable latencies, and one thread is the steadiest measurement on a shared machine
(``bench/latency_stability.py``)."""


def _cost_threads(device: torch.device) -> int:
    return COST_THREADS if device.type == "cpu" else torch.get_num_threads()


def cost_hardware(device: torch.device) -> str:
    """What costs on ``device`` are measured on: the GPU, or the CPU model with :data:`COST_THREADS` threads."""
    return hardware(device, _cost_threads(device))


def measure_cost(model: torch.nn.Module, work: Workload, costs: CostStore | None = None) -> dict[str, float]:
    """Latency (batch 1, example of the validation set's mean length), throughput (batch 32), size and FLOPs; on
    the CPU with :data:`COST_THREADS` threads.

    They depend on the architecture, not the weights, so they are measured once per architecture, hardware and
    input in ``costs`` (this process's store by default) and reused: later trials of the same student skip the
    measurement and report the same latency (no measurement noise between them)."""
    device = next(model.parameters()).device
    mean = work.validation.mean_length()
    typical = min(range(len(work.validation)), key=lambda i: abs(len(work.validation.input_ids[i]) - mean))
    inputs = ("input_ids", "attention_mask")
    one = {k: v.to(device) for k, v in collate(work.validation, [typical]).items() if k in inputs}
    batch = collate(work.validation, list(range(min(32, len(work.validation)))))
    batch = {k: v.to(device) for k, v in batch.items() if k in inputs}
    what = [_architecture(model), cost_hardware(device), one["input_ids"].tolist(), list(batch["input_ids"].shape)]
    key = hashlib.sha256(json.dumps([*what, torch.__version__]).encode()).hexdigest()[:24]
    store = _COSTS if costs is None else costs
    cost = store.get(key)
    if cost is None:
        with torch_threads(_cost_threads(device)):
            p50, p95 = latency_ms(model, one)
            per_second = throughput(model, batch)
        params = count_parameters(model)
        measured = {
            "latency_ms": p50,
            "latency_ms_p95": p95,
            "throughput": per_second,
            "params": float(params),
            "size_mb": size_mb(params),
            "gflops": gflops(model, one),
        }
        cost = store.setdefault(key, measured)
    return dict(cost)


CostHook = Callable[[dict[str, float]], None]
"""Called once with the cost metrics (latency, throughput, params, size, FLOPs) before training starts: they
depend on the architecture only, so multi-objective pruning can compare trials on them early."""


@dataclass
class Stage:
    """One training phase of a trial: data, settings, loss and (for distillation) the frozen teacher."""

    data: Encoded
    args: TrainArgs
    loss_fn: Any
    teacher: torch.nn.Module | torch.Tensor | TopKLogits | None = None


def _offset(report: Report, offset: int, *, last: bool) -> Report:
    """``report`` for one stage of a run: steps continue from ``offset``, final only in the ``last`` stage."""
    return lambda step, scores, final: report(offset + step, scores, final and last)


def _fit(
    model: torch.nn.Module,
    work: Workload,
    stages: list[Stage],
    *,
    seed: int,
    report: Report | None = None,
    on_cost: CostHook | None = None,
    costs: CostStore | None = None,
) -> dict[str, Any]:
    """Train ``model`` through ``stages`` and return every metric of :data:`METRICS` plus ``val_loss``, ``steps``
    and ``per_class`` (validation scores of each class by name, :func:`objectives._metrics.per_class`).

    Steps are numbered across stages, so reports of a later stage continue where the earlier one ended; only the
    last stage's last validation is reported as final.
    """
    model.to(work.device)
    cost = measure_cost(model, work, costs)
    if on_cost is not None:
        on_cost(cost)
    start = time.perf_counter()
    done = 0
    with PeakMemory(work.device) as memory:
        for stage in stages:
            result = train(
                model,
                stage.data,
                work.validation,
                stage.args,
                loss_fn=stage.loss_fn,
                num_labels=work.num_labels,
                n_layers=num_layers(model),
                seed=seed,
                teacher=stage.teacher,
                report=None if report is None else _offset(report, done, last=stage is stages[-1]),
            )
            done += result.steps
    return {
        "accuracy": result.evaluation.accuracy,
        "f1": result.evaluation.f1,
        "val_loss": result.evaluation.loss,
        "top_share": result.evaluation.top_share,
        "steps": float(done),
        "per_class": per_class(result.evaluation.preds, result.evaluation.labels, work.task.rows.label_names),
        "train_seconds": time.perf_counter() - start,
        "peak_memory_mb": memory.peak_mb,
        **cost,
    }


def finetune_teacher(work: Workload, args: TeacherArgs, seed: int, out_dir: Path) -> dict[str, Any]:
    """Fine-tune the base model on the task, save it (model, with the class names, and tokenizer) to ``out_dir``,
    return its metrics."""
    torch.manual_seed(seed)
    model = load_classifier(args.model, work.num_labels, args.train.dropout)
    loss = get_loss("ce", **work.class_weights(args.train))
    metrics = _fit(model, work, [Stage(work.train, args.train, loss)], seed=seed)
    name_labels(model, work.task.rows.label_names)
    model.save_pretrained(out_dir)
    work.tokenizer.save_pretrained(out_dir)
    return metrics


_TEACHERS: dict[tuple[str, str], torch.nn.Module] = {}


def load_teacher(path: Path, num_labels: int, device: torch.device) -> torch.nn.Module:
    """The frozen fine-tuned teacher saved at ``path``, loaded once per process and device."""
    key = (str(path), str(device))
    if key not in _TEACHERS:
        teacher = load_classifier(str(path), num_labels).to(device).eval()
        teacher.requires_grad_(False)
        _TEACHERS[key] = teacher
    return _TEACHERS[key]


def unload_teachers() -> None:
    """Drop the teachers :func:`load_teacher` keeps (their memory, on the GPU too, is freed once no trial holds
    them); the next trial that needs one loads it again."""
    _TEACHERS.clear()


def finetune_student(
    work: Workload,
    base_model: str,
    student: StudentArgs,
    args: TrainArgs,
    seed: int,
    report: Report | None = None,
    on_cost: CostHook | None = None,
    costs: CostStore | None = None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The student architecture, initialised from the base (pretrained, not fine-tuned) model, trained on hard
    labels with cross-entropy; returns the trained model and its metrics."""
    torch.manual_seed(seed)
    quiet_transformers()
    base = load_classifier(base_model, work.num_labels)
    model = build_student(base, student, args.dropout, work.train)
    del base
    stages = [Stage(work.train, args, get_loss("ce", **work.class_weights(args)))]
    return model, _fit(model, work, stages, seed=seed, report=report, on_cost=on_cost, costs=costs)


def transfer_set(work: Workload, files: list[str], max_length: int) -> Encoded:
    """Unlabelled texts for sequential distillation: the training texts and every line of ``files``."""
    texts = list(work.task.train().texts)
    for path in files:
        texts += [line.strip() for line in Path(path).expanduser().read_text().splitlines() if line.strip()]
    # Labels are placeholders: the KD-only loss (alpha = 1) never reads them.
    return encode(work.tokenizer, Rows(texts, [0] * len(texts), work.task.rows.label_names), max_length)


LogitSource = Callable[[str, Encoded, torch.nn.Module], "torch.Tensor | TopKLogits"]
"""Given a name (``train``, ``transfer``), the data and the teacher, returns the teacher's logits for every example
(e.g. from a cache shared by all trials of a study)."""


def distill_student(
    work: Workload,
    teacher_dir: Path,
    student: StudentArgs,
    args: TrainArgs,
    distill: DistillArgs,
    seed: int,
    report: Report | None = None,
    on_cost: CostHook | None = None,
    logits: LogitSource | None = None,
    costs: CostStore | None = None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A student initialised from the fine-tuned teacher, then either

    - ``integrated``: one run with alpha * T^2 * KL(teacher || student) + (1 - alpha) * CE, or
    - ``sequential``: KD only (alpha = 1) on the transfer set for ``transfer_ratio`` of the step budget, then
      fine-tuning on the labels with CE for the rest (the same total budget as integrated).

    With ``logits``, the teacher's outputs come from it instead of a teacher forward pass on every batch: the teacher
    is frozen in eval mode, so they are the same numbers. Returns the trained model and its metrics.
    """
    torch.manual_seed(seed)
    teacher = load_teacher(teacher_dir, work.num_labels, work.device)
    model = build_student(teacher, student, args.dropout, work.train)

    def signal(name: str, data: Encoded) -> torch.nn.Module | torch.Tensor | TopKLogits:
        return teacher if logits is None else logits(name, data, teacher)

    weights = work.class_weights(args)
    if distill.approach == "integrated" and distill.alpha == 0:  # the KD term is off: plain CE, no teacher needed
        stages = [Stage(work.train, args, get_loss("ce", **weights))]
    elif distill.approach == "integrated":
        loss_fn = get_loss("kd", temperature=distill.temperature, alpha=distill.alpha, **weights)
        stages = [Stage(work.train, args, loss_fn, signal("train", work.train))]
    else:
        kd_steps = max(1, round(args.max_steps * distill.transfer_ratio))
        transfer = transfer_set(work, distill.transfer_files, work.task.args.max_length)
        kd_only = get_loss("kd", temperature=distill.temperature, alpha=1.0)
        stages = [
            Stage(transfer, replace(args, max_steps=kd_steps, patience=None), kd_only, signal("transfer", transfer)),
            Stage(
                work.train,
                replace(args, max_steps=max(1, args.max_steps - kd_steps)),
                get_loss("ce", **weights),
            ),
        ]
    return model, _fit(model, work, stages, seed=seed, report=report, on_cost=on_cost, costs=costs)


def heldout_metrics(model: torch.nn.Module, work: Workload) -> dict[str, Any]:
    """Quality (with ``per_class`` scores) on the held-out test split and cost, for full-training reports (never
    called by a trial)."""
    test = encode(work.tokenizer, work.task.test(), work.task.args.max_length)
    model.to(work.device)
    evaluation = evaluate(model, test, 128, work.num_labels)
    return {
        "accuracy": evaluation.accuracy,
        "f1": evaluation.f1,
        "loss": evaluation.loss,
        "top_share": evaluation.top_share,
        "per_class": per_class(evaluation.preds, evaluation.labels, work.task.rows.label_names),
        **measure_cost(model, work),
    }
