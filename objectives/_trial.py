"""What one trial does: fine-tune or distil a student, then measure its quality and cost.

Nothing here knows about Optuna: the caller passes a ``report`` callback (which may raise to prune) and gets a
plain dict of metrics back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from objectives._config import DataArgs, DistillArgs, StudentArgs, TeacherArgs, TrainArgs
from objectives._data import Encoded, Task, collate, encode, load_task
from objectives._losses import get_loss
from objectives._metrics import PeakMemory, gflops, latency_ms, size_mb, throughput
from objectives._models import (
    build_student,
    count_parameters,
    load_classifier,
    load_tokenizer,
    num_layers,
    quiet_transformers,
)
from objectives._train import Report, train


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


def prepare_workload(data: DataArgs, model: str, device: str | torch.device = "cpu") -> Workload:
    """Load and split the data and tokenise train/validation with ``model``'s tokenizer (cached per process)."""
    task = load_task(data)
    tokenizer = load_tokenizer(model)
    train_enc = encode(tokenizer, task.train(), data.max_length, key=(task.fingerprint, "train"))
    val_enc = encode(tokenizer, task.validation(), data.max_length, key=(task.fingerprint, "validation"))
    return Workload(task, tokenizer, train_enc, val_enc, torch.device(device))


def measure_cost(model: torch.nn.Module, work: Workload) -> dict[str, float]:
    """Latency (batch 1, example of the validation set's mean length), throughput (batch 32), size and FLOPs."""
    device = next(model.parameters()).device
    mean = work.validation.mean_length()
    typical = min(range(len(work.validation)), key=lambda i: abs(len(work.validation.input_ids[i]) - mean))
    one = {k: v.to(device) for k, v in collate(work.validation, [typical]).items() if k != "labels"}
    batch = collate(work.validation, list(range(min(32, len(work.validation)))))
    batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
    p50, p95 = latency_ms(model, one)
    params = count_parameters(model)
    return {
        "latency_ms": p50,
        "latency_ms_p95": p95,
        "throughput": throughput(model, batch),
        "params": float(params),
        "size_mb": size_mb(params),
        "gflops": gflops(model, one),
    }


def _fit(
    model: torch.nn.Module,
    work: Workload,
    args: TrainArgs,
    *,
    loss_fn: Any,
    seed: int,
    teacher: torch.nn.Module | None = None,
    report: Report | None = None,
) -> dict[str, float]:
    """Train ``model`` and return every metric of :data:`METRICS` plus ``val_loss`` and ``steps``."""
    model.to(work.device)
    start = time.perf_counter()
    with PeakMemory(work.device) as memory:
        result = train(
            model,
            work.train,
            work.validation,
            args,
            loss_fn=loss_fn,
            num_labels=work.num_labels,
            n_layers=num_layers(model),
            seed=seed,
            teacher=teacher,
            report=report,
        )
    seconds = time.perf_counter() - start
    return {
        "accuracy": result.evaluation.accuracy,
        "f1": result.evaluation.f1,
        "val_loss": result.evaluation.loss,
        "steps": float(result.steps),
        "train_seconds": seconds,
        "peak_memory_mb": memory.peak_mb,
        **measure_cost(model, work),
    }


def finetune_teacher(work: Workload, args: TeacherArgs, seed: int, out_dir: Path) -> dict[str, float]:
    """Fine-tune the base model on the task, save it (model and tokenizer) to ``out_dir``, return its metrics."""
    torch.manual_seed(seed)
    model = load_classifier(args.model, work.num_labels, args.train.dropout)
    metrics = _fit(model, work, args.train, loss_fn=get_loss("ce"), seed=seed)
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


def run_finetune(
    work: Workload,
    base_model: str,
    student: StudentArgs,
    args: TrainArgs,
    seed: int,
    report: Report | None = None,
) -> dict[str, float]:
    """Objective ``finetune``: the student architecture, initialised from the base (pretrained, not fine-tuned)
    model, trained on hard labels with cross-entropy."""
    torch.manual_seed(seed)
    quiet_transformers()
    base = load_classifier(base_model, work.num_labels)
    model = build_student(base, student, args.dropout)
    del base
    return _fit(model, work, args, loss_fn=get_loss("ce"), seed=seed, report=report)


def run_distill(
    work: Workload,
    teacher_dir: Path,
    student: StudentArgs,
    args: TrainArgs,
    distill: DistillArgs,
    seed: int,
    report: Report | None = None,
) -> dict[str, float]:
    """Objective ``distill`` (integrated): a student initialised from the fine-tuned teacher, trained with
    alpha * T^2 * KL(teacher || student) + (1 - alpha) * CE against the frozen teacher."""
    torch.manual_seed(seed)
    teacher = load_teacher(teacher_dir, work.num_labels, work.device)
    model = build_student(teacher, student, args.dropout)
    loss_fn = get_loss("kd", temperature=distill.temperature, alpha=distill.alpha)
    return _fit(model, work, args, loss_fn=loss_fn, seed=seed, teacher=teacher, report=report)
