"""The training loop shared by teacher fine-tuning, trial fine-tuning and distillation."""

from __future__ import annotations

import contextlib
import contextvars
import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from objectives._config import TrainArgs
from objectives.data import Encoded
from objectives.evaluation import accuracy, macro_f1
from objectives.students import fake_quantize
from objectives.training._compile import CompileClock, compiled_forward
from objectives.training._device import enable_tf32, to_device
from objectives.training._logits import HeadInputs, cached_rows
from objectives.training._on_policy import Teachers
from objectives.training._optim import build_optimizer

Report = Callable[[int, dict[str, float], bool], None]
"""Called at every validation with (step, validation scores, final): the scores are the task's validation metrics
(``accuracy``, ``f1``, ``val_loss`` for a classifier; ``perplexity``, ``token_accuracy``, ``val_loss`` for a
language model); ``final`` is true at the run's last validation (its whole budget trained, or early stopping ending
it), where a pruner must not stop it. It may raise to stop the run (pruning)."""

StepCallback = Callable[[int, int, "float | None", "float | None"], None]
"""Called after every optimiser step with (step, max_steps, loss, validation score): the mean training loss since
the last logging step at logging steps (every ``LOG_EVERY`` steps and at validations; None between, so there is no
per-step host sync), the task's first validation score (accuracy, perplexity) at validation steps (else None).
For progress display."""

LOG_EVERY = 10

_ON_STEP: contextvars.ContextVar[StepCallback | None] = contextvars.ContextVar("on_step", default=None)


@contextlib.contextmanager
def report_steps(callback: StepCallback | None) -> Iterator[None]:
    """Make ``callback`` the default ``on_step`` of every ``train`` call inside the block (e.g. a whole trial)."""
    token = _ON_STEP.set(callback)
    try:
        yield
    finally:
        _ON_STEP.reset(token)


@contextlib.contextmanager
def eager_attention(*models: torch.nn.Module) -> Iterator[None]:
    """Run transformers ``models`` with eager attention inside the block, then restore their own implementation:
    the fused kernels (SDPA, the default) return no attention probabilities for ``output_attentions``."""
    before = [model.config._attn_implementation for model in models]
    for model in models:
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        for model, implementation in zip(models, before, strict=True):
            model.set_attn_implementation(implementation)


class NonFiniteLoss(FloatingPointError):
    """The training loss became NaN or infinite; the run cannot continue."""


@dataclass
class Evaluation:
    loss: float
    accuracy: float
    f1: float
    top_share: float
    """Share of the examples predicted as the most often predicted label (1.0: a constant prediction)."""
    preds: list[int] = field(default_factory=list)
    """Predicted class of each example (in ``eval_batches`` order), for per-class scores."""
    labels: list[int] = field(default_factory=list)
    """True class of each example, in the same order."""

    def scores(self) -> dict[str, float]:
        """The validation scores a :data:`Report` receives."""
        return {"accuracy": self.accuracy, "f1": self.f1, "val_loss": self.loss}


@dataclass
class TrainResult:
    steps: int
    evaluation: Any
    stopped_early: bool
    eval_seconds: float = 0.0
    """Wall time of its validation passes, all together."""
    evals: int = 0
    """Validation passes run."""
    compile_seconds: float = 0.0
    """Time ``train.compile`` spent compiling (the first step's extra time; 0 for an architecture compiled before
    in this process), part of the run's wall time but not of its training."""


BF16_CAPABILITY = (8, 0)
"""The CUDA compute capability from which ``precision: auto`` trains in bf16 (Ampere on: bf16 tensor cores)."""


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None means plain fp32 (always on a CPU). ``auto`` is bf16
    on compute capability :data:`BF16_CAPABILITY` and above, else fp16 (with a GradScaler): not
    ``torch.cuda.is_bf16_supported()``, which also answers true where bf16 is only emulated (a V100, a T4)."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "bf16" or (precision == "auto" and torch.cuda.get_device_capability(device) >= BF16_CAPABILITY):
        return torch.bfloat16
    return torch.float16


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    params: list[torch.nn.Parameter],
    max_grad_norm: float | None,
) -> bool:
    """One optimiser step through ``scaler`` (gradients unscaled and clipped to ``max_grad_norm`` first, if set),
    then the gradients cleared; returns whether the step was taken. An fp16 GradScaler skips a step whose gradients
    hold inf or NaN and lowers its scale: that is how a skipped step is told (the scale drops only then), and the
    LR ``schedule`` advances only with a step taken, so skipped steps do not use up warmup or decay."""
    if max_grad_norm is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    before = scaler.get_scale() if scaler.is_enabled() else None  # no sync without a scaler
    scaler.step(optimizer)  # an enabled scaler syncs here anyway, to test for inf
    scaler.update()
    taken = before is None or scaler.get_scale() >= before
    if taken:
        schedule.step()
    optimizer.zero_grad(set_to_none=True)
    return taken


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: to_device(v, device) for k, v in batch.items()}


class Scored(Protocol):
    """What an evaluation function returns: ``loss`` (minimised by early stopping) and the scores reported."""

    loss: float

    def scores(self) -> dict[str, float]: ...


Evaluate = Callable[[torch.nn.Module, Any, int], Scored]
"""(model, validation data, batch size) -> the model's scores on the data."""


@torch.inference_mode()
def evaluate(model: torch.nn.Module, data: Encoded, batch_size: int) -> Evaluation:
    """Mean cross-entropy, accuracy, macro-F1 and the most often predicted label's share of ``model`` on ``data``."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    preds: list[int] = []
    labels: list[int] = []
    total_loss = torch.zeros((), device=device)
    for batch in data.eval_batches(batch_size):
        batch = _to(batch, device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        total_loss += torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="sum")
        preds += logits.argmax(-1).tolist()
        labels += batch["labels"].tolist()
    model.train(was_training)
    loss = total_loss.item() / len(labels)
    top_share = max(preds.count(c) for c in set(preds)) / len(preds)
    return Evaluation(loss, accuracy(preds, labels), macro_f1(preds, labels), top_share, preds, labels)


def teacher_targets(
    teacher: torch.nn.Module | torch.Tensor | HeadInputs | None,
    inputs: dict[str, torch.Tensor],
    outputs: dict[str, bool],
    rows: torch.Tensor,
    device: torch.device,
) -> Any:
    """What the student learns from on a batch: the live ``teacher``'s outputs on ``inputs`` (with the extra
    ``outputs`` a layer loss asks for), or the cached logits of the examples ``rows``; None without a teacher.

    Always fp32, outside any autocast, whatever the training precision: a cache is built in fp32
    (:func:`teacher_logits`, which CPU workers sharing the study's cache can only do in fp32), so a live teacher
    runs in fp32 too and trials with and without the cache learn from the same numbers (bf16 logits carry the
    rounding of a whole bf16 forward pass, at least 2^-9 relative each, which a low KD temperature magnifies). The price is the live teacher's forward in fp32
    (on TF32 tensor cores on a GPU) rather than bf16; the cache avoids it altogether."""
    if teacher is None:
        return None
    with torch.autocast(device.type, enabled=False):
        if isinstance(teacher, torch.nn.Module):
            with torch.no_grad():
                return teacher(**inputs, **outputs)
        return cached_rows(teacher, rows, device, inputs["input_ids"].shape[1])  # a batch narrower than the cache


def train(
    model: torch.nn.Module,
    train_data: Any,
    val_data: Any,
    args: TrainArgs,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor],
    n_layers: int,
    evaluate: Evaluate = evaluate,
    seed: int,
    teacher: torch.nn.Module | torch.Tensor | HeadInputs | Teachers | None = None,
    report: Report | None = None,
    on_step: StepCallback | None = None,
    qat: str = "none",
    rank_share: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> TrainResult:
    """Train ``model`` for ``args.max_steps`` optimiser steps and return its final validation scores.

    ``train_data`` and ``val_data`` give batches (``train_batches``, ``eval_batches``: texts of a classifier,
    token blocks of a language model); ``evaluate`` scores ``val_data`` (classification's by default) and
    ``loss_fn(logits, labels, teacher_logits)`` is the task's loss; a loss with ``model_outputs`` (e.g.
    :class:`objectives.training._losses.LayerDistillLoss`) is called ``loss_fn(student_outputs, labels, teacher_outputs,
    attention_mask)`` with both models asked for those outputs (the teacher live), and its own parameters train
    with the model.

    With ``args.patience`` set, stops once validation loss has not improved for that many validations and restores
    the best weights seen. ``on_step`` (default: the callback of an enclosing ``report_steps``) follows progress.
    ``teacher`` is a frozen model run on every batch, or its logits for every example of ``train_data``,
    precomputed (rows by example index; :class:`HeadInputs` for large vocabularies): the same numbers without the
    teacher's forward passes; or :class:`Teachers`, the two chosen batch by batch (on-policy distillation). Only
    each batch's rows of a cache are moved to the device (:func:`cached_rows`), so a cache larger than the device's
    memory works.

    ``qat`` (a ``student.quantize`` setting) with ``args.qat_fraction`` above 0: the last ``round(qat_fraction *
    max_steps)`` steps train with the linear weights fake-quantized (:func:`objectives.students.fake_quantize`);
    the model is returned so, for the caller to end it (:func:`objectives.students.end_fake_quantize`).

    ``rank_share`` (one rank of a trial on several devices: ``RankGroup.share``) weighs each micro-batch's loss by
    the rank's share of the global batch's targets, so that the ranks' averaged gradients are the global batch's.
    """
    on_step = on_step if on_step is not None else _ON_STEP.get()
    device = next(model.parameters()).device
    enable_tf32(device)
    torch.manual_seed(seed)
    # A layer-distillation loss asks both models for hidden states or attentions and may train parameters of its
    # own (a projection); every other loss sees logits only, and no extra outputs are computed for it.
    outputs = {k: v for k, v in getattr(loss_fn, "model_outputs", {}).items() if v}
    extra = list(loss_fn.to(device).parameters()) if isinstance(loss_fn, torch.nn.Module) else []
    optimizer, schedule = build_optimizer(model, args, n_layers, device, extra)
    dtype = autocast_dtype(args.precision, device)
    # fp16 needs loss scaling to keep small gradients from underflowing; bf16 has fp32's range and does not.
    scaler = torch.amp.GradScaler("cuda", enabled=dtype is torch.float16)
    amp = (lambda: torch.autocast("cuda", dtype=dtype)) if dtype else contextlib.nullcontext
    # Compiled forward for the training steps only: validation runs rarely and its batch shapes vary more.
    forward = compiled_forward(model) if args.compile else model
    batches = train_data.train_batches(args.batch_size, seed, group_by_length=args.group_by_length)
    if isinstance(teacher, torch.nn.Module):
        teacher.eval()  # frozen teacher: no dropout, so its logits are a fixed function of the input
    elif isinstance(teacher, HeadInputs):
        teacher = teacher.head_to(device)
    elif isinstance(teacher, Teachers):
        teacher = teacher.to(device)
    # Non-finite losses are accumulated on the device and checked only at validation steps: a per-step .item()
    # would force a host sync every step.
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    running_loss, logged_step = torch.zeros((), device=device), 0
    best_loss, best_state, best_eval, bad_evals = math.inf, None, None, 0
    evaluation = None
    eval_seconds, evals = 0.0, 0

    def validate() -> Any:
        nonlocal eval_seconds, evals
        start = time.perf_counter()
        scored = evaluate(model, val_data, args.eval_batch_size)
        eval_seconds, evals = eval_seconds + time.perf_counter() - start, evals + 1
        return scored

    if args.max_steps == 0:  # a teacher used as it is: scored, not trained
        model.eval()
        return TrainResult(0, validate(), False, eval_seconds, evals)
    model.train()
    step = 0
    qat_steps = round(args.qat_fraction * args.max_steps) if qat != "none" else 0
    clock = CompileClock(device) if args.compile else None
    # A model data-parallel across ranks (``replicate``, FSDP2's ``fully_shard``) averages its gradients on the last
    # micro-batch of a step only: the earlier ones accumulate locally, with no all-reduce (DDP's no_sync).
    sync = getattr(model, "set_requires_gradient_sync", None) if args.grad_accum_steps > 1 else None
    for step in range(1, args.max_steps + 1):
        if qat_steps and step == args.max_steps - qat_steps + 1:
            fake_quantize(model, qat)  # the same weight tensors: the optimiser's state carries on
        for micro in range(args.grad_accum_steps):
            if sync is not None:
                sync(micro == args.grad_accum_steps - 1)
            batch = next(batches)
            rows = batch["index"]  # on the CPU, where the cache is
            batch = _to(batch, device)
            inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
            with amp():
                student_out = forward(**inputs, **outputs)
            source = teacher.current() if isinstance(teacher, Teachers) else teacher  # this batch's teacher
            teacher_out = teacher_targets(source, inputs, outputs, rows, device)
            if outputs:
                loss = loss_fn(student_out, batch["labels"], teacher_out, batch["attention_mask"])
            else:
                teacher_logits = teacher_out.logits if isinstance(source, torch.nn.Module) else teacher_out
                loss = loss_fn(student_out.logits, batch["labels"], teacher_logits)
            loss = loss / args.grad_accum_steps
            if rank_share is not None:  # the global batch's mean over the ranks, not the mean of the ranks' means
                loss = loss * rank_share(batch["labels"])
            nonfinite |= ~torch.isfinite(loss.detach())
            if on_step is not None:
                running_loss += loss.detach().float()
            scaler.scale(loss).backward()
        optimizer_step(optimizer, schedule, scaler, [*model.parameters(), *extra], args.max_grad_norm)
        if clock is not None and step == 1:
            clock.first_step()

        validating = not (step % args.eval_every and step != args.max_steps)
        mean_loss = None
        if on_step is not None and (validating or step % LOG_EVERY == 0):
            mean_loss = running_loss.item() / (step - logged_step)  # the one host sync, at logging steps only
            running_loss.zero_()
            logged_step = step
        if not validating:
            if on_step is not None:
                on_step(step, args.max_steps, mean_loss, None)
            continue
        if nonfinite.item():
            raise NonFiniteLoss(f"training loss became NaN or infinite by step {step}")
        evaluation = validate()
        scores = evaluation.scores()
        if on_step is not None:
            on_step(step, args.max_steps, mean_loss, next(iter(scores.values())))
        stop = False
        if args.patience is not None:
            if evaluation.loss < best_loss:
                best_loss, best_eval, bad_evals = evaluation.loss, evaluation, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad_evals += 1
                stop = bad_evals >= args.patience
        if report is not None:
            report(step, scores, stop or step == args.max_steps)
        if stop:
            break
    compile_seconds = clock.seconds(step, eval_seconds) if clock is not None else 0.0
    stopped_early = step < args.max_steps
    if best_state is not None:
        model.load_state_dict(best_state)
        evaluation = best_eval
    assert evaluation is not None
    model.eval()
    return TrainResult(step, evaluation, stopped_early, eval_seconds, evals, compile_seconds)
