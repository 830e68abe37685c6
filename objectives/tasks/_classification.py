"""The classification task: a sentence classifier fine-tuned or distilled from the study's teacher.

Implements :class:`objectives.tasks._task.TaskImplementation`. Nothing here knows about Optuna: the caller passes a
``report`` callback (which may raise to prune) and gets a plain dict of metrics back.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from objectives._config import DataArgs, DistillArgs, StudentArgs, TeacherArgs, TrainArgs, check_layer_terms
from objectives.data import Encoded, Rows, Task, collate, encode, open_data, transfer_texts
from objectives.evaluation import (
    CostStore,
    forward_round,
    gflops,
    interleaved_speedup,
    latency_ms,
    per_class,
    speedup_clock,
    stored_cost,
    throughput,
)
from objectives.students import (
    add_adapter,
    build_student,
    count_parameters,
    kept_layers,
    load_classifier,
    load_tokenizer,
    merged,
    name_labels,
    quantized,
    quiet_transformers,
    save_adapter,
    saved_size_mb,
)
from objectives.students import model_identity as model_identity
from objectives.training import (
    CostHook,
    HeadInputs,
    LayerDistillLoss,
    LogitSource,
    Report,
    Stage,
    balanced_weights,
    distill_stages,
    evaluate,
    fit,
    frozen_teacher,
    get_loss,
    shards_teacher,
    teacher_logits,
)


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


def _tokenised(task: Task, model: str, device: str | torch.device) -> Workload:
    """``task``'s train/validation splits tokenised with ``model``'s tokenizer (cached per process and tokenizer)."""
    tokenizer = load_tokenizer(model)
    max_length = task.args.max_length
    train_enc = encode(tokenizer, task.train(), max_length, key=(task.fingerprint, "train"))
    val_enc = encode(tokenizer, task.validation(), max_length, key=(task.fingerprint, "validation"))
    return Workload(task, tokenizer, train_enc, val_enc, torch.device(device))


def prepare_workload(data: DataArgs, model: str, device: str | torch.device = "cpu") -> Workload:
    """Load and split the data and tokenise train/validation with ``model``'s tokenizer (cached per process)."""
    return _tokenised(open_data(data), model, device)


_OWN_TOKENS: weakref.WeakKeyDictionary[torch.nn.Module, Workload] = weakref.WeakKeyDictionary()
"""The data of each trained student of another architecture, tokenised its own way: :func:`heldout_metrics` and
:func:`save_model`, called with the study's (the teacher's) workload, score and save it with its own tokenizer."""


def student_workload(work: Workload, student: StudentArgs) -> Workload:
    """The data as the student reads it: ``work`` itself for a student cut from the teacher; for a student of
    another architecture (``student.model``) the same examples, in the same order, tokenised with its own
    tokenizer, so row i is still example i (of the teacher's logits too)."""
    return work if student.model is None else _tokenised(work.task, student.model, work.device)


def latency_input(work: Workload, device: torch.device) -> dict[str, torch.Tensor]:
    """The batch-1 input latency is measured on: the validation example closest to the mean length."""
    mean = work.validation.mean_length()
    typical = min(range(len(work.validation)), key=lambda i: abs(len(work.validation.input_ids[i]) - mean))
    inputs = ("input_ids", "attention_mask")
    return {k: v.to(device) for k, v in collate(work.validation, [typical]).items() if k in inputs}


def measure_cost(
    model: torch.nn.Module,
    work: Workload,
    costs: CostStore | None = None,
    teacher: tuple[torch.nn.Module, Workload] | None = None,
) -> dict[str, float]:
    """Latency (batch 1, example of the validation set's mean length), throughput (batch 32), size and FLOPs, and
    with a ``teacher`` (the model and the workload it reads) the ``speedup`` over it, each on its own tokens (:func:`objectives.evaluation.interleaved_speedup`,
    rounds of :data:`SPEEDUP_CALLS` calls); on the CPU with :data:`objectives.evaluation._costs.COST_THREADS`
    threads, once per architecture, hardware, input and teacher (:func:`objectives.evaluation._costs.stored_cost`)."""
    device = next(model.parameters()).device
    one = latency_input(work, device)
    inputs = ("input_ids", "attention_mask")
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
            "size_mb": saved_size_mb(model),
            "gflops": gflops(model, one),
            **(
                {}
                if teacher is None
                else {"speedup": speedup(model, one, teacher[0], latency_input(teacher[1], device))}
            ),
        }

    return stored_cost(
        model, [one["input_ids"].tolist(), list(batch["input_ids"].shape)], measure, costs, teacher and teacher[0]
    )


SPEEDUP_CALLS = 2
"""Forward passes per model in each interleaved round of a classifier's ``speedup``: short rounds, so a change in
the host's load between a teacher round and the next student round is rare."""

SPEEDUP_ROUNDS = 60
"""Interleaved rounds of a classifier's ``speedup``: 120 batch-1 passes of each model, about 1 s for MiniLM's 6
layers on one CPU thread, once per architecture. On a 2-core VM at load average 7-9 the ratio's spread between 5
processes was 1.5% with 2 x 60 against 2-6% with 10 x 7 (``bench/latency_stability.py``)."""


def speedup(
    model: torch.nn.Module, one: dict[str, torch.Tensor], teacher: torch.nn.Module, teacher_one: dict[str, torch.Tensor]
) -> float:
    """The teacher's batch-1 latency on ``teacher_one`` over the student's on ``one``, timed in interleaved rounds
    after a warm-up round each (:func:`objectives.evaluation.interleaved_speedup`)."""
    clock = speedup_clock(next(model.parameters()).device)
    student_round = forward_round(model, one, SPEEDUP_CALLS, clock)
    teacher_round = forward_round(teacher, teacher_one, SPEEDUP_CALLS, clock)
    student_round(), teacher_round()
    return interleaved_speedup(student_round, teacher_round, SPEEDUP_ROUNDS)


def _fit(
    model: torch.nn.Module,
    work: Workload,
    stages: list[Stage],
    *,
    seed: int,
    report: Report | None = None,
    on_cost: CostHook | None = None,
    costs: CostStore | None = None,
    teacher: tuple[torch.nn.Module, Workload] | None = None,
    quantize: str = "none",
) -> dict[str, Any]:
    """Train ``model`` through ``stages`` (:func:`objectives.training._fit.fit`) and return every metric of the task plus
    ``val_loss``, ``steps``, ``top_share`` and ``per_class`` (validation scores of each class by name,
    :func:`objectives.evaluation.per_class`); the ``speedup`` is over ``teacher``."""
    evaluation, metrics = fit(
        model,
        stages,
        work.validation,
        device=work.device,
        evaluate=evaluate,
        cost=lambda m: measure_cost(merged(m), work, costs, teacher),  # an adapter's: the merged model's
        seed=seed,
        report=report,
        on_cost=on_cost,
        quantize=quantize,
    )
    return {**_scores(evaluation, work), "val_loss": evaluation.loss, **metrics}


def _scores(evaluation: Any, work: Workload) -> dict[str, Any]:
    """Accuracy, macro-F1, the top label's share and each class's scores (by name) of an evaluation."""
    return {
        "accuracy": evaluation.accuracy,
        "f1": evaluation.f1,
        "top_share": evaluation.top_share,
        "per_class": per_class(evaluation.preds, evaluation.labels, work.task.rows.label_names),
    }


def finetune_teacher(work: Workload, args: TeacherArgs, seed: int, out_dir: Path) -> dict[str, Any]:
    """Fine-tune the base model on the task (all its weights, or with ``teacher.adapter: lora`` a LoRA adapter and
    the new head, merged afterwards), save it (model, with the class names, and tokenizer) to ``out_dir``, return its
    metrics."""
    torch.manual_seed(seed)
    model = load_classifier(args.model, work.num_labels, args.train.dropout)
    model = add_adapter(model, args, work.device, "teacher", causal=False)
    loss = get_loss("ce", **work.class_weights(args.train))
    metrics = _fit(model, work, [Stage(work.train, args.train, loss)], seed=seed)
    model = merged(model)
    name_labels(model, work.task.rows.label_names)
    model.save_pretrained(out_dir)
    work.tokenizer.save_pretrained(out_dir)
    return {**metrics, "speedup": 1.0}  # over itself


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
    init: torch.nn.Module | None = None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The student architecture, initialised from the base (pretrained, not fine-tuned) model, or from
    ``student.model`` with its own tokenizer, trained on hard labels with cross-entropy; returns the trained model
    and its metrics. ``init``: start from this model instead (e.g. a copy of :func:`initial_student`, the
    distilled student's starting point: the same student trained without the teacher): no model is loaded to train
    it, the base model only to time the ``speedup`` against (once per process)."""
    torch.manual_seed(seed)
    quiet_transformers()
    own = student_workload(work, student)
    if init is None:
        base = load_classifier(student.model or base_model, work.num_labels)
        model = add_adapter(
            build_student(base, student, args.dropout, own.train), student, work.device, "student", False
        )
        del base
    else:
        model = init
    if own is not work:
        _OWN_TOKENS[model] = own
    stages = [Stage(own.train, args, get_loss("ce", **own.class_weights(args)))]
    # the speedup is over the teacher's architecture: the base model's (its fine-tuning changes weights, not speed)
    reference = frozen_teacher(Path(base_model), work.device, lambda p: load_classifier(p, work.num_labels))
    return model, _fit(
        model,
        own,
        stages,
        seed=seed,
        report=report,
        on_cost=on_cost,
        costs=costs,
        teacher=(reference, work),
        quantize=student.quantize,
    )


def transfer_set(work: Workload, distill: DistillArgs) -> Encoded:
    """Unlabelled texts for sequential distillation: the training texts (capped by ``data.max_train_rows``) and
    every text of ``distill.transfer_files`` (:func:`objectives.data.transfer_texts`); with
    ``distill.transfer_only`` those texts alone."""
    texts = [] if distill.transfer_only else list(work.task.train().texts)
    texts += transfer_texts(distill.transfer_files, work.task.args.text_column)
    # Labels are placeholders: the KD-only loss (alpha = 1) never reads them.
    return encode(work.tokenizer, Rows(texts, [0] * len(texts), work.task.rows.label_names), work.task.args.max_length)


def _distilled_student(teacher: torch.nn.Module, work: Workload, student: StudentArgs, args: TrainArgs) -> Any:
    """The student before training: cut from the ``teacher`` (:func:`build_student`), or ``student.model`` with a
    new head (its own layers cut by ``num_layers`` / ``layers``)."""
    if student.model is None:
        return build_student(teacher, student, args.dropout, work.train)
    other = load_classifier(student.model, work.num_labels, args.dropout)
    if student.num_layers is None and student.layers is None and student.init == "teacher":
        return other
    return build_student(other, student, args.dropout)


def initial_student(
    work: Workload, teacher_dir: Path, student: StudentArgs, args: TrainArgs, seed: int
) -> torch.nn.Module:
    """The student :func:`distill_student` starts from with ``seed``, before any training: cut from the fine-tuned
    teacher saved at ``teacher_dir`` (:func:`_distilled_student`)."""
    torch.manual_seed(seed)
    model = _distilled_student(load_teacher(teacher_dir, work), work, student, args)
    model = add_adapter(model, student, work.device, "student", causal=False)
    own = student_workload(work, student)
    if own is not work:
        _OWN_TOKENS[model] = own
    return model


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
    init: torch.nn.Module | None = None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A student initialised from the fine-tuned teacher (or ``student.model``; ``init``: this model, made by
    :func:`initial_student`), then either

    - ``integrated``: one run with alpha * T^2 * KL(teacher || student) + (1 - alpha) * CE, or
    - ``sequential``: KD only (alpha = 1) on the transfer set for ``transfer_ratio`` of the step budget, then
      fine-tuning on the labels with CE for the rest (the same total budget as integrated).

    ``distill.hidden_weight`` / ``attention_weight`` add the layer terms of :class:`objectives.training._losses.
    LayerDistillLoss` to the KD stage; they need the teacher's hidden states, so the teacher then runs live on every
    batch and ``logits`` is not used.

    With ``logits``, the teacher's outputs come from it instead of a teacher forward pass on every batch: the teacher
    is frozen in eval mode, so they are the same numbers. A ``student.model`` of another architecture reads its own
    tokens (:func:`student_workload`); the teacher's logits, one row per example, come from ``logits`` over the
    teacher's tokens of the same examples, or without it are computed once at the start of the run. Cost and
    validation are measured on the student's tokens. Returns the trained model and its metrics.
    """
    check_layer_terms(student, distill)
    model = init if init is not None else initial_student(work, teacher_dir, student, args, seed)
    torch.manual_seed(seed)  # the same random state from here on, whether the student was built here or passed in
    teacher = load_teacher(teacher_dir, work)
    own = student_workload(work, student)
    if distill.needs_teacher_states:
        logits = None  # the layer terms read the live teacher's hidden states; cached logits have none

    def signal(name: str, data: Encoded) -> torch.nn.Module | torch.Tensor | HeadInputs:
        if own is work:
            return teacher if logits is None else logits(name, data, teacher)
        # Another tokenizer: the teacher reads its own tokens of the same examples (row i = example i).
        mine = work.train if name == "train" else transfer_set(work, distill)
        return (
            logits(name, mine, teacher) if logits is not None else teacher_logits(teacher, mine, args.eval_batch_size)
        )

    weights = own.class_weights(args)

    def kd(alpha: float) -> Any:
        # the KD-only stage reads no labels (the transfer set's are placeholders), so it takes no class weights
        divergence = {"divergence": distill.loss, "jsd_beta": distill.jsd_beta}
        loss = get_loss(
            "kd", temperature=distill.temperature, alpha=alpha, **divergence, **(weights if alpha < 1 else {})
        )
        if not distill.needs_teacher_states:
            return loss
        return LayerDistillLoss(
            loss,
            kept_layers(teacher, student, work.train),
            hidden_weight=distill.hidden_weight,
            attention_weight=distill.attention_weight,
            student_width=model.config.hidden_size,
            teacher_width=teacher.config.hidden_size,
        )

    stages = distill_stages(
        own.train,
        args,
        distill,
        ce=get_loss("ce", **weights),
        kd=kd,
        signal=signal,
        transfer=lambda: transfer_set(own, distill),
    )
    return model, _fit(
        model,
        own,
        stages,
        seed=seed,
        report=report,
        on_cost=on_cost,
        costs=costs,
        teacher=None if shards_teacher() else (teacher, work),  # a sharded teacher is timed on no one device
        quantize=student.quantize,
    )


def evaluation_rows(data: DataArgs, model: str) -> dict[str, int]:
    """Rows of the validation (``data.max_val_rows`` at most) and test splits one evaluation pass reads; no
    tokenizer is needed to count them."""
    task = open_data(data)
    return {"validation": len(task.val_idx), "test": len(task.test_idx)}


def heldout_metrics(model: torch.nn.Module, work: Workload, quantize: str = "none") -> dict[str, Any]:
    """Quality (with ``per_class`` scores) on the held-out test split and cost, for full-training reports (never
    called by a trial), read through the model's own tokenizer (a ``student.model`` of another architecture); of a
    copy quantized with ``quantize`` (``student.quantize``) where it is not ``none``."""
    work = _OWN_TOKENS.get(model, work)
    test = encode(work.tokenizer, work.task.test(), work.task.args.max_length)
    model = quantized(model.to(work.device), quantize)
    evaluation = evaluate(model, test, 128)
    return {**_scores(evaluation, work), "loss": evaluation.loss, **measure_cost(merged(model), work)}


def save_model(model: torch.nn.Module, work: Workload, out: Path, adapter_only: bool = False) -> None:
    """Write ``model`` with its class names (``id2label``) and its tokenizer (the study's, or a ``student.model``'s
    own) to ``out``, an adapter merged into its weights; with ``adapter_only`` the weights it adapts and the adapter
    alone (:func:`objectives.students.save_adapter`)."""
    work = _OWN_TOKENS.get(model, work)
    name_labels(model, work.task.rows.label_names)
    save_adapter(model, out) if adapter_only else merged(model).save_pretrained(out)
    work.tokenizer.save_pretrained(out)
