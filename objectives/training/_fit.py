"""A trial's training run, whatever the task: cost first, then the training stages, then the final scores."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from objectives._config import ConfigError, DistillArgs, TrainArgs
from objectives.evaluation import PeakMemory
from objectives.students import end_fake_quantize, num_layers, quantized, trainable_parameters
from objectives.training._device import enable_tf32
from objectives.training._distributed import current_group, shards_teacher, teacher_parameters
from objectives.training._logits import HeadInputs
from objectives.training._on_policy import Teachers
from objectives.training._train import Evaluate, Report, eager_attention, train

CostHook = Callable[[dict[str, float]], None]
"""Called once with the cost metrics (latency, throughput, params, size, FLOPs) before training starts: they
depend on the architecture only, so multi-objective pruning can compare trials on them early."""


LogitSource = Callable[[str, Any, torch.nn.Module], "torch.Tensor | HeadInputs"]
"""Given a name (``train``, ``transfer``), the data and the teacher, returns the teacher's logits for every example
(e.g. from a cache shared by all trials of a study)."""

_TEACHERS: dict[tuple[str, str], torch.nn.Module] = {}


def frozen_teacher(path: Path, device: torch.device, load: Callable[[str], torch.nn.Module]) -> torch.nn.Module:
    """The teacher saved at ``path``, loaded by ``load`` once per process and device, in eval mode, frozen; on the
    CPU instead of ``device`` in a trial that shards its teacher (``teacher.strategy: fsdp``): only a sharded copy
    of it goes to the device (:meth:`objectives.training._distributed.RankGroup.shard_teacher`)."""
    if shards_teacher():
        device = torch.device("cpu")
    key = (str(path), str(device))
    if key not in _TEACHERS:
        teacher = load(str(path)).to(device).eval()
        teacher.requires_grad_(False)
        _TEACHERS[key] = teacher
    return _TEACHERS[key]


def checkpoint_activations(model: torch.nn.Module) -> None:
    """``train.gradient_checkpointing``: each transformer layer of ``model`` recomputes its activations in the
    backward pass (Hugging Face ``activation_checkpointing_enable``, non-reentrant ``torch.utils.checkpoint``); a
    model without checkpointable layers is a ConfigError naming the key."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(
            "train.gradient_checkpointing",
            f"{type(model).__name__} has no layers to checkpoint; set it to false",
        )
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def unload_teachers() -> None:
    """Drop the teachers :func:`frozen_teacher` keeps (their memory, on the GPU too, is freed once no trial holds
    them); the next trial that needs one loads it again."""
    _TEACHERS.clear()


@dataclass
class Stage:
    """One training phase of a trial: data, settings, loss and (for distillation) the frozen teacher or its cached
    logits."""

    data: Any
    args: TrainArgs
    loss_fn: Any
    teacher: torch.nn.Module | torch.Tensor | HeadInputs | Teachers | None = None


def distill_stages(
    train_data: Any,
    args: TrainArgs,
    distill: DistillArgs,
    *,
    ce: Any,
    kd: Callable[[float], Any],
    signal: Callable[[str, Any], Any],
    transfer: Callable[[], Any],
) -> list[Stage]:
    """The stages of a distillation run, whatever the task:

    - ``integrated``: one run with ``kd(alpha)`` (alpha * T^2 * D(teacher, student) + (1 - alpha) * CE) against the
      teacher's ``signal("train", train_data)``; with alpha = 0 (and no layer term, ``hidden_weight`` /
      ``attention_weight``) plain ``ce``, no teacher needed;
    - ``sequential``: ``kd(1.0)`` alone on the ``transfer()`` set for ``transfer_ratio`` of the step budget, then
      ``ce`` on the training data for the rest (the same total budget as integrated).
    """
    if distill.approach == "integrated" and distill.alpha == 0 and not distill.needs_teacher_states:  # plain CE
        return [Stage(train_data, args, ce)]
    if distill.approach == "integrated":
        return [Stage(train_data, args, kd(distill.alpha), signal("train", train_data))]
    kd_steps = max(1, round(args.max_steps * distill.transfer_ratio))
    unlabelled = transfer()
    return [
        Stage(unlabelled, replace(args, max_steps=kd_steps, patience=None), kd(1.0), signal("transfer", unlabelled)),
        Stage(train_data, replace(args, max_steps=max(1, args.max_steps - kd_steps)), ce),
    ]


def _offset(report: Report, offset: int, *, last: bool) -> Report:
    """``report`` for one stage of a run: steps continue from ``offset``, final only in the ``last`` stage."""
    return lambda step, scores, final: report(offset + step, scores, final and last)


def fit(
    model: torch.nn.Module,
    stages: list[Stage],
    validation: Any,
    *,
    device: torch.device,
    evaluate: Evaluate,
    cost: Callable[[torch.nn.Module], dict[str, float]],
    seed: int,
    report: Report | None = None,
    on_cost: CostHook | None = None,
    quantize: str = "none",
) -> tuple[Any, dict[str, float]]:
    """Train ``model`` through ``stages``, scoring on ``validation`` with ``evaluate``; returns the last evaluation
    and the metrics every task records: its ``cost(model)`` (measured before training, handed to ``on_cost``),
    ``trainable_params`` (those the optimiser updates: a LoRA adapter's, or all), ``steps``, ``train_seconds``, ``peak_memory_mb``, and what its time went to: ``step_seconds`` (mean wall time of
    an optimiser step, validations left out), ``eval_seconds`` (of one validation pass, mean), ``eval_rows``
    (examples or blocks of ``validation``: one pass) and ``compile_seconds`` (``train.compile``'s compile time, 0
    for an architecture this process compiled before; left out of ``train_seconds`` and ``step_seconds``, so a
    trial's searchable time does not depend on which trial of its architecture came first).

    Steps are numbered across stages, so reports of a later stage continue where the earlier one ended; only the
    last stage's last validation is reported as final.

    ``quantize`` (``student.quantize``): the cost is measured on a quantized copy of the model, and the returned
    evaluation scores a quantized copy of the trained model on ``validation`` (post-training quantization); the
    reports during training and ``model`` itself stay fp32. With ``train.qat_fraction`` the last stage's last steps
    train fake-quantized (quantization-aware training; those steps' reports score the fake-quantized model), and
    the fake quantization is removed before the final evaluation quantizes.
    """
    model.to(device)
    enable_tf32(device)  # before the cost: latency is measured as the trial's fp32 runs go
    group = current_group()  # one rank of a trial on several devices: rank 0 measures, then every rank wraps
    measured = cost(quantized(model, quantize)) if group is None or group.rank == 0 else {}
    teacher_held = None
    if on_cost is not None:
        on_cost(measured)
    if stages[0].args.gradient_checkpointing:  # before any wrapper: DDP and FSDP2 wrap the checkpointed layers
        checkpoint_activations(model)
    if group is not None:
        model, stages = group.prepare(model, stages)
        evaluate = group.sharded(evaluate)
        teacher_held = teacher_parameters(stages)
    start = time.perf_counter()
    done, eval_seconds, evals, compile_seconds = 0, 0.0, 0, 0.0
    with PeakMemory(device) as memory:
        for stage in stages:
            attentions = getattr(stage.loss_fn, "model_outputs", {}).get("output_attentions", False)
            live = [stage.teacher] if isinstance(stage.teacher, torch.nn.Module) else []
            with eager_attention(model, *live) if attentions else contextlib.nullcontext():
                result = train(
                    model,
                    stage.data,
                    validation,
                    stage.args,
                    loss_fn=stage.loss_fn,
                    evaluate=evaluate,
                    n_layers=num_layers(model),
                    seed=seed,
                    teacher=stage.teacher,
                    report=None if report is None else _offset(report, done, last=stage is stages[-1]),
                    qat=quantize if stage is stages[-1] else "none",
                    rank_share=None if group is None else group.share,
                )
            done += result.steps
            eval_seconds, evals = eval_seconds + result.eval_seconds, evals + result.evals
            compile_seconds += result.compile_seconds
    seconds = time.perf_counter() - start - compile_seconds
    end_fake_quantize(model)  # after quantization-aware training: plain linear layers for quantize() to quantize
    evaluation = result.evaluation
    if quantize != "none":
        evaluation = evaluate(quantized(model, quantize), validation, stages[-1].args.eval_batch_size)
    metrics = {
        "steps": float(done),
        "train_seconds": seconds,
        "step_seconds": (seconds - eval_seconds) / max(1, done),
        "eval_seconds": eval_seconds / max(1, evals),
        "eval_rows": float(len(validation)),
        "compile_seconds": compile_seconds,
        "peak_memory_mb": memory.peak_mb,
        "trainable_params": float(trainable_parameters(model)),
        **measured,
    }
    if group is not None:  # the largest of any rank, and this rank's own
        metrics["peak_memory_mb"], metrics["rank_peak_memory_mb"] = max(group.gather(memory.peak_mb)), memory.peak_mb
        if teacher_held is not None:  # by rank: the whole live teacher each, or its shards (teacher.strategy: fsdp)
            metrics["rank_teacher_params"] = group.gather(teacher_held)
    return evaluation, metrics
