"""The classification task: a sentence classifier fine-tuned or distilled from the study's teacher.

Implements :class:`objectives._task.TaskImplementation`. Nothing here knows about Optuna: the caller passes a
``report`` callback (which may raise to prune) and gets a plain dict of metrics back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from objectives._config import DataArgs, DistillArgs, StudentArgs, TeacherArgs, TrainArgs
from objectives._costs import CostStore, stored_cost
from objectives._data import Encoded, Rows, Task, collate, encode, open_data
from objectives._fit import CostHook, LogitSource, Stage, distill_stages, fit, frozen_teacher
from objectives._logits import TopKLogits
from objectives._losses import balanced_weights, get_loss
from objectives._metrics import gflops, latency_ms, per_class, size_mb, throughput
from objectives._models import (
    build_student,
    count_parameters,
    load_classifier,
    load_tokenizer,
    name_labels,
    quiet_transformers,
)
from objectives._models import (
    model_identity as model_identity,  # the task interface names it
)
from objectives._train import Report, evaluate


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

    @property
    def fingerprint(self) -> str:
        """The data's content and splits (``Task.fingerprint``)."""
        return self.task.fingerprint

    @property
    def n_test(self) -> int:
        """Rows of the held-out test split."""
        return len(self.task.test_idx)

    unit = "rows"
    """What ``train`` and ``validation`` count, for logs."""

    @property
    def label_names(self) -> list[str]:
        return self.task.rows.label_names

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


def measure_cost(model: torch.nn.Module, work: Workload, costs: CostStore | None = None) -> dict[str, float]:
    """Latency (batch 1, example of the validation set's mean length), throughput (batch 32), size and FLOPs; on
    the CPU with :data:`objectives._costs.COST_THREADS` threads, once per architecture, hardware and input
    (:func:`objectives._costs.stored_cost`)."""
    device = next(model.parameters()).device
    mean = work.validation.mean_length()
    typical = min(range(len(work.validation)), key=lambda i: abs(len(work.validation.input_ids[i]) - mean))
    inputs = ("input_ids", "attention_mask")
    one = {k: v.to(device) for k, v in collate(work.validation, [typical]).items() if k in inputs}
    batch = collate(work.validation, list(range(min(32, len(work.validation)))))
    batch = {k: v.to(device) for k, v in batch.items() if k in inputs}

    def measure() -> dict[str, float]:
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

    return stored_cost(model, [one["input_ids"].tolist(), list(batch["input_ids"].shape)], measure, costs)


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
    """Train ``model`` through ``stages`` (:func:`objectives._fit.fit`) and return every metric of the task plus
    ``val_loss``, ``steps``, ``top_share`` and ``per_class`` (validation scores of each class by name,
    :func:`objectives._metrics.per_class`)."""
    evaluation, metrics = fit(
        model,
        stages,
        work.validation,
        device=work.device,
        evaluate=evaluate,
        cost=lambda m: measure_cost(m, work, costs),
        seed=seed,
        report=report,
        on_cost=on_cost,
    )
    return {
        "accuracy": evaluation.accuracy,
        "f1": evaluation.f1,
        "val_loss": evaluation.loss,
        "top_share": evaluation.top_share,
        "per_class": per_class(evaluation.preds, evaluation.labels, work.task.rows.label_names),
        **metrics,
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


def load_teacher(path: Path, work: Workload) -> torch.nn.Module:
    """The frozen fine-tuned teacher saved at ``path``, loaded once per process and device."""
    return frozen_teacher(path, work.device, lambda p: load_classifier(p, work.num_labels))


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
    teacher = load_teacher(teacher_dir, work)
    model = build_student(teacher, student, args.dropout, work.train)

    def signal(name: str, data: Encoded) -> torch.nn.Module | torch.Tensor | TopKLogits:
        return teacher if logits is None else logits(name, data, teacher)

    weights = work.class_weights(args)
    stages = distill_stages(
        work.train,
        args,
        distill,
        ce=get_loss("ce", **weights),
        # the KD-only stage reads no labels (the transfer set's are placeholders), so it takes no class weights
        kd=lambda alpha: get_loss("kd", temperature=distill.temperature, alpha=alpha, **(weights if alpha < 1 else {})),
        signal=signal,
        transfer=lambda: transfer_set(work, distill.transfer_files, work.task.args.max_length),
    )
    return model, _fit(model, work, stages, seed=seed, report=report, on_cost=on_cost, costs=costs)


def heldout_metrics(model: torch.nn.Module, work: Workload) -> dict[str, Any]:
    """Quality (with ``per_class`` scores) on the held-out test split and cost, for full-training reports (never
    called by a trial)."""
    test = encode(work.tokenizer, work.task.test(), work.task.args.max_length)
    model.to(work.device)
    evaluation = evaluate(model, test, 128)
    return {
        "accuracy": evaluation.accuracy,
        "f1": evaluation.f1,
        "loss": evaluation.loss,
        "top_share": evaluation.top_share,
        "per_class": per_class(evaluation.preds, evaluation.labels, work.task.rows.label_names),
        **measure_cost(model, work),
    }


def save_model(model: torch.nn.Module, work: Workload, out: Path) -> None:
    """Write ``model`` with its class names (``id2label``) and the tokenizer to ``out``."""
    name_labels(model, work.task.rows.label_names)
    model.save_pretrained(out)
    work.tokenizer.save_pretrained(out)
